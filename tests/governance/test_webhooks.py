"""The "a run needs a person" webhook: signed, retried with backoff, sent when a run starts
waiting for an approval, and never sent into private, loopback or link-local ranges unless the
configuration says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import kernos
from kernos.errors import ConfigError
from kernos.governance import WebhookNotifier, notifier_from_config, verify
from kernos.kernel import Client, Registry
from kernos.testing import FAST, running_worker, wait_until

SECRET = "whsec-test-0123456789"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what it gets; answers from ``statuses``."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kernos"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([])
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


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


async def test_failed_deliveries_are_retried_and_refusals_are_not(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    notifier = WebhookNotifier(receiver.url, SECRET, allow_private=True, backoff_base=0.01)
    assert await notifier.deliver({"event": "test"})
    assert len(receiver.got) == 3
    receiver.got.clear()
    receiver.statuses = [400]
    assert not await notifier.deliver({"event": "test"})
    assert len(receiver.got) == 1  # a 4xx is the receiver's answer: not retried
    await notifier.aclose()


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
    notifier = WebhookNotifier(url.format(port=port), SECRET, backoff_base=0.01)
    assert not await notifier.deliver({"event": "test"})
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
