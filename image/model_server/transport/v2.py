"""Open Inference Protocol (V2) inference requests and responses, with Triton's binary tensor extension.

A request carries one 1-D tensor per input column, named by column, in any order (what MLServer's
and KServe's pandas codecs send, ``parameters.content_type: "pd"``), or, for models whose columns
are all numeric, one 2-D tensor ``[rows, columns]`` under any name. Tensor data is JSON (flat
row-major or nested; ``null`` is a missing value) or, with the binary extension, raw little-endian
bytes after the JSON header (BYTES elements as a 4-byte length and the UTF-8 bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from ..core import columns
from ..core.columns import Batch, check_row_count
from ..core.signature import BOOL, BYTES, FP64, INT64, Output, Signature
from ..errors import BadRequest, Unprocessable

_ABSENT = object()
MATRIX_INPUT_NAME = "input-0"
BINARY_HEADER = "Inference-Header-Content-Length"
# What pandas and numpy clients put in ``parameters.content_type`` (request or input): all mean
# "these tensors are columns/arrays", which is how every request is read anyway.
CONTENT_TYPES = frozenset({"pd", "np", "str"})

NUMERIC_DTYPES: dict[str, np.dtype] = {
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
DATATYPES = (*NUMERIC_DTYPES, BOOL, BYTES)
_LENGTH = struct.Struct("<I")


@dataclass
class InferRequest:
    batch: Batch
    outputs: tuple[str, ...]
    id: str | None = None
    binary_outputs: set[str] = field(default_factory=set)


@dataclass
class Tensor:
    """One input tensor's structure, checked; its values are one of: ``data`` (JSON), ``binary_size`` bytes of
    the binary section, or an ``array`` already decoded (the gRPC binding's typed contents)."""

    name: str
    shape: list[int]
    datatype: str
    binary_size: int | None
    data: Any
    array: np.ndarray | None = None


def parse_request(
    body: Any,
    binary: bytes,
    signature: Signature,
    available: Mapping[str, Output],
    default_outputs: tuple[str, ...],
    max_rows: int,
    unavailable: Mapping[str, str] | None = None,
) -> InferRequest:
    """Decoded V2 JSON (plus any binary section) -> checked batch, requested outputs, response options."""
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object with "inputs"')
    # Optional members may be absent, but not null: the protocol types them (string, object, list).
    request_id = body.get("id")
    if "id" in body and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    parameters = checked_parameters(body.get("parameters", {}), '"parameters"')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('"inputs" must be a non-empty list of tensors')
    # Every tensor's structure first (400s), then limits and contents (413, 422): a malformed
    # request is reported as malformed whatever its size claims.
    tensors = [_describe(tensor, index) for index, tensor in enumerate(inputs)]
    outputs, binary_outputs = requested_outputs(
        body.get("outputs", _ABSENT),
        available,
        default_outputs,
        bool(parameters.get("binary_data_output")),
        unavailable or {},
    )
    batch = checked_batch(tensors, binary, signature, max_rows)
    return InferRequest(batch=batch, outputs=outputs, id=request_id, binary_outputs=binary_outputs)


def checked_batch(tensors: list[Tensor], binary: bytes, signature: Signature, max_rows: int) -> Batch:
    """Input tensors, structurally checked, -> the model's checked Batch: what both bindings (JSON and gRPC)
    share from here on, so a request is refused alike, with the same message, whichever binding sent it."""
    names = [t.name for t in tensors]
    duplicated = next((name for name in names if names.count(name) > 1), None)
    if duplicated is not None:
        raise BadRequest(f"input '{duplicated}' appears twice")
    arrays = _decode_all(tensors, binary, max_rows)
    if _is_matrix(tensors, signature):
        tensor = tensors[0]
        return _matrix_batch(tensor, arrays[tensor.name], signature)
    return _column_batch(tensors, arrays, signature)


def checked_parameters(value: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` object, its content_type (if any) one this server reads."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    content_type = value.get("content_type")
    if content_type is not None and content_type not in CONTENT_TYPES:
        raise Unprocessable(
            f"{where} content_type {content_type!r} is not supported; send tensors as data "
            f"({', '.join(sorted(CONTENT_TYPES))})"
        )
    return value


def _describe(tensor: Any, index: int) -> Tensor:
    """One input's structure, checked."""
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise BadRequest(f"{where} must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f'{where} needs a "name" string')
    where = f"input '{name}'"
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(f'{where} needs "shape": a list of non-negative integers')
    if not isinstance(tensor.get("datatype"), str):
        raise BadRequest(f'{where} needs a "datatype" string')
    size = checked_parameters(tensor.get("parameters", {}), f"{where} parameters").get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise BadRequest(f"{where} binary_data_size {size!r} is not a byte count")
    if size is None and not isinstance(tensor.get("data"), list):
        raise BadRequest(f'{where} needs "data": an array (or binary_data_size with binary data)')
    return Tensor(name, shape, tensor["datatype"], size, tensor.get("data"))


def _decode_all(tensors: list[Tensor], binary: bytes, max_rows: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        where = f"input '{tensor.name}'"
        if len(tensor.shape) > 2:
            raise Unprocessable(f"{where} has shape {tensor.shape}; expected [rows, columns] or [rows]")
        check_row_count(tensor.shape[0], max_rows, where)
        if tensor.datatype not in DATATYPES:
            raise Unprocessable(f"{where} has datatype {tensor.datatype!r}; supported: {', '.join(DATATYPES)}")
        count = prod(tensor.shape)
        if tensor.array is not None:
            array = _typed(tensor.array, tensor.datatype, where) if tensor.datatype in NUMERIC_DTYPES else tensor.array
        elif tensor.binary_size is not None:
            if offset + tensor.binary_size > len(binary):
                raise BadRequest(f"{where} binary_data_size {tensor.binary_size} does not fit the binary section")
            chunk = binary[offset : offset + tensor.binary_size]
            offset += tensor.binary_size
            array = _from_binary(chunk, tensor.datatype, count, tensor.shape, where)
        else:
            array = _from_json(tensor.data, tensor.datatype, where)
        if array.size != count:
            raise Unprocessable(f"{where} has {array.size} values; shape {tensor.shape} needs {count}")
        arrays[tensor.name] = array.reshape(tensor.shape)
    if offset != len(binary):
        raise BadRequest(f"binary section has {len(binary) - offset} bytes no input claims")
    return arrays


def _from_json(data: list[Any], datatype: str, where: str) -> np.ndarray:
    """JSON tensor data held to its declared datatype; null stays a missing value (NaN or None)."""
    if datatype in NUMERIC_DTYPES:
        return _typed(columns.as_numeric_array(data, f"{where} data"), datatype, where)
    try:
        values = np.array(data, dtype=object).ravel() if data else np.empty(0, dtype=object)
    except ValueError:
        raise Unprocessable(f"{where} data is ragged: every row must have the same length") from None
    wanted = str if datatype == BYTES else bool
    for index, value in enumerate(values):
        if value is not None and type(value) is not wanted:
            kind = "strings" if datatype == BYTES else "true/false"
            raise Unprocessable(f"{where} is {datatype} ({kind}); element {index} is {columns.json_type(value)}")
    return values


def _typed(array: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """Hold JSON numbers to the declared datatype: integers in range for INT*, float precision for FP*."""
    dtype = NUMERIC_DTYPES[datatype]
    if dtype.kind in "iu":
        missing = np.isnan(array) if array.dtype.kind == "f" else None
        present = array[~missing] if missing is not None else array
        if present.dtype.kind == "f" and (present != np.floor(present)).any():
            raise Unprocessable(f"{where} is {datatype} but holds non-integer values")
        info = np.iinfo(dtype)
        # Exclusive bound: numpy reads an integer past int64 beside other numbers as a rounded float64
        # (2**64 - 1 becomes 2**64, which astype would silently wrap to 0), so such a float is refused.
        if present.size and (present.min() < info.min or present.max() >= info.max + 1):
            raise Unprocessable(f"{where} holds values outside the {datatype} range")
        if missing is not None and missing.any():
            return array  # float64 with NaN: the nulls are checked against the column later
        return array.astype(dtype)
    return array.astype(dtype) if dtype != np.float64 else array


def from_binary(chunk: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """A tensor's binary data (the binary extension, gRPC's raw contents) as a flat array; Unprocessable,
    naming ``where``, when the bytes do not hold ``shape`` of ``datatype``."""
    return _from_binary(chunk, datatype, prod(shape), shape, where)


def _from_binary(chunk: bytes, datatype: str, count: int, shape: list[int], where: str) -> np.ndarray:
    if datatype == BYTES:
        return _bytes_elements(chunk, count, where)
    itemsize = 1 if datatype == BOOL else NUMERIC_DTYPES[datatype].itemsize
    expected = count * itemsize
    if len(chunk) != expected:
        raise Unprocessable(f"{where} binary data is {len(chunk)} bytes; shape {shape} of {datatype} needs {expected}")
    if datatype == BOOL:
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if (raw > 1).any():
            raise Unprocessable(f"{where} is BOOL; its binary data holds bytes other than 0 and 1")
        return raw.astype(bool)
    return np.frombuffer(chunk, dtype=NUMERIC_DTYPES[datatype], count=count)


def _bytes_elements(chunk: bytes, count: int, where: str) -> np.ndarray:
    """Triton's BYTES serialisation: each element a little-endian uint32 length, then that many bytes."""
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(chunk):
            raise Unprocessable(f"{where} binary data ends before element {index} of {count}")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise Unprocessable(f"{where} element {index} claims {length} bytes past the end of its data")
        try:
            out[index] = chunk[offset : offset + length].decode()
        except UnicodeDecodeError:
            raise Unprocessable(f"{where} element {index} is not UTF-8 text") from None
        offset += length
    if offset != len(chunk):
        raise Unprocessable(f"{where} binary data has {len(chunk) - offset} bytes after its {count} elements")
    return out


def _is_matrix(tensors: list[Tensor], signature: Signature) -> bool:
    """One tensor that is not a column of its own: the 2-D [rows, columns] form."""
    if len(tensors) != 1:
        return False
    tensor = tensors[0]
    return tensor.name not in signature.by_name or (len(tensor.shape) == 2 and tensor.shape[1] > 1)


def _matrix_batch(tensor: Tensor, array: np.ndarray, signature: Signature) -> Batch:
    where = f"input '{tensor.name}'"
    if not signature.numeric:
        raise Unprocessable(
            f"{where}: one 2-D tensor only carries models whose columns are all numeric; this model takes one "
            "tensor per column: " + ", ".join(f"{c.name} ({c.datatype})" for c in signature.columns)
        )
    if tensor.datatype not in NUMERIC_DTYPES:
        raise Unprocessable(f"{where} is {tensor.datatype}; send numbers, or one tensor per column")
    matrix = columns.check_matrix(array, signature, where)
    return Batch(rows=len(matrix), matrix=matrix)


def _column_batch(tensors: list[Tensor], arrays: dict[str, np.ndarray], signature: Signature) -> Batch:
    """One tensor per column (shape [rows] or [rows, 1]), as pandas-codec clients send columns."""
    columns.check_names([t.name for t in tensors], signature, "inputs")
    checked: dict[str, np.ndarray] = {}
    for name in signature.names:
        array = arrays[name]
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise Unprocessable(f"input '{name}' must have shape [rows] or [rows, 1]")
        checked[name] = columns.from_array(array, signature.by_name[name], f"input '{name}'")
    lengths = {len(column) for column in checked.values()}
    if len(lengths) != 1:
        counts = ", ".join(f"{name}: {len(column)}" for name, column in checked.items())
        raise Unprocessable(f"input columns have different row counts ({counts})")
    rows = lengths.pop()
    if rows == 0:
        raise Unprocessable("inputs have no rows")
    return Batch(rows=rows, columns=checked)


def requested_outputs(
    outputs: Any,
    available: Mapping[str, Output],
    default: tuple[str, ...],
    all_binary: bool,
    unavailable: Mapping[str, str],
) -> tuple[tuple[str, ...], set[str]]:
    """Validate ``outputs``; return the names to answer, in order, and those to send as binary."""
    if outputs is _ABSENT or outputs == []:
        return default, set(default) if all_binary else set()
    if not isinstance(outputs, list):
        raise BadRequest('"outputs" must be a list')
    names: list[str] = []
    binary: set[str] = set()
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise BadRequest(f'outputs[{index}] needs a "name" string')
        name = output["name"]
        if name in unavailable:
            raise Unprocessable(unavailable[name])
        if name not in available:
            raise BadRequest(f"unknown output '{name}'; this model has {', '.join(available)}")
        if name in names:
            raise BadRequest(f"output '{name}' is requested twice")
        names.append(name)
        params = checked_parameters(output.get("parameters", {}), f"outputs[{index}] parameters")
        if params.get("binary_data", all_binary):
            binary.add(name)
    return tuple(names), binary


def encode_response(
    results: dict[str, np.ndarray],
    outputs: Mapping[str, Output],
    request: InferRequest,
    model_name: str,
    model_version: str,
) -> tuple[dict[str, Any], bytes]:
    """The response JSON object and the binary section (empty unless binary output was asked for)."""
    encoded: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in request.outputs:
        values = results[name]
        spec = outputs[name]
        output: dict[str, Any] = {"name": name, "datatype": spec.datatype, "shape": list(values.shape)}
        parameters = dict(spec.parameters)
        if name in request.binary_outputs:
            chunk = to_binary(values, spec.datatype)
            chunks.append(chunk)
            parameters["binary_data_size"] = len(chunk)
        else:
            output["data"] = values.ravel().tolist() if spec.datatype == BYTES else values.ravel()
        if parameters:
            output["parameters"] = parameters
        encoded.append(output)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": encoded}
    if request.id is not None:
        response["id"] = request.id
    return response, b"".join(chunks)


def to_binary(values: np.ndarray, datatype: str) -> bytes:
    if datatype == BYTES:
        parts = []
        for value in values.ravel():
            data = str(value).encode()
            parts.append(_LENGTH.pack(len(data)) + data)
        return b"".join(parts)
    dtype = {FP64: "<f8", INT64: "<i8", BOOL: "u1"}[datatype]
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def tensor_metadata(signature: Signature, outputs: Mapping[str, Output]) -> dict[str, list[dict[str, Any]]]:
    """Model metadata's ``inputs`` (one 1-D tensor per column) and ``outputs``."""
    inputs = []
    for column in signature.columns:
        parameters: dict[str, Any] = {"nullable": column.nullable, "example": column.example}
        if column.categories:
            parameters["categories"] = list(column.categories)
        inputs.append({"name": column.name, "datatype": column.datatype, "shape": [-1], "parameters": parameters})
    return {"inputs": inputs, "outputs": [output.to_json() for output in outputs.values()]}


def matrix_input(signature: Signature) -> dict[str, Any] | None:
    """The one-tensor form all-numeric models also take (what metadata's parameters advertise)."""
    if not signature.numeric:
        return None
    return {"name": MATRIX_INPUT_NAME, "datatype": FP64, "shape": [-1, len(signature)]}
