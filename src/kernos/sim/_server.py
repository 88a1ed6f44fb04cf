"""Serving the simulator over real HTTP from a background thread.

The server runs uvicorn on its own thread and event loop, so the same handle works from
synchronous tests, from asynchronous ones (whose loop it never blocks), and from the
``kernos sim`` command. The listening socket is bound before the thread starts: port 0 picks a
free port that is known as soon as ``serve()`` returns, and a port in use fails in the caller.

uvicorn parses HTTP with httptools when it is installed (kernos depends on it for this): about
190 µs of server CPU a call against 360 µs with the pure-Python h11 it falls back to, which
matters when a benchmark runs client and simulator on the same two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator

import uvicorn

from kernos.sim._app import SimApp
from kernos.sim._faults import Fault
from kernos.sim._script import Reply
from kernos.sim._simulator import LogEntry, Simulator

__all__ = ["SimServer", "serve"]


class SimServer:
    """A running simulator: its URLs, and the ``Simulator`` methods to steer it.

    The steering methods act on the shared state directly (no HTTP round trip) and take effect
    for the next request. Obtain one from ``serve()``; ``stop()`` releases held requests, stops
    the server and joins its thread.
    """

    def __init__(self, simulator: Simulator, sock: socket.socket) -> None:
        self.simulator = simulator
        self.host: str = sock.getsockname()[0]
        self.port: int = sock.getsockname()[1]
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{netloc}:{self.port}"
        self._sock = sock
        self._app = SimApp(simulator)
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",
            log_level="warning",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name=f"kernos-sim:{self.port}", daemon=True
        )

    def openai_base_url(self, provider: str) -> str:
        """``base_url`` for ``openai.OpenAI``: the provider's ``/v1``."""
        return f"{self.url}/{provider}/v1"

    def anthropic_base_url(self, provider: str) -> str:
        """``base_url`` for ``anthropic.Anthropic`` (the SDK appends ``/v1/messages``)."""
        return f"{self.url}/{provider}"

    # -- steering: the Simulator's methods -----------------------------------------------------

    def add_fault(self, provider: str, fault: Fault) -> None:
        self.simulator.add_fault(provider, fault)

    def set_faults(self, provider: str, faults: Iterable[Fault]) -> None:
        self.simulator.set_faults(provider, faults)

    def clear_faults(self, provider: str | None = None) -> None:
        self.simulator.clear_faults(provider)

    def faults(self, provider: str) -> list[Fault]:
        return self.simulator.faults(provider)

    def script(self, provider: str, *replies: Reply | str) -> None:
        self.simulator.script(provider, *replies)

    def clear_script(self, provider: str | None = None) -> None:
        self.simulator.clear_script(provider)

    def scripted(self, provider: str) -> list[Reply]:
        return self.simulator.scripted(provider)

    def log(self, provider: str | None = None, *, since: int = 0) -> list[LogEntry]:
        return self.simulator.log(provider, since=since)

    def reset(self, *, seed: int | None = None) -> None:
        self.simulator.reset(seed=seed)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the simulator on {self.url} stopped while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the simulator on {self.url} did not start in {timeout} s")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Drop held requests, stop accepting, and wait for the server thread to end."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing is held
                loop.call_soon_threadsafe(self._app.closing.set)
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._sock])


@contextlib.contextmanager
def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int | None = None,
    simulator: Simulator | None = None,
) -> Iterator[SimServer]:
    """Serve a simulator over HTTP for the duration of the block.

    ``port=0`` picks a free port (read it from ``.url`` or ``.port``). Pass ``simulator`` to
    serve existing state (rules added before start apply from the first request); otherwise a
    fresh one seeded with ``seed`` is made.

        with kernos.sim.serve(seed=7) as sim:
            sim.add_fault("openai", Fault(kind="rate_limit", count=1, retry_after=1))
            client = openai.OpenAI(base_url=sim.openai_base_url("openai"), api_key="x")
    """
    sock = _listen(host, port)
    server = SimServer(simulator or Simulator(seed=seed), sock)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Made with ``IPPROTO_TCP`` (not 0, as ``socket.create_server``
    does) because asyncio sets ``TCP_NODELAY`` only on such sockets' connections: without it a
    response written as headers then body waits for the client's delayed ACK, 40 ms a call."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock
