"""The one path from decoded JSON to the float64 feature matrix that ``model.predict`` gets.

Both protocols end here, so every client sees the same checks and messages: numbers only,
a rectangular shape, the model's feature count, finite values, a bounded row count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ClientError

_NUMERIC_KINDS = "iuf"


def as_numeric_array(data: Any, where: str) -> np.ndarray:
    """Nested lists of JSON numbers -> ndarray (int or float). Refuses ragged, boolean, string or mixed data."""
    if not isinstance(data, list):
        raise ClientError(400, f"{where} must be a JSON array, got {_json_type(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ClientError(422, f"{where} is ragged or nests too deep: every row must have the same length") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise ClientError(422, f"{where} must contain only numbers ({_describe_kind(array)} found)")
    return array


def check_matrix(matrix: np.ndarray, n_features: int, max_rows: int, where: str) -> np.ndarray:
    """Return ``matrix`` as C-contiguous float64 (rows, n_features) after shape, size and finiteness checks."""
    if matrix.ndim != 2:
        raise ClientError(422, f"{where} must be 2-dimensional [rows, {n_features}], got shape {list(matrix.shape)}")
    rows, columns = matrix.shape
    if rows == 0:
        raise ClientError(422, f"{where} has no rows")
    if rows > max_rows:
        raise ClientError(413, f"{where} has {rows} rows; the limit is {max_rows}")
    if columns != n_features:
        raise ClientError(422, f"{where} rows have {columns} features; the model expects {n_features}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    if not np.isfinite(matrix).all():
        row = int(np.argwhere(~np.isfinite(matrix))[0][0])
        raise ClientError(422, f"{where} row {row} holds a non-finite value (NaN or infinity)")
    return matrix


def check_row_count(count: int, max_rows: int, where: str) -> None:
    """Refuse an oversized batch before any conversion work is spent on it."""
    if count > max_rows:
        raise ClientError(413, f"{where} has {count} rows; the limit is {max_rows}")


def _describe_kind(array: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or non-numeric values"}.get(
        array.dtype.kind, f"{array.dtype} values"
    )


def _json_type(value: Any) -> str:
    return {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
