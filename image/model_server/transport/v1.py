"""KServe V1 / simple JSON: ``{"instances": [...]}`` -> ``{"predictions": [...]}``.

Each instance is a row: a list of values in signature order (numbers, strings, booleans, null where
the column is nullable), or an object keyed by column name. ``predictions`` carries the server's
first default output (``predict`` unless MODEL_SERVER_DEFAULT_OUTPUTS says otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import columns
from ..core.columns import Batch, check_row_count
from ..core.signature import BYTES, Signature
from ..errors import BadRequest, Unprocessable

WHERE = '"instances"'


def parse_request(body: Any, signature: Signature, max_rows: int) -> Batch:
    """Decoded V1 body -> checked batch."""
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"instances": [[...], ...]}')
    instances = body.get("instances", body.get("inputs"))
    if instances is None:
        raise BadRequest('body needs "instances": a list of rows')
    if not isinstance(instances, list):
        raise BadRequest('"instances" must be a list of rows')
    if not instances:
        raise Unprocessable('"instances" has no rows')
    check_row_count(len(instances), max_rows, WHERE)
    if isinstance(instances[0], dict):
        by_column = _columns_from_objects(instances, signature)
        if signature.numeric:
            rows = [list(values) for values in zip(*by_column.values(), strict=True)]
            return _matrix(rows, signature)
        return Batch(
            rows=len(instances),
            columns={c.name: columns.from_json(by_column[c.name], c, WHERE) for c in signature.columns},
        )
    if signature.numeric:
        return _matrix(instances, signature)
    return Batch(rows=len(instances), columns=columns.columns_from_rows(instances, signature, WHERE))


def _matrix(rows: list[Any], signature: Signature) -> Batch:
    """Rows of numbers -> one float64 matrix (the fast path); a refusal names the column at fault."""
    try:
        array = columns.as_numeric_array(rows, WHERE)
    except Unprocessable:
        for index, row in enumerate(rows):
            if not isinstance(row, list):
                raise Unprocessable(
                    f"{WHERE}[{index}] is {columns.json_type(row)}; do not mix objects and lists"
                ) from None
        columns.columns_from_rows(rows, signature, WHERE)  # raises, naming the row and column
        raise
    matrix = columns.check_matrix(array, signature, WHERE)
    return Batch(rows=len(matrix), matrix=matrix)


def _columns_from_objects(instances: list[Any], signature: Signature) -> dict[str, list[Any]]:
    expected = set(signature.names)
    by_column: dict[str, list[Any]] = {name: [] for name in signature.names}
    for index, row in enumerate(instances):
        if not isinstance(row, dict):
            raise Unprocessable(f"{WHERE}[{index}] is not an object; do not mix objects and lists")
        if row.keys() != expected:
            columns.check_names(list(row), signature, f"{WHERE}[{index}]")
        for name in signature.names:
            by_column[name].append(row[name])
    return by_column


def encode_response(values: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"predictions": values.tolist() if datatype == BYTES else values}


def encode_explanations(
    contributions: np.ndarray, baseline: np.ndarray, signature: Signature, explains: str
) -> dict[str, Any]:
    """``{"explanations": [...]}``: per row the explained value, its baseline and each column's part."""
    values = baseline + contributions.sum(axis=1)
    return {
        "explanations": [
            {
                "explains": explains,
                "value": float(value),
                "baseline": float(base),
                "contributions": dict(zip(signature.names, row.tolist(), strict=True)),
            }
            for value, base, row in zip(values, baseline, contributions, strict=True)
        ]
    }
