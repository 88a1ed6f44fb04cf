"""The redactor's cost (issue #7, section 4): what redaction adds to every journal event written.

    .venv/bin/python benchmarks/redaction.py [--quick]

Prints µs per call (the least of 7 rounds, each timing many calls) of
``Redactor.json_text`` (the store's integration point: the event's JSON text, encoded once),
``Redactor.text`` (a log line, a CLI row) and ``Redactor.json`` (a parsed payload), on:

- a clean 1 KB event: a step's result with ULIDs, a git SHA, a UUID, prose, usage counts
  (``input_tokens``), an idempotency key: what nearly every event looks like;
- the same 1 KB event with two secrets planted (an OpenAI key in the prose, a password in a
  tool's arguments);
- 100 KB: a tool output of that many clean events, and the same with ten secrets planted;

for three redactors: the always-on secrets only, a tenant with every optional pattern (email,
card, phone, iban, ipv4), and a tenant with a custom regex (which has no gate, so ``json_text``
parses every document). For scale, the floor row is ``json.dumps`` of the 1 KB event, which the
store pays anyway. A measurement, never a test: the exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kernos.governance._redact import RedactionConfig, Redactor, TenantRedaction

# Built by concatenation, as the tests do, so that no secret-looking literal sits in the repo.
OPENAI_KEY = "sk-" + "proj-" + "Xb7dE2fGh9JkL4mNp6QrS8tUv1WxY3zA5cD0eF"
PASSWORD = "hunter" + "2-correct-horse"


def event(index: int, *, secrets: bool = False) -> dict[str, Any]:
    """A journal event of about 1 KB as JSON text: a completed tool step of an agent."""
    summary = (
        "Checked the order history for the customer and found three shipments; the last one "
        "left the warehouse on Tuesday and should arrive before the weekend. No refunds are "
        "due, and the customer was told so by e-mail. The second shipment was split in two "
        "because one item was out of stock; both parts arrived. Next check in a week."
    )
    arguments: dict[str, Any] = {"customer": "c-1042", "window_days": 30, "include": ["orders"]}
    if secrets:
        summary += f" The integration used {OPENAI_KEY} to call the model."
        arguments["db_password"] = PASSWORD
    return {
        "run_id": "01M8AW487QK7AGXCB4E9W9RRAR",
        "seq": index,
        "type": "step_completed",
        "step": "lookup_orders",
        "attempt": 1,
        "idempotency_key": f"01M8AW487QK7AGXCB4E9W9RRAR:{index}",
        "payload": {
            "tool": "orders.lookup",
            "arguments": arguments,
            "result": {
                "summary": summary,
                "orders": [
                    {"id": "550e8400-e29b-41d4-a716-446655440000", "total": 129.5, "items": 3},
                    {"id": "6fa459ea-ee8a-3ca4-894e-db77e160355e", "total": 18.0, "items": 1},
                ],
                "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
            },
            "usage": {"input_tokens": 1250, "output_tokens": 312, "cost_usd": 0.0041},
            "model": "openai:gpt-4.1-mini",
        },
    }


def big(*, secrets: bool) -> dict[str, Any]:
    """About 100 KB: a tool output holding a hundred events, ten of them with secrets."""
    return {
        "tool": "journal.export",
        "events": [event(i, secrets=secrets and i % 10 == 0) for i in range(100)],
    }


def per_call_us(fn: Callable[[], object], budget_s: float) -> float:
    """The least, over rounds, of the mean time per call within a round, in µs: the
    figure least disturbed by other work on the machine (as timeit advises)."""
    calls = 1
    while True:  # calibrate: a round of ~budget/10
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > budget_s / 10:
            break
        calls *= 2
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return min(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds, noisier figures")
    budget = 0.05 if parser.parse_args().quick else 0.4

    config = RedactionConfig(
        tenants={
            "personal": TenantRedaction(patterns=("email", "card", "phone", "iban", "ipv4")),
            "custom": TenantRedaction(custom={"employee_id": r"EMP-\d{6}"}),
        }
    )
    root = Redactor(config)
    redactors = {
        "always-on": root,
        "+5 optional": root.for_tenant("personal"),
        "+custom regex": root.for_tenant("custom"),
    }
    payloads = {
        "1 KB clean": event(7),
        "1 KB, 2 secrets": event(7, secrets=True),
        "100 KB clean": big(secrets=False),
        "100 KB, 10 secrets": big(secrets=True),
    }
    texts = {name: json.dumps(value, separators=(",", ":")) for name, value in payloads.items()}
    for name, text in texts.items():
        assert OPENAI_KEY not in root.json_text(text), name

    print(
        f"redaction, µs per call (least of 7 rounds; python {sys.version.split()[0]})\n"
        f"payload sizes: " + ", ".join(f"{name} = {len(text):,} B" for name, text in texts.items())
    )
    header = f"{'redactor':<15}{'payload':<20}{'json_text':>12}{'text':>12}{'json':>12}"
    print(header)
    print("-" * len(header))
    for rname, redactor in redactors.items():
        for pname, value in payloads.items():
            text = texts[pname]
            row = [
                per_call_us(partial(redactor.json_text, text), budget),
                per_call_us(partial(redactor.text, text), budget),
                per_call_us(partial(redactor.json, value), budget),
            ]
            print(f"{rname:<15}{pname:<20}" + "".join(f"{x:>12.1f}" for x in row))
    floor = per_call_us(partial(json.dumps, payloads["1 KB clean"], separators=(",", ":")), budget)
    print(f"floor: json.dumps of the 1 KB event (paid by the store anyway): {floor:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
