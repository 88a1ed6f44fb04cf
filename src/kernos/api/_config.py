"""``ApiConfig``: the knobs of one API process, fixed when the app is created."""

from __future__ import annotations

from dataclasses import dataclass

from kernos.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiConfig:
    """How the HTTP API behaves; the defaults suit a production server.

    ``key_cache_ttl``: seconds an API key lookup is remembered (by a hash of the secret, never
    the secret itself), so that a busy API does not query the store on every request. A revoked
    key therefore keeps working for at most this long in each server process.

    ``max_body_bytes``: a request body over this is refused with 413 before it is parsed.

    ``ready_timeout``: ``/readyz`` answers 503 when the store does not answer a cheap query in
    this many seconds.

    ``poll_fast`` and ``poll_slow``: the journal of a run followed by server-sent events is
    polled every ``poll_fast`` seconds while events arrive, backing off to ``poll_slow`` while
    the run is quiet (one poller per run, shared by every client following it).
    ``keepalive``: a comment line is sent on an idle event stream this often, so that proxies
    do not cut it.
    """

    key_cache_ttl: float = 5.0
    key_cache_size: int = 4096
    max_body_bytes: int = MIB
    ready_timeout: float = 2.0
    poll_fast: float = 0.01
    poll_slow: float = 0.5
    keepalive: float = 15.0

    def __post_init__(self) -> None:
        for name in ("key_cache_ttl", "poll_fast", "poll_slow", "ready_timeout", "keepalive"):
            value = getattr(self, name)
            if not value >= (0 if name == "key_cache_ttl" else 1e-6):
                raise ConfigError(
                    f"ApiConfig.{name} must be a positive number of seconds, not {value}"
                )
        if self.max_body_bytes < 1 or self.key_cache_size < 1:
            raise ConfigError("ApiConfig.max_body_bytes and key_cache_size must be at least 1")
        if self.poll_slow < self.poll_fast:
            raise ConfigError("ApiConfig.poll_slow must not be shorter than poll_fast")
