"""Telling people a run needs them: a signed webhook, retried with backoff.

When a run starts waiting for a person (an approval, a question), the worker POSTs a JSON body
to the configured URL, signed with HMAC-SHA256 over ``<timestamp>.<body>`` (headers
``X-Kernos-Timestamp`` and ``X-Kernos-Signature: sha256=<hex>``), so the receiver can check
it came from kernos and is fresh. Failed deliveries (connection errors, 5xx, 429) are retried
with exponential backoff and full jitter; a 4xx other than 429 is not (the receiver refused).

Targets in private, loopback, link-local (cloud metadata at 169.254.169.254) or otherwise
non-global ranges are refused unless the configuration allows them explicitly: a webhook URL
must not become a way to reach the worker's own network. The host is resolved at each
delivery, so a name that later resolves inside the network is refused too.

Delivery is best effort from the worker that asked (held in memory while it retries): the
approval itself is durable, and ``kernos approvals list`` shows it whatever happens to the
notification.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from kernos.errors import ConfigError
from kernos.gateway import find_config_file, read_config_file
from kernos.store import Approval

log = logging.getLogger("kernos.webhooks")

#: attempts per notification, and the backoff between them (seconds)
MAX_ATTEMPTS = 6
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


class TargetRefused(Exception):
    """The webhook's host resolves to an address kernos must not send to."""


@dataclass
class WebhookNotifier:
    """Signs and delivers "a run needs a person" notifications to one URL."""

    url: str
    secret: str
    allow_private: bool = False
    timeout: float = 10.0
    backoff_base: float = BACKOFF_BASE
    _tasks: set[asyncio.Task[bool]] = field(default_factory=set, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"notifications.webhook_url: {self.url!r} is not an http(s) URL with a host"
            )
        if not self.secret:
            raise ConfigError(
                "notifications: the webhook needs a secret to sign with (secret_env names the "
                "environment variable that holds it)"
            )

    async def run_needs_person(self, approval: Approval) -> None:
        """Deliver in the background (the run's worker does not wait for the receiver)."""
        body = {
            "event": "run.needs_person",
            "approval": {
                "id": approval.id,
                "run_id": approval.run_id,
                "tenant": approval.tenant,
                "kind": approval.kind,
                "question": approval.question,
                "details": approval.details,
                "expires_at": approval.expires_at,
                "created_at": approval.created_at,
            },
        }
        task = asyncio.create_task(self.deliver(body), name=f"kernos-webhook-{approval.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, body: Mapping[str, Any]) -> bool:
        """POST ``body`` signed, retrying transient failures; True once the receiver took it."""
        text = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await check_target(self.url, allow_private=self.allow_private)
                status = await self._post(text)
            except TargetRefused as exc:
                log.error("webhook %s refused: %s", self.url, exc)
                return False
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                problem = f"HTTP {status}"
                if 200 <= status < 300:
                    return True
                if 400 <= status < 500 and status != 429:
                    log.error("webhook %s rejected the notification: %s", self.url, problem)
                    return False
            if attempt < MAX_ATTEMPTS:
                delay = random.uniform(0, min(BACKOFF_CAP, self.backoff_base * 2 ** (attempt - 1)))
                log.warning(
                    "webhook %s: %s (attempt %d); retrying in %.2f s",
                    self.url,
                    problem,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
        log.error("webhook %s: gave up after %d attempts", self.url, MAX_ATTEMPTS)
        return False

    async def _post(self, body: bytes) -> int:
        if self._client is None:
            # No redirects: a redirect could lead the request into a refused range.
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        stamp = str(int(time.time()))
        response = await self._client.post(
            self.url,
            content=body,
            headers={
                "content-type": "application/json",
                "user-agent": "kernos-webhook/1",
                "x-kernos-timestamp": stamp,
                "x-kernos-signature": f"sha256={sign(self.secret, stamp, body)}",
            },
        )
        return response.status_code

    async def aclose(self) -> None:
        """Stop retrying and close the connection pool (a worker shutting down)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a receiver recomputes: HMAC-SHA256 of ``<timestamp>.<body>``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300
) -> bool:
    """For receivers (and tests): the signature is right and the timestamp recent."""
    expected = f"sha256={sign(secret, timestamp, body)}"
    fresh = abs(time.time() - float(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected, signature)


async def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse a host that resolves to a non-global address (unless allowed)."""
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise TargetRefused(
                f"{host} resolves to {address}, a private, loopback or link-local address; "
                f"set allow_private = true under [notifications] to send there on purpose"
            )


def notifier_from_config(
    path: str | Path | None = None, *, env: Mapping[str, str] = os.environ
) -> WebhookNotifier | None:
    """The webhook of ``[notifications]`` in kernos.toml, or None when none is configured."""
    file = find_config_file(path, env)
    if file is None:
        return None
    data = read_config_file(file).get("notifications")
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: notifications must be a table")
    unknown = set(data) - {"webhook_url", "secret_env", "allow_private", "timeout"}
    if unknown:
        raise ConfigError(
            f"{file}: notifications.{sorted(unknown)[0]}: unknown key (the keys are "
            f"webhook_url, secret_env, allow_private, timeout)"
        )
    url = data.get("webhook_url")
    if not isinstance(url, str):
        raise ConfigError(f"{file}: notifications.webhook_url: must be a URL string")
    secret_env = data.get("secret_env", "KERNOS_WEBHOOK_SECRET")
    secret = env.get(str(secret_env), "")
    if not secret:
        raise ConfigError(
            f"{file}: notifications: the environment variable {secret_env} (secret_env) is not "
            f"set; export the webhook's signing secret in it"
        )
    allow = data.get("allow_private", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{file}: notifications.allow_private: must be true or false")
    timeout = data.get("timeout", 10.0)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"{file}: notifications.timeout: must be a positive number of seconds")
    return WebhookNotifier(url, secret, allow_private=allow, timeout=float(timeout))
