"""JSON in and out of the journal, with errors that name what failed to encode."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from kernos.errors import InvalidInput, NotSerializable


def to_jsonable(value: Any) -> Any:
    """Pydantic models become their JSON form; everything else must already be JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def encode(value: Any, what: str) -> str:
    """Encode ``value`` as compact JSON, or raise ``NotSerializable`` naming ``what``."""
    try:
        return json.dumps(to_jsonable(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(
            f"{what} is not JSON-serialisable ({exc}); return plain data (dict, list, str, "
            f"number, bool, None) or a pydantic model"
        ) from exc


def roundtrip(value: Any, what: str) -> tuple[Any, str]:
    """The value as it will read back from the journal, and its encoding.

    A live step returns exactly what replay will return (tuples become lists, models dicts), so
    that code behaves the same live and replayed.
    """
    text = encode(value, what)
    return json.loads(text), text


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f'pass JSON, e.g. \'{{"id": "A-17"}}\' or \'"a string"\' (quoted for the shell)'
        ) from exc
