"""Tools from plain functions: the schema a model sees, argument validation, calls, timeouts."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Literal

import pytest
from pydantic import BaseModel

from kernos.agents import Tool, ToolArgumentsInvalid, as_tool, tool
from kernos.errors import UsageError


class Address(BaseModel):
    street: str
    city: str


def lookup_order(order_id: str, include_items: bool = False) -> dict[str, object]:
    """Find an order by its id.

    Use it before any refund.

    Args:
        order_id: The order's id, e.g. A-17.
        include_items: Whether to list the order's items too
            (slower).

    Returns:
        The order.
    """
    return {"id": order_id, "items": ["x"] if include_items else []}


async def ship(to: Address, on: date, speed: Literal["normal", "express"] = "normal") -> str:
    """Ship the parcel."""
    return f"{to.city} {on.isoformat()} {speed}"


def test_the_schema_comes_from_type_hints_and_docstring() -> None:
    t = as_tool(lookup_order)
    assert t.name == "lookup_order"
    assert t.description == "Find an order by its id.\n\nUse it before any refund."
    assert t.parameters == {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "description": "The order's id, e.g. A-17."},
            "include_items": {
                "type": "boolean",
                "default": False,
                "description": "Whether to list the order's items too (slower).",
            },
        },
        "required": ["order_id"],
        "additionalProperties": False,
    }
    assert t.spec.name == "lookup_order" and t.spec.parameters == t.parameters


def test_models_dates_and_literals_become_json_schema() -> None:
    t = as_tool(ship)
    props = t.parameters["properties"]
    assert props["on"] == {"type": "string", "format": "date"}
    assert props["speed"]["enum"] == ["normal", "express"]
    assert props["to"] == {"$ref": "#/$defs/Address"}
    assert t.parameters["$defs"]["Address"]["required"] == ["street", "city"]


async def test_arguments_are_validated_and_converted_before_the_call() -> None:
    t = as_tool(ship)
    out = await t.invoke({"to": {"street": "1 Main", "city": "Oslo"}, "on": "2026-11-26"})
    assert out == "Oslo 2026-11-26 normal"
    assert await as_tool(lookup_order).invoke({"order_id": "A-17", "include_items": True}) == {
        "id": "A-17",
        "items": ["x"],
    }


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, "'order_id' is required"),
        ({"order_id": "A", "colour": "red"}, "'colour' is not a parameter of lookup_order"),
        ({"order_id": "A", "include_items": "perhaps"}, "'include_items': Input should be"),
    ],
)
def test_bad_arguments_are_an_error_worded_for_the_model(
    arguments: dict[str, object], expected: str
) -> None:
    with pytest.raises(ToolArgumentsInvalid) as bad:
        as_tool(lookup_order).validate(arguments)
    assert str(bad.value).startswith("invalid arguments for lookup_order: ")
    assert expected in str(bad.value)
    assert "Traceback" not in str(bad.value) and "pydantic" not in str(bad.value)


async def test_the_decorator_sets_options_and_a_timeout_is_enforced() -> None:
    @tool(idempotent=True, timeout=0.2, name="slow-one")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    assert isinstance(slow, Tool) and slow.idempotent and slow.name == "slow-one"
    assert await slow.invoke({"seconds": 0.01}) == "done"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await slow.invoke({"seconds": 5})
    assert time.monotonic() - started < 2


async def test_a_sync_tool_runs_off_the_event_loop() -> None:
    @tool
    def blocking(ms: int) -> int:
        time.sleep(ms / 1000)
        return ms

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    assert await blocking.invoke({"ms": 300}) == 300
    task.cancel()
    assert ticks >= 10  # the loop kept turning while the tool slept


def test_what_cannot_be_a_tool_is_a_clear_usage_error() -> None:
    def star(*args: int) -> None: ...

    with pytest.raises(UsageError, match="named parameters"):
        as_tool(star)
    with pytest.raises(UsageError, match="not allowed"):
        as_tool(lookup_order, name="has spaces")
    with pytest.raises(UsageError, match="must be positive"):
        as_tool(lookup_order, timeout=0)
    with pytest.raises(UsageError, match="not a function"):
        as_tool(42)  # type: ignore[arg-type]
    same = as_tool(lookup_order)
    assert as_tool(same) is same
