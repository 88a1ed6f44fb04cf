"""The "a run needs a person" webhook: signed, retried with backoff, sent when a run starts
waiting for an approval, and never sent into private, loopback or link-local ranges unless the
configuration says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _webhook_support import Receiver

import kernos
from kernos.errors import ConfigError
from kernos.governance import WebhookNotifier, notifier_from_config, verify
from kernos.kernel import Client, Registry
from kernos.store import Notification
from kernos.testing import FAST, running_worker, wait_until

SECRET = "whsec-test-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


async def test_a_run_waiting_for_a_person_sends_a_signed_webhook(
    client: Client, registry: Registry, receiver: Receiver
) -> None:
    @kernos.agent("asker", registry=registry)
    async def asker(ctx: kernos.RunContext, _: Any) -> bool:
        return (await ctx.ask_human("Ship the order to a new address?")).approved

    notifier = WebhookNotifier(receiver.url, SECRET, allow_private=True)
    async with running_worker(client, registry, FAST, services={}, notifier=notifier):
        run = await client.start("asker", None, tenant="acme")
        await wait_until(lambda: receiver.got, timeout=20)
    headers, body = receiver.got[0]
    assert verify(SECRET, headers["x-kernos-timestamp"], body, headers["x-kernos-signature"])
    assert not verify("wrong", headers["x-kernos-timestamp"], body, headers["x-kernos-signature"])
    sent = json.loads(body)
    assert sent["event"] == "run.needs_person"
    assert sent["approval"]["run_id"] == run.id and sent["approval"]["tenant"] == "acme"
    assert sent["approval"]["question"] == "Ship the order to a new address?"
    assert len(receiver.got) == 1  # once, not on every replay
    assert sent["id"] == f"{sent['approval']['id']}:needs_person"


def note(event: str = "run.needs_person") -> Notification:
    return Notification(id="r1:3:needs_person", topic=event, tenant="acme", body={"event": event})


async def test_each_delivery_is_one_attempt_whose_outcome_says_whether_to_retry(
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 429, 400, 200]
    notifier = WebhookNotifier(receiver.url, SECRET, allow_private=True)
    server_error = await notifier.deliver(note())
    assert (server_error.delivered, server_error.retry) == (False, True)
    assert "HTTP 500" in (server_error.error or "")
    limited = await notifier.deliver(note())
    assert limited.retry and limited.retry_after == 0.2  # Retry-After read
    refused = await notifier.deliver(note())
    assert (refused.delivered, refused.retry) == (False, False)  # a 4xx: not retried
    assert (await notifier.deliver(note())).delivered
    assert len(receiver.got) == 4  # one request per call: retries are the pump's
    await notifier.aclose()


async def test_failed_deliveries_are_retried_by_the_pump_until_delivered(
    client: Client, registry: Registry, receiver: Receiver
) -> None:
    @kernos.agent("asker", registry=registry)
    async def asker(ctx: kernos.RunContext, _: Any) -> bool:
        return (await ctx.ask_human("Close the account?")).approved

    receiver.statuses = [500, 503, 200]
    notifier = WebhookNotifier(receiver.url, SECRET, allow_private=True)
    async with running_worker(client, registry, FAST, services={}, notifier=notifier):
        await client.start("asker", None)

        async def delivered() -> bool:
            sent = await client.store.list_notifications()
            return bool(sent) and sent[0].delivered_at is not None

        await wait_until(delivered, timeout=30, what="the third attempt delivered")
    [sent] = await client.store.list_notifications()
    assert sent.attempts == 3 and len(receiver.got) == 3
    assert {b["id"] for b in receiver.bodies()} == {sent.id}  # receivers deduplicate by id


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/x",
        "http://localhost:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/x",
        "http://[::1]:{port}/x",
    ],
)
async def test_private_targets_are_refused_unless_allowed(receiver: Receiver, url: str) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    notifier = WebhookNotifier(url.format(port=port), SECRET)
    refused = await notifier.deliver(note())
    assert (refused.delivered, refused.retry) == (False, False)
    assert "allow_private" in (refused.error or "")
    assert receiver.got == []
    await notifier.aclose()


def test_the_webhook_comes_from_kernos_toml(tmp_path: Path) -> None:
    toml = tmp_path / "kernos.toml"
    toml.write_text(
        '[notifications]\nwebhook_url = "https://hooks.example.com/k"\nsecret_env = "HOOK_SECRET"\n'
    )
    notifier = notifier_from_config(toml, env={"HOOK_SECRET": SECRET})
    assert notifier is not None and notifier.url == "https://hooks.example.com/k"
    assert not notifier.allow_private
    with pytest.raises(ConfigError, match="HOOK_SECRET"):
        notifier_from_config(toml, env={})
    toml.write_text('[notifications]\nwebhook_url = "ftp://x"\n')
    with pytest.raises(ConfigError, match="not an http"):
        notifier_from_config(toml, env={"KERNOS_WEBHOOK_SECRET": SECRET})
    toml.write_text('[notifications]\nwebhook = "https://x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        notifier_from_config(toml, env={})
    toml.write_text("[routes]\n")
    assert notifier_from_config(toml, env={}) is None
