"""Calling the server's own gRPC services with its own message classes: what the smoke check (the chart's
`helm test`) and the tests use. Clients bring their own stubs (tritonclient's, KServe's, MLServer's); this is
the one the image carries, so a pod with nothing but the image can check the gRPC port end to end."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc

from .. import v2
from . import codec, messages

INFER = "/inference.GRPCInferenceService/ModelInfer"
HEALTH = "/grpc.health.v1.Health/Check"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"


class Method:
    """One method of the server's services on ``channel``; ``path`` is /package.Service/Method."""

    def __init__(self, channel: grpc.Channel, path: str) -> None:
        service, method = path.strip("/").rsplit("/", 1)
        self.request_class, response_class = messages.methods(service)[method]
        self.stub: grpc.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
        )
        # Bytes sent as they are: a message that may not even parse (what the refusal tests send).
        self.raw_stub: grpc.UnaryUnaryMultiCallable[bytes, Any] = channel.unary_unary(
            path, request_serializer=lambda b: b, response_deserializer=response_class.FromString
        )

    def __call__(
        self,
        request: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        raw: bytes | None = None,
        timeout: float = 10.0,
    ) -> tuple[Any, dict[str, Any]]:
        """(response, trailing metadata as a dict); grpc.RpcError on a refusal."""
        sent = tuple(metadata)
        if raw is not None:
            response, call = self.raw_stub.with_call(raw, metadata=sent, timeout=timeout)
        else:
            response, call = self.stub.with_call(request or self.request_class(), metadata=sent, timeout=timeout)
        return response, dict(call.trailing_metadata() or ())


def infer_request(
    name: str, inputs: Sequence[dict[str, Any]], rows: Sequence[Sequence[Any]], outputs: Sequence[str] = ()
) -> Any:
    """A ModelInferRequest of ``rows`` (one column per ``inputs`` entry of the model's metadata) in the typed
    ``contents`` fields; a missing float is NaN, as the protocol's typed fields have no null."""
    request = messages.ModelInferRequest(model_name=name)
    for index, tensor in enumerate(inputs):
        datatype = tensor["datatype"]
        column = [row[index] for row in rows]
        if None in column:
            if datatype not in ("FP32", "FP64"):
                raise ValueError(f"input {tensor['name']} ({datatype}) has a null, which its typed field cannot carry")
            column = [math.nan if value is None else value for value in column]
        sent = request.inputs.add(name=tensor["name"], datatype=datatype, shape=[len(rows)])
        field, _ = codec.CONTENTS[datatype]
        getattr(sent.contents, field).extend(value.encode() if datatype == "BYTES" else value for value in column)
    for output in outputs:
        request.outputs.add(name=output)
    return request


def outputs(response: Any) -> dict[str, list[Any]]:
    """Each output of a ModelInferResponse (raw_output_contents) as a flat list of Python values."""
    return {
        tensor.name: v2.from_binary(raw, tensor.datatype, list(tensor.shape), f"output '{tensor.name}'").tolist()
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
