"""A TCP proxy on loopback that can stall, slow down or cut the traffic to a database.

The chaos scenarios (and the stall tests) put it between the workers and PostgreSQL to play a
slow database, one that stops answering without closing anything, and a failover: ``stall()`` stops forwarding in both directions and
holds new connections unanswered, exactly like a hung server or a black-holing network; the
kernel still acknowledges what was sent, so only the application's own timeouts can notice.
``resume()`` forwards what was held, in order. ``delay`` slows every chunk down (by a fixed
time, or by a time drawn from a range for each chunk); ``sever()`` resets every open connection.

It listens on ``127.0.0.1`` at a free port, so only this host's processes reach it.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024

#: a fixed delay in seconds, or the (low, high) range each chunk's delay is drawn from
Delay = float | tuple[float, float]


class _Pipe:
    """One client connection and its upstream connection, pumped by one thread each way."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="tcp-proxy-pipe", daemon=True).start()

    def _run(self) -> None:
        try:
            self.proxy.wait_unstalled(self.closed)
            if self.closed.is_set():
                return
            self.upstream = socket.create_connection(self.proxy.upstream, timeout=10)
            self.upstream.settimeout(None)
        except OSError:
            self.close()
            return
        back = threading.Thread(
            target=self._pump, args=(self.upstream, self.client), name="tcp-proxy-up", daemon=True
        )
        back.start()
        self._pump(self.client, self.upstream)
        back.join()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                # Read nothing while stalled: bytes stay in the kernel's buffers, as they would
                # in front of a hung server.
                self.proxy.wait_unstalled(self.closed)
                data = src.recv(_CHUNK)
                if not data:
                    break
                self.proxy.wait_unstalled(self.closed)
                if (pause := self.proxy.pause()) > 0:
                    time.sleep(pause)
                if self.closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                if reset:  # RST instead of FIN: what a crashed middlebox looks like
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy.forget(self)


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, with faults on demand.

    Use as a context manager (or ``start()``/``close()``). Thread-safe controls:

    - ``stall()`` / ``resume()``: stop and restart forwarding on every connection, old and new;
    - ``delay``: seconds slept before forwarding each chunk (0 by default), or a ``(low, high)``
      range each chunk's sleep is drawn from;
    - ``sever()``: reset every open connection now (new ones are still accepted).
    """

    def __init__(
        self,
        upstream: tuple[str, int] = ("127.0.0.1", 5432),
        *,
        delay: Delay = 0.0,
        seed: int | None = None,
    ):
        self.upstream = upstream
        self.delay: Delay = delay
        self._random = random.Random(seed)
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stalled_since: float | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for pipe in self.pipes():
            pipe.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- controls -------------------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        return not self._running.is_set()

    def stall(self) -> None:
        """Stop forwarding: nothing passes either way until ``resume()``; nothing is closed."""
        with self._lock:
            if self._running.is_set():
                self.stalled_since = time.monotonic()
            self._running.clear()

    def resume(self) -> None:
        """Forward again, starting with what was held during the stall."""
        with self._lock:
            self.stalled_since = None
            self._running.set()

    def sever(self) -> None:
        """Reset every open connection at once (clients see ECONNRESET)."""
        for pipe in self.pipes():
            pipe.close(reset=True)

    def pause(self) -> float:
        """How long to hold the next chunk: the fixed delay, or a draw from the range."""
        delay = self.delay
        if isinstance(delay, tuple):
            return self._random.uniform(*delay)
        return delay

    @classmethod
    def before(cls, database_url: str) -> TcpProxy:
        """A proxy (not yet started) in front of the server ``database_url`` names."""
        parts = urlsplit(database_url)
        return cls((parts.hostname or "127.0.0.1", parts.port or 5432))

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    def pipes(self) -> list[_Pipe]:
        with self._lock:
            return list(self._pipes)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pipes)

    # -- internals --------------------------------------------------------------------------

    def wait_unstalled(self, closed: threading.Event) -> None:
        while not self._running.wait(0.05):
            if closed.is_set() or self._stop.is_set():
                return

    def forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def _accept(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.1):
                    continue
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    continue
                pipe = _Pipe(self, client)
                with self._lock:
                    self._pipes.add(pipe)
                pipe.start()
