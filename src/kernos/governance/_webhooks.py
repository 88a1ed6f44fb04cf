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

Each call delivers once: the worker's notification pump (``kernos.kernel.NotificationPump``)
claims the notification from the store's outbox, where it was queued with the approval it
announces, and owns the retries, so a notification survives the worker that asked. An
escalation (``approval.escalated``) goes to ``escalation_url`` when one is configured (the
people to tell when the first ones did not answer), else to ``webhook_url``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from kernos.errors import ConfigError
from kernos.gateway import find_config_file, read_config_file
from kernos.kernel import ESCALATED, Delivery
from kernos.store import Notification

log = logging.getLogger("kernos.webhooks")


class TargetRefused(Exception):
    """The webhook's host resolves to an address kernos must not send to."""


@dataclass
class WebhookNotifier:
    """Signs and delivers notifications to a URL (escalations to their own, if given)."""

    url: str
    secret: str
    allow_private: bool = False
    timeout: float = 10.0
    escalation_url: str | None = None
    _client: httpx.AsyncClient | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for key, url in (("webhook_url", self.url), ("escalation_url", self.escalation_url)):
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"notifications.{key}: {url!r} is not an http(s) URL with a host")
        if not self.secret:
            raise ConfigError(
                "notifications: the webhook needs a secret to sign with (secret_env names the "
                "environment variable that holds it)"
            )

    def target(self, notification: Notification) -> str:
        """Where ``notification`` goes."""
        if notification.topic == ESCALATED and self.escalation_url:
            return self.escalation_url
        return self.url

    async def deliver(self, notification: Notification) -> Delivery:
        """One signed POST: delivered on 2xx; to retry after a connection error, a 5xx or a
        429 (with its ``Retry-After``); refused for good on another 4xx or a forbidden
        target."""
        url = self.target(notification)
        text = json.dumps(notification.body, separators=(",", ":"), sort_keys=True).encode()
        try:
            await check_target(url, allow_private=self.allow_private)
            response = await self._post(url, text)
        except TargetRefused as exc:
            log.error("webhook %s refused: %s", url, exc)
            return Delivery(False, error=str(exc))
        except httpx.HTTPError as exc:
            return Delivery(False, retry=True, error=f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return Delivery(True)
        problem = f"{url} answered HTTP {status}"
        if status == 429 or status >= 500:
            return Delivery(False, retry=True, error=problem, retry_after=_retry_after(response))
        log.error("webhook %s rejected the notification: HTTP %d", url, status)
        return Delivery(False, error=problem)

    async def _post(self, url: str, body: bytes) -> httpx.Response:
        if self._client is None:
            # No redirects: a redirect could lead the request into a refused range.
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        stamp = str(int(time.time()))
        return await self._client.post(
            url,
            content=body,
            headers={
                "content-type": "application/json",
                "user-agent": "kernos-webhook/1",
                "x-kernos-timestamp": stamp,
                "x-kernos-signature": f"sha256={sign(self.secret, stamp, body)}",
            },
        )

    async def aclose(self) -> None:
        """Close the connection pool (a worker shutting down)."""
        if self._client is not None:
            await self._client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
    unknown = set(data) - {
        "webhook_url",
        "escalation_url",
        "secret_env",
        "allow_private",
        "timeout",
    }
    if unknown:
        raise ConfigError(
            f"{file}: notifications.{sorted(unknown)[0]}: unknown key (the keys are "
            f"webhook_url, escalation_url, secret_env, allow_private, timeout)"
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
    escalation = data.get("escalation_url")
    if escalation is not None and not isinstance(escalation, str):
        raise ConfigError(f"{file}: notifications.escalation_url: must be a URL string")
    return WebhookNotifier(
        url, secret, allow_private=allow, timeout=float(timeout), escalation_url=escalation
    )
