"""KServe V1 / simple JSON: ``{"instances": [[...], ...]}`` or rows keyed by feature name."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ClientError
from .tensors import as_numeric_array, check_matrix, check_row_count


def parse_request(body: Any, feature_names: list[str], max_rows: int) -> np.ndarray:
    """Decoded V1 body -> float64 matrix (rows, features)."""
    if not isinstance(body, dict):
        raise ClientError(400, 'body must be a JSON object like {"instances": [[...], ...]}')
    instances = body.get("instances", body.get("inputs"))
    if instances is None:
        raise ClientError(400, 'body needs "instances": a list of rows')
    if not isinstance(instances, list):
        raise ClientError(400, '"instances" must be a list of rows')
    if not instances:
        raise ClientError(422, '"instances" has no rows')
    check_row_count(len(instances), max_rows, '"instances"')
    if instances and isinstance(instances[0], dict):
        matrix = _rows_from_objects(instances, feature_names)
    else:
        matrix = as_numeric_array(instances, '"instances"')
    return check_matrix(matrix, len(feature_names), max_rows, '"instances"')


def _rows_from_objects(instances: list[Any], feature_names: list[str]) -> np.ndarray:
    expected = set(feature_names)
    rows = []
    for index, row in enumerate(instances):
        if not isinstance(row, dict):
            raise ClientError(422, f'"instances"[{index}] is not an object; do not mix objects and lists')
        if row.keys() != expected:
            missing = sorted(expected - row.keys())
            unknown = sorted(row.keys() - expected)
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "",
                )
                if part
            )
            raise ClientError(422, f'"instances"[{index}]: {detail}')
        rows.append([row[name] for name in feature_names])
    return as_numeric_array(rows, '"instances"')


def encode_response(predictions: np.ndarray) -> dict[str, Any]:
    return {"predictions": predictions}
