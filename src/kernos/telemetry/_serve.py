"""A worker's ``/metrics`` endpoint: Prometheus' own HTTP server, on a thread of its own, so a
scrape never waits behind the worker's event loop (and still answers when the loop is busy)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

from kernos.errors import ConfigError


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> int:
    """Serve ``registry`` at ``http://host:port/metrics``; the port it listens on (``0``:
    any free one)."""
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another "
            f"--metrics-port"
        ) from exc
    return int(server.server_port)
