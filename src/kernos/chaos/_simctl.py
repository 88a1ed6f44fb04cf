"""The scenario's hold on the provider simulator: its fault rules, and its request log.

The simulator keeps a bounded log, so the runner copies it as the scenario goes (``since=`` the
last entry it has) into ``sim-requests.jsonl`` in the scenario's directory: the report is
measured from that file, and a reader can check the report against it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from kernos.chaos._scenarios import Injection
from kernos.sim import Fault

__all__ = ["SimControl"]

#: how far back (in request numbers) each fetch of the log looks for late-logged requests
_MARGIN = 200
#: the first rule that fires decides: an outage is total, a cut response is not also slow
_ORDER = {"outage": 0, "truncate": 1, "rate_limit": 2, "slow": 3}


class SimControl:
    def __init__(self, url: str, log_file: Path) -> None:
        self.url = url
        self.log_file = log_file
        self.entries: list[dict[str, Any]] = []
        self._last = 0
        self._seen: set[int] = set()

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    @staticmethod
    def rules(schedule: list[Injection]) -> dict[str, list[Fault]]:
        """The simulator's rules for the schedule's provider faults, each in its window."""
        rules: dict[str, list[Fault]] = {}
        for i in sorted(schedule, key=lambda i: _ORDER.get(i.action, 9)):
            if i.target not in ("primary", "fallback"):
                continue
            kind = "unavailable" if i.action == "outage" else i.action
            rules.setdefault(i.target, []).append(
                Fault.model_validate(
                    {"kind": kind, "start": i.at, "duration": i.duration, **i.params}
                )
            )
        return rules

    def install(self, schedule: list[Injection]) -> None:
        for provider, rules in self.rules(schedule).items():
            self._call(
                "PUT",
                f"/_sim/providers/{provider}/faults",
                [r.model_dump(mode="json", exclude_none=True) for r in rules],
            )

    def clear(self) -> None:
        for provider in ("primary", "fallback"):
            self._call("DELETE", f"/_sim/providers/{provider}/faults")

    def fetch(self) -> None:
        """Copy the log entries since the last fetch (without the request bodies, which are
        the journal's business and large). A request's number is drawn before it is logged, so
        a slow one can be logged after a later one: each fetch looks back a margin."""
        since = max(0, self._last - _MARGIN)
        got: list[dict[str, Any]] = self._call("GET", f"/_sim/log?since={since}")["entries"]
        entries = [e for e in got if int(e["seq"]) not in self._seen]
        self._seen.update(int(e["seq"]) for e in entries)
        with self.log_file.open("a") as out:
            for e in entries:
                e.pop("request", None)
                out.write(json.dumps(e) + "\n")
        self.entries += entries
        if entries:
            self._last = max(int(e["seq"]) for e in entries)

    async def follow(self, every: float = 2.0) -> None:
        """Fetch the log every ``every`` seconds until cancelled (in the loop's thread: a local
        call of a few milliseconds, and never two fetches at once)."""
        while True:
            self.fetch()
            await asyncio.sleep(every)
