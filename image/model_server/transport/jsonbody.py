"""Strict JSON request bodies: orjson's speed, plus refusing duplicated object keys.

orjson already refuses invalid UTF-8, NaN/Infinity literals and nesting past 1024 levels, but it
lets a duplicated key silently win. A body whose meaning depends on which duplicate counts is
refused instead: the raw text's object members are counted with a tokenizer that steps over
whole strings (exact on the valid JSON orjson accepted) and compared with the parsed members.
``NaN`` alone is let through (as a missing value) because stock clients write it for a missing
number: Python's json module, and tritonclient's JSON tensors.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from ..errors import BadRequest

# A whole string, with the colon that makes it a key; or a run of anything else.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"\s*(:)?|[^"]+')


def loads(raw: bytes) -> Any:
    """Parse a request body; BadRequest naming the problem for anything but one unambiguous JSON value."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        value = _with_nan(raw, exc)
    if b":" in raw:
        members = _raw_members(raw)
        # The quick count skips rows of scalars; only a body it does not add up for is walked in full,
        # so a list mixing rows and objects is not mistaken for a repeated key.
        if members != _parsed_members(value, quick=True) and members != _parsed_members(value, quick=False):
            raise BadRequest("malformed JSON: an object repeats a key")
    return value


def _with_nan(raw: bytes, error: orjson.JSONDecodeError) -> Any:
    """A body that is JSON but for ``NaN`` literals, as Python's json and tritonclient write a missing
    number: NaN is read as the missing value it means (checked per column later); Infinity stays refused."""
    if b"NaN" not in raw:
        raise BadRequest(f"malformed JSON: {error}") from None

    def constant(name: str) -> float:
        if name != "NaN":
            raise ValueError(name)
        return math.nan

    try:
        return json.loads(raw, parse_constant=constant)
    except (ValueError, RecursionError):
        raise BadRequest(f"malformed JSON: {error}") from None


def _raw_members(raw: bytes) -> int:
    return sum(1 for match in _TOKENS.finditer(raw) if match.group(1))


def _parsed_members(value: Any, *, quick: bool) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_parsed_members(v, quick=quick) for v in value.values() if isinstance(v, dict | list))
    if not isinstance(value, list) or not value:
        return 0
    first = value[0]
    if quick and (
        not isinstance(first, dict | list)
        or (isinstance(first, list) and first and not isinstance(first[0], dict | list))
    ):
        # Tensor data and rows of scalars hold no objects: the quick count does not visit every row.
        return 0
    return sum(_parsed_members(v, quick=quick) for v in value if isinstance(v, dict | list))
