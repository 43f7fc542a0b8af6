"""Open Inference Protocol (V2) inference requests and responses, with Triton's binary tensor extension.

A request carries either one 2-D tensor ``[rows, features]`` (any name) or one 1-D tensor per
feature, named by feature. Tensor data is JSON (flat row-major or nested) or, with the binary
extension, raw little-endian bytes after the JSON header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from .errors import ClientError
from .tensors import as_numeric_array, check_matrix, check_row_count

_ABSENT = object()
OUTPUT_NAME = "predict"
INPUT_NAME = "input-0"
BINARY_HEADER = "Inference-Header-Content-Length"

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(kind)
    for name, kind in (
        ("INT8", "<i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("UINT8", "<u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}


@dataclass
class InferRequest:
    matrix: np.ndarray
    id: str | None = None
    binary_outputs: set[str] = field(default_factory=set)


def parse_request(body: Any, binary: bytes, feature_names: list[str], max_rows: int) -> InferRequest:
    """Decoded V2 JSON (plus any binary section) -> validated feature matrix and response options."""
    if not isinstance(body, dict):
        raise ClientError(400, 'body must be a JSON object with "inputs"')
    # Optional members may be absent, but not null: the protocol types them (string, object, list).
    request_id = body.get("id")
    if "id" in body and not isinstance(request_id, str):
        raise ClientError(400, '"id" must be a string')
    parameters = _parameters(body.get("parameters", {}), '"parameters"')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ClientError(400, '"inputs" must be a non-empty list of tensors')
    tensors = _read_tensors(inputs, binary, max_rows)
    if len(tensors) == 1:
        name, array = next(iter(tensors.items()))
        matrix = check_matrix(array, len(feature_names), max_rows, f"input '{name}'")
    else:
        matrix = _columns_to_matrix(tensors, feature_names, max_rows)
    return InferRequest(
        matrix=matrix,
        id=request_id,
        binary_outputs=_requested_outputs(body.get("outputs", _ABSENT), bool(parameters.get("binary_data_output"))),
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError(400, f"{where} must be an object")
    return value


def _read_tensors(inputs: list[Any], binary: bytes, max_rows: int) -> dict[str, np.ndarray]:
    # Every tensor's structure first (400s), then limits and contents (413, 422): a malformed
    # request is reported as malformed whatever its size claims.
    described = [_describe(tensor, index) for index, tensor in enumerate(inputs)]
    names = [name for name, *_ in described]
    duplicated = next((name for name in names if names.count(name) > 1), None)
    if duplicated is not None:
        raise ClientError(400, f"input '{duplicated}' appears twice")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape, datatype, size, data in described:
        where = f"input '{name}'"
        if len(shape) > 2:
            raise ClientError(422, f"{where} has shape {shape}; expected [rows, features] or [rows]")
        check_row_count(shape[0], max_rows, where)
        if datatype not in DTYPES:
            raise ClientError(
                422, f"{where} has datatype {datatype!r}; supported: {', '.join(DTYPES)} (numeric features only)"
            )
        dtype = DTYPES[datatype]
        if size is not None:
            expected = prod(shape) * dtype.itemsize
            if offset + size > len(binary):
                raise ClientError(400, f"{where} binary_data_size {size} does not fit the binary section")
            if size != expected:
                raise ClientError(
                    422, f"{where} binary data is {size} bytes; shape {shape} of {datatype} needs {expected}"
                )
            array = np.frombuffer(binary, dtype=dtype, count=prod(shape), offset=offset)
            offset += size
        else:
            array = _typed(as_numeric_array(data, f"{where} data"), dtype, datatype, where)
        if array.size != prod(shape):
            raise ClientError(422, f"{where} has {array.size} values; shape {shape} needs {prod(shape)}")
        tensors[name] = array.reshape(shape)
    if offset != len(binary):
        raise ClientError(400, f"binary section has {len(binary) - offset} bytes no input claims")
    return tensors


def _describe(tensor: Any, index: int) -> tuple[str, list[int], Any, int | None, Any]:
    """One input's structure, checked: (name, shape, datatype, binary_data_size, data)."""
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise ClientError(400, f"{where} must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ClientError(400, f'{where} needs a "name" string')
    where = f"input '{name}'"
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise ClientError(400, f'{where} needs "shape": a list of non-negative integers')
    if not isinstance(tensor.get("datatype"), str):
        raise ClientError(400, f'{where} needs a "datatype" string')
    size = _parameters(tensor.get("parameters", {}), f"{where} parameters").get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise ClientError(400, f"{where} binary_data_size {size!r} is not a byte count")
    if size is None and not isinstance(tensor.get("data"), list):
        raise ClientError(400, f'{where} needs "data": an array (or binary_data_size with binary data)')
    return name, shape, tensor["datatype"], size, tensor.get("data")


def _typed(array: np.ndarray, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """Hold JSON numbers to the declared datatype: integers in range for INT*, float precision for FP*."""
    if dtype.kind in "iu":
        if array.dtype.kind == "f":
            raise ClientError(422, f"{where} is {datatype} but holds non-integer values")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ClientError(422, f"{where} holds values outside the {datatype} range")
        return array.astype(dtype)
    return array.astype(dtype) if dtype != np.float64 else array


def _columns_to_matrix(tensors: dict[str, np.ndarray], feature_names: list[str], max_rows: int) -> np.ndarray:
    """One tensor per feature (shape [rows] or [rows, 1]), as MLServer clients send columns."""
    missing = [name for name in feature_names if name not in tensors]
    unknown = [name for name in tensors if name not in feature_names]
    if missing or unknown:
        raise ClientError(
            422,
            "with several inputs, each must be one feature column named "
            f"{', '.join(feature_names)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else ""),
        )
    columns = []
    for name in feature_names:
        column = tensors[name]
        if column.ndim == 2 and column.shape[1] == 1:
            column = column[:, 0]
        if column.ndim != 1:
            raise ClientError(422, f"input '{name}' must have shape [rows] or [rows, 1]")
        columns.append(column)
    if len({len(c) for c in columns}) != 1:
        raise ClientError(422, "feature columns have different row counts")
    return check_matrix(np.column_stack(columns), len(feature_names), max_rows, "inputs")


def _requested_outputs(outputs: Any, all_binary: bool) -> set[str]:
    """Validate ``outputs``; return the names to send as binary. Only ``predict`` exists."""
    if outputs is _ABSENT:
        return {OUTPUT_NAME} if all_binary else set()
    if not isinstance(outputs, list):
        raise ClientError(400, '"outputs" must be a list')
    binary: set[str] = set()
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ClientError(400, f'outputs[{index}] needs a "name" string')
        if output["name"] != OUTPUT_NAME:
            raise ClientError(400, f"unknown output '{output['name']}'; this model has '{OUTPUT_NAME}'")
        params = _parameters(output.get("parameters", {}), f"outputs[{index}] parameters")
        if params.get("binary_data", all_binary):
            binary.add(OUTPUT_NAME)
    return binary


def encode_response(
    predictions: np.ndarray, request: InferRequest, model_name: str, model_version: str
) -> tuple[dict[str, Any], bytes]:
    """Build the response JSON object and the binary section (empty unless binary output was asked for)."""
    values = np.ascontiguousarray(predictions, dtype=np.float64)
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP64", "shape": list(values.shape)}
    binary = b""
    if OUTPUT_NAME in request.binary_outputs:
        binary = values.astype("<f8").tobytes()
        output["parameters"] = {"binary_data_size": len(binary)}
    else:
        output["data"] = values.ravel()
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": [output]}
    if request.id is not None:
        response["id"] = request.id
    return response, binary


def tensor_metadata(feature_names: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, len(feature_names)]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
    }
