"""A real HTTP server on 127.0.0.1 standing in for a webhook receiver.

It records each request (headers and body) and answers from a script: a status code, or
``"hang"`` to hold the connection without answering (a receiver stuck mid-delivery).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, statuses: list[int | str] | None = None) -> None:
        self.statuses: list[int | str] = list(statuses or [])
        self.got: list[tuple[dict[str, str], bytes]] = []
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == "hang":
                    receiver._closing.wait(30)
                    return
                self.send_response(int(status))
                self.send_header("content-length", "0")
                if status == 429:
                    self.send_header("retry-after", "0.2")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kernos"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        time.sleep(0)
