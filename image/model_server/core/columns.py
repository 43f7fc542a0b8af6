"""Request values -> typed column arrays, checked against the model's signature.

Both protocols end here, so every client sees the same checks and messages, each naming the
column: the right kind of value (numbers, whole numbers, true/false, strings), no null where the
column is not nullable, finite numbers, equal lengths, a bounded row count.

What a checked column holds, by datatype (missing values only where the column is nullable):

    FP64   float64, NaN for missing
    INT64  int64; float64 with NaN when a value is missing (as pandas reads such a column)
    BOOL   bool; object (True/False/NaN) when a value is missing
    BYTES  object array of str, NaN for missing (as pandas reads a string column)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadRequest, PayloadTooLarge, Unprocessable
from .signature import BOOL, BYTES, FP64, INT64, Column, Signature

_NUMERIC_KINDS = "iuf"
_INT64 = np.iinfo(np.int64)


@dataclass
class Batch:
    """A request's rows after checking: one float64 matrix (all-numeric signatures, the fast path)
    or one typed array per column, in signature order."""

    rows: int
    matrix: np.ndarray | None = None
    columns: dict[str, np.ndarray] | None = None

    def column(self, signature: Signature, name: str) -> np.ndarray:
        if self.columns is not None:
            return self.columns[name]
        assert self.matrix is not None
        return self.matrix[:, signature.names.index(name)]


def concat(batches: list[Batch], signature: Signature) -> Batch:
    """Several requests' batches as one, rows in order: one float matrix when all are matrices, else
    one array per column (numpy promotes as the values need: int and float to float, bool and object
    with NaN to object)."""
    if len(batches) == 1:
        return batches[0]
    rows = sum(b.rows for b in batches)
    matrices = [b.matrix for b in batches if b.matrix is not None]
    if len(matrices) == len(batches):
        return Batch(rows=rows, matrix=np.vstack(matrices))
    columns = {name: np.concatenate([b.column(signature, name) for b in batches]) for name in signature.names}
    return Batch(rows=rows, columns=columns)


def check_row_count(count: int, max_rows: int, where: str) -> None:
    """Refuse an oversized batch before any conversion work is spent on it."""
    if count > max_rows:
        raise PayloadTooLarge(f"{where} has {count} rows; the limit is {max_rows}")


def describe_kind(array: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or non-numeric values"}.get(
        array.dtype.kind, f"{array.dtype} values"
    )


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), "a value")


# ---- numeric matrices (one 2-D tensor, V1 rows of numbers) ------------------------------------------


def as_numeric_array(data: Any, where: str) -> np.ndarray:
    """Nested lists of JSON numbers -> ndarray (int or float); nulls become NaN (checked per column later).

    Refuses ragged, boolean, string or mixed data.
    """
    if not isinstance(data, list):
        raise BadRequest(f"{where} must be a JSON array, got {json_type(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise Unprocessable(f"{where} is ragged or nests too deep: every row must have the same length") from None
    if array.dtype.kind in _NUMERIC_KINDS:
        return array
    if array.dtype.kind == "O" and array.ndim >= 1:
        return _numbers_with_nulls(array, where)
    raise Unprocessable(f"{where} must contain only numbers ({describe_kind(array)} found)")


def _numbers_with_nulls(array: np.ndarray, where: str) -> np.ndarray:
    """An object array that may be numbers and nulls only -> float64 with NaN for the nulls."""
    flat = array.ravel()
    for value in flat:
        if value is not None and (type(value) is bool or not isinstance(value, int | float)):
            raise Unprocessable(f"{where} must contain only numbers ({json_type(value)} found)")
    try:
        return np.array([np.nan if v is None else v for v in flat], dtype=np.float64).reshape(array.shape)
    except OverflowError:
        raise Unprocessable(f"{where} holds a number too large for FP64") from None


def check_matrix(matrix: np.ndarray, signature: Signature, where: str) -> np.ndarray:
    """``matrix`` as C-contiguous float64 (rows, columns) after shape, finiteness and null checks.

    The row count was checked against the limit before any conversion (``check_row_count``).
    """
    width = len(signature)
    if matrix.ndim != 2:
        raise Unprocessable(f"{where} must be 2-dimensional [rows, {width}], got shape {list(matrix.shape)}")
    rows, columns = matrix.shape
    if rows == 0:
        raise Unprocessable(f"{where} has no rows")
    if columns != width:
        raise Unprocessable(f"{where} rows have {columns} features; the model expects {width}")
    try:
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    except OverflowError:
        raise Unprocessable(f"{where} holds a number too large for FP64") from None
    if not np.isfinite(matrix).all():
        _check_non_finite(matrix, signature, where)
    return matrix


def _check_non_finite(matrix: np.ndarray, signature: Signature, where: str) -> None:
    """NaN is a missing value, allowed only in nullable columns; infinity never is."""
    infinite = np.isinf(matrix)
    if infinite.any():
        row, col = (int(i) for i in np.argwhere(infinite)[0])
        raise Unprocessable(f"{where} row {row} holds an infinite value in column '{signature.names[col]}'")
    for col, column in enumerate(signature.columns):
        if not column.nullable:
            missing = np.flatnonzero(np.isnan(matrix[:, col]))
            if missing.size:
                raise Unprocessable(_not_nullable(column, int(missing[0]), where))


def _not_nullable(column: Column, row: int, where: str) -> str:
    return f"{where}: column '{column.name}' row {row} is null (or NaN), and the column is not nullable"


# ---- one column at a time (mixed signatures, V2 column tensors, V1 objects) -------------------------


def from_json(values: list[Any], column: Column, where: str) -> np.ndarray:
    """A flat list of JSON scalars for ``column`` -> its checked array (see the module docstring)."""
    if column.datatype == BYTES:
        # numpy would turn numbers among strings into strings: keep each value's JSON type to check it.
        array = np.empty(len(values), dtype=object)
        array[:] = values
        if any(isinstance(v, list | dict) for v in values):
            raise Unprocessable(f"{where}: column '{column.name}' must be a flat list of values, not nested lists")
        return _from_objects(array, column, where)
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise Unprocessable(f"{where}: column '{column.name}' must be a flat list of values") from None
    if array.ndim != 1:
        raise Unprocessable(f"{where}: column '{column.name}' must be a flat list of values, not nested lists")
    return from_array(array, column, where)


def from_array(array: np.ndarray, column: Column, where: str) -> np.ndarray:
    """A decoded 1-D array (JSON-typed or a V2 tensor's dtype) -> the column's checked array."""
    kind = array.dtype.kind
    if kind == "O":
        return _from_objects(array, column, where)
    if column.datatype == BYTES:
        if kind not in "US":
            raise Unprocessable(_wrong_kind(column, array, where))
        return array.astype(object) if kind == "U" else np.array([v.decode() for v in array], dtype=object)
    if column.datatype == BOOL:
        if kind != "b":
            raise Unprocessable(_wrong_kind(column, array, where))
        return array
    if kind not in _NUMERIC_KINDS:
        raise Unprocessable(_wrong_kind(column, array, where))
    if column.datatype == INT64:
        return _whole_numbers(array, column, where)
    values = array.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        if np.isinf(values).any():
            raise Unprocessable(f"{where}: column '{column.name}' holds an infinite value")
        if not column.nullable:
            raise Unprocessable(_not_nullable(column, int(np.flatnonzero(np.isnan(values))[0]), where))
    return values


def _whole_numbers(array: np.ndarray, column: Column, where: str) -> np.ndarray:
    if array.dtype.kind in "iu":
        if array.dtype.kind == "u" and array.size and array.max() > _INT64.max:
            raise Unprocessable(f"{where}: column '{column.name}' holds a value outside the INT64 range")
        return array.astype(np.int64, copy=False)
    missing = np.isnan(array)
    present = array[~missing]
    if np.isinf(present).any() or (present != np.floor(present)).any():
        raise Unprocessable(f"{where}: column '{column.name}' is INT64 but holds a value that is not a whole number")
    if (present < _INT64.min).any() or (present > _INT64.max).any():
        raise Unprocessable(f"{where}: column '{column.name}' holds a value outside the INT64 range")
    if missing.any():
        if not column.nullable:
            raise Unprocessable(_not_nullable(column, int(np.flatnonzero(missing)[0]), where))
        return array.astype(np.float64, copy=False)
    return array.astype(np.int64)


def _from_objects(array: np.ndarray, column: Column, where: str) -> np.ndarray:
    """Mixed JSON scalars (usually values and nulls): check each against the column's kind."""
    allowed = {FP64: (int, float), INT64: (int, float), BOOL: (bool,), BYTES: (str,)}[column.datatype]
    missing = []
    for row, value in enumerate(array):
        if value is None or (isinstance(value, float) and value != value):
            missing.append(row)
        elif not isinstance(value, allowed) or (column.datatype != BOOL and type(value) is bool):
            raise Unprocessable(
                f"{where}: column '{column.name}' is {column.describe()}; row {row} holds {json_type(value)}"
            )
    if missing and not column.nullable:
        raise Unprocessable(_not_nullable(column, missing[0], where))
    if column.datatype in (FP64, INT64):
        try:
            numbers = np.array([np.nan if v is None else v for v in array], dtype=np.float64)
        except OverflowError:
            raise Unprocessable(f"{where}: column '{column.name}' holds a number too large for FP64") from None
        return from_array(numbers, column, where)
    if not missing:
        return np.array(list(array), dtype=bool) if column.datatype == BOOL else array
    out = array.copy()
    out[missing] = np.nan
    return out


def _wrong_kind(column: Column, array: np.ndarray, where: str) -> str:
    """The whole array is of another kind than the column, so its first value already shows it."""
    first = array[0] if array.size else None
    value = first.item() if isinstance(first, np.generic) else first
    return f"{where}: column '{column.name}' is {column.describe()}; row 0 holds {json_type(value)}"


def columns_from_rows(rows: list[Any], signature: Signature, where: str) -> dict[str, np.ndarray]:
    """Rows of mixed values (lists in signature order) -> checked columns."""
    width = len(signature)
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            raise Unprocessable(
                f"{where}[{index}] is {json_type(row)}; every row must be a list (or every row an object)"
            )
        if len(row) != width:
            raise Unprocessable(
                f"{where}[{index}] has {len(row)} values; the model takes {width}: {', '.join(signature.names)}"
            )
    transposed = zip(*rows, strict=True)
    return {
        column.name: from_json(list(values), column, where)
        for column, values in zip(signature.columns, transposed, strict=True)
    }


def check_names(given: list[str], signature: Signature, where: str) -> None:
    """Every signature column present once and nothing else: the message lists what is missing and unknown."""
    expected = set(signature.names)
    missing = [name for name in signature.names if name not in given]
    unknown = [name for name in given if name not in expected]
    if missing or unknown:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise Unprocessable(f"{where}: {detail} (the model takes {', '.join(signature.names)})")
