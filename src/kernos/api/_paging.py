"""Cursor pagination over the runs list: opaque cursors that survive concurrent inserts.

Runs list newest first, by id (ids sort by creation time). A cursor names the last run a page
showed; the next page is the runs with smaller ids, so runs created between two requests never
shift a page or repeat a row. ``Store.list_runs`` has a limit but no "ids below" bound, so a
page is cut from its first ``offset + limit + 1`` rows, where ``offset`` (carried in the cursor)
is how many rows came before; when new runs pushed rows down meanwhile, it reads further.
Reading page *n* therefore costs *n* pages of rows; ``list_runs(before=...)`` in the store
would make it one page.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from kernos.store import Run, RunState, Store

from ._problems import ProblemError


@dataclass(frozen=True, slots=True)
class Cursor:
    before: str
    offset: int

    def encode(self) -> str:
        raw = json.dumps({"b": self.before, "o": self.offset}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            before, offset = data["b"], data["o"]
            if not isinstance(before, str) or "\x00" in before:
                raise ValueError(before)
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ValueError(offset)
        except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
            raise ProblemError(
                400,
                "the cursor is not one this API gave out; pass the `next` value of the "
                "previous page unchanged, or omit it for the first page",
                kind="bad-cursor",
            ) from None
        return cls(before, offset)


async def page_runs(
    store: Store,
    *,
    state: RunState | None,
    agent: str | None,
    tenant: str | None,
    limit: int,
    cursor: Cursor | None,
) -> tuple[list[Run], Cursor | None]:
    """One page of runs, newest first, and the cursor of the next page (None on the last)."""
    offset = cursor.offset if cursor else 0
    want = offset + limit + 1
    while True:
        rows = await store.list_runs(state=state, agent=agent, limit=want, tenant=tenant)
        start = 0
        if cursor is not None:
            start = next((i for i, r in enumerate(rows) if r.id < cursor.before), len(rows))
        page = rows[start : start + limit + 1]
        if len(page) > limit:
            last = start + limit - 1
            return page[:limit], Cursor(rows[last].id, last + 1)
        if len(rows) < want:  # the end of the list: nothing more to read
            return page, None
        want *= 2
