"""Strict JSON request bodies: orjson's speed, plus refusing duplicated object keys.

orjson already refuses invalid UTF-8, NaN/Infinity literals and nesting past 1024 levels, but it
lets a duplicated key silently win. A body whose meaning depends on which duplicate counts is
refused instead: the raw text's object members are counted with a tokenizer that steps over
whole strings (exact on the valid JSON orjson accepted) and compared with the parsed members.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .errors import ClientError

# A whole string, with the colon that makes it a key; or a run of anything else.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"\s*(:)?|[^"]+')


def loads(raw: bytes) -> Any:
    """Parse a request body; ClientError 400 naming the problem for anything but one unambiguous JSON value."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"malformed JSON: {exc}") from None
    if b":" in raw and _raw_members(raw) != _parsed_members(value):
        raise ClientError(400, "malformed JSON: an object repeats a key")
    return value


def _raw_members(raw: bytes) -> int:
    return sum(1 for match in _TOKENS.finditer(raw) if match.group(1))


def _parsed_members(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_parsed_members(v) for v in value.values() if isinstance(v, (dict, list)))
    if not isinstance(value, list) or not value or not isinstance(value[0], (dict, list)):
        return 0
    first = value[0]
    if isinstance(first, list) and first and not isinstance(first[0], (dict, list)):
        # Rows of numbers (tensor data) hold no objects; a body hiding one there is refused anyway
        # as non-numeric data, so the walk stops here instead of visiting every row.
        return 0
    return sum(_parsed_members(v) for v in value if isinstance(v, (dict, list)))
