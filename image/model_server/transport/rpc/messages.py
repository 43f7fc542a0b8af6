"""The gRPC binding's message classes, built from the checked-in descriptor set in a pool of their own.

A private pool, not protobuf's default one: a client library's generated ``inference`` messages
(tritonclient's grpc_service_pb2, KServe's grpc_predict_v2_pb2) register the same full names, and two
files defining one name in the default pool is an import error. The wire format is all they share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTORS = Path(__file__).with_name("descriptors.binpb")
INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"


def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


POOL = _pool()


def message(full_name: str) -> Any:
    """The class of message ``full_name`` (``inference.ModelInferRequest``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


def methods(service: str) -> dict[str, tuple[Any, Any]]:
    """Each method of ``service``: its name -> (request class, response class)."""
    found = POOL.FindServiceByName(service)
    return {
        method.name: (message(method.input_type.full_name), message(method.output_type.full_name))
        for method in found.methods
    }


ServerLiveResponse = message("inference.ServerLiveResponse")
ServerReadyResponse = message("inference.ServerReadyResponse")
ModelReadyResponse = message("inference.ModelReadyResponse")
ServerMetadataResponse = message("inference.ServerMetadataResponse")
ModelMetadataResponse = message("inference.ModelMetadataResponse")
ModelInferRequest = message("inference.ModelInferRequest")
ModelInferResponse = message("inference.ModelInferResponse")
InferParameter = message("inference.InferParameter")
HealthCheckResponse = message("grpc.health.v1.HealthCheckResponse")
