"""Where the scenario's database is, and the URL the workers use to reach it through the proxy.

The proxy forwards one TCP address, so the URL must name one server over TCP: a multi-host URL
or a Unix socket is refused with what to give instead. The workers' URL is the user's with the
host and port replaced by the proxy's (also where libpq would read them from the query string,
which otherwise overrides the authority and would let the workers bypass the proxy), and with a
per-operation timeout so that a stalled database is noticed within a lease TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kernos.chaos._stage import ChaosError

__all__ = ["PostgresTarget"]

#: query parameters that say where the server is: the proxy decides that for the workers
_WHERE = frozenset({"host", "hostaddr", "port"})


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    url: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> PostgresTarget:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "localhost"
        port_text = query.get("port") or (str(parts.port) if parts.port else "5432")
        if "," in host or "," in port_text or "," in parts.netloc.rpartition("@")[2]:
            raise ChaosError(
                "the chaos proxy stands in front of one PostgreSQL server; give --database a "
                "URL with a single host (the primary's address)"
            )
        if host.startswith("/"):
            raise ChaosError(
                f"--database names a Unix socket ({host}); the chaos proxy forwards TCP, so "
                "give the server's TCP address, e.g. postgresql://user@127.0.0.1:5432/db"
            )
        if not port_text.isdigit():
            raise ChaosError(f"--database: the port {port_text!r} is not a number")
        return cls(url=url, host=host, port=int(port_text))

    def through(self, host: str, port: int, *, io_timeout: float) -> str:
        """The URL to this database through the proxy at ``host:port``."""
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _WHERE]
        if not any(k == "kernos_io_timeout" for k, _ in query):
            query.append(("kernos_io_timeout", f"{io_timeout:g}"))
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query), fragment=""))
