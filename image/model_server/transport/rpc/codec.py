"""ModelInferRequest -> the checked request the JSON binding builds too; outputs -> ModelInferResponse.

The structure of the gRPC messages is checked here; everything after it (datatypes, shapes, row limits,
columns, nulls, requested outputs) is v2.py's, so a request is refused with the same message over either
binding. Tensor values come as raw little-endian bytes (``raw_input_contents``, what tritonclient sends)
or in the typed ``contents`` field of their datatype; answers are always raw (``raw_output_contents``,
the only form tritonclient reads; KServe's and MLServer's clients read it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.signature import Output, Signature
from ...errors import BadRequest, Unprocessable
from .. import v2
from ..routes import dumps
from . import messages

# The typed contents field of each datatype, and the numpy type its values arrive as.
CONTENTS: dict[str, tuple[str, Any]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", None),
}


def parameter_value(parameter: Any) -> Any:
    """An InferParameter's value as Python (None when none of its choices is set)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def set_parameter(parameter: Any, value: Any) -> None:
    """Fill an InferParameter: bool, int, float and str as themselves, anything else (lists) as JSON text."""
    if isinstance(value, bool | np.bool_):
        parameter.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        parameter.int64_param = int(value)
    elif isinstance(value, float | np.floating):
        parameter.double_param = float(value)
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        parameter.string_param = dumps(value).decode()


def _plain(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def parse_request(
    request: Any,
    signature: Signature,
    available: Mapping[str, Output],
    default_outputs: tuple[str, ...],
    max_rows: int,
    unavailable: Mapping[str, str] | None = None,
) -> v2.InferRequest:
    """A decoded ModelInferRequest -> checked batch and requested outputs (v2.InferRequest)."""
    v2.checked_parameters(_plain(request.parameters), "parameters")
    if not request.inputs:
        raise BadRequest("inputs must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one per input")
    tensors = [
        _describe(tensor, index, bool(raw), raw[index] if raw else b"") for index, tensor in enumerate(request.inputs)
    ]
    outputs, _ = v2.requested_outputs(
        [{"name": output.name, "parameters": _plain(output.parameters)} for output in request.outputs],
        available,
        default_outputs,
        False,
        unavailable or {},
    )
    batch = v2.checked_batch(tensors, b"".join(raw), signature, max_rows)
    return v2.InferRequest(batch=batch, outputs=outputs, id=request.id or None)


def _describe(tensor: Any, index: int, raw: bool, chunk: bytes) -> v2.Tensor:
    if not tensor.name:
        raise BadRequest(f"inputs[{index}] needs a name")
    where = f"input '{tensor.name}'"
    shape = list(tensor.shape)
    if not shape or any(d < 0 for d in shape):
        raise BadRequest(f"{where} needs shape: a list of non-negative integers")
    if not tensor.datatype:
        raise BadRequest(f"{where} needs a datatype")
    v2.checked_parameters(_plain(tensor.parameters), f"{where} parameters")
    if raw:
        if tensor.HasField("contents"):
            raise BadRequest(f"{where} has contents while raw_input_contents carries the inputs: use one or the other")
        return v2.Tensor(tensor.name, shape, tensor.datatype, len(chunk), None)
    return v2.Tensor(tensor.name, shape, tensor.datatype, None, None, _contents(tensor, where))


def _contents(tensor: Any, where: str) -> np.ndarray:
    """The values of the typed contents field of the tensor's datatype; no other field may hold any."""
    if tensor.datatype not in CONTENTS:
        if tensor.datatype in v2.DATATYPES:  # FP16: no typed field
            raise Unprocessable(f"{where} is {tensor.datatype}, which only raw_input_contents carries")
        raise Unprocessable(f"{where} has datatype {tensor.datatype!r}; supported: {', '.join(v2.DATATYPES)}")
    field, dtype = CONTENTS[tensor.datatype]
    contents = tensor.contents
    stray = [descriptor.name for descriptor, _ in contents.ListFields() if descriptor.name != field]
    if stray:
        raise BadRequest(f"{where} is {tensor.datatype}: its values go in contents.{field}, not {', '.join(stray)}")
    values = getattr(contents, field)
    if dtype is not None:
        return np.array(values, dtype=dtype)
    out = np.empty(len(values), dtype=object)
    for position, value in enumerate(values):
        try:
            out[position] = value.decode()
        except UnicodeDecodeError:
            raise Unprocessable(f"{where} element {position} is not UTF-8 text") from None
    return out


def encode_response(
    results: Mapping[str, np.ndarray], outputs: Mapping[str, Output], request: v2.InferRequest, name: str, version: str
) -> Any:
    response = messages.ModelInferResponse(model_name=name, model_version=version, id=request.id or "")
    for output_name in request.outputs:
        values = results[output_name]
        spec = outputs[output_name]
        tensor = response.outputs.add(name=output_name, datatype=spec.datatype, shape=values.shape)
        for key, value in spec.parameters.items():
            set_parameter(tensor.parameters[key], value)
        response.raw_output_contents.append(v2.to_binary(values, spec.datatype))
    return response


def model_metadata(name: str, version: str, signature: Signature, outputs: Mapping[str, Output]) -> Any:
    """ModelMetadataResponse: one 1-D tensor per input column, as the JSON binding's metadata lists them."""
    described = v2.tensor_metadata(signature, outputs)
    response = messages.ModelMetadataResponse(name=name, versions=[version], platform="sklearn")
    for kind in ("inputs", "outputs"):
        for tensor in described[kind]:
            getattr(response, kind).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response
