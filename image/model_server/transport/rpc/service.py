"""The gRPC binding's handlers: inference.GRPCInferenceService and grpc.health.v1.Health.

Every call goes through what an HTTP request goes through, from the same objects: the guard (the bearer
token in the ``authorization`` metadata, or the mutual-TLS client certificate), the model holder, the
worker's prediction queue (a full queue sheds with UNAVAILABLE before the request is decoded), the request
counter and latency histogram (route: the gRPC method's path; status: the HTTP status the same outcome
gets over REST, so one error-ratio query covers both bindings), the access log, and request IDs
(``x-request-id`` metadata, echoed in the trailing metadata). A ClientError becomes the gRPC status of
its HTTP status, with the message REST sends in ``{"error": ...}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ... import __version__
from ...config import Settings
from ...core.model import ModelHolder
from ...errors import BadRequest, ClientError, NotFound, NotReady
from ...security.guard import Guard
from ..middleware import RequestMetrics, valid_request_id
from ..routes import SERVER_NAME
from . import codec, messages

log = logging.getLogger("model_server.transport.rpc")

# The gRPC status of each HTTP status a ClientError carries (and 500 for anything else).
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
HEALTH_PATH = "/v2/health/live"  # the guard's open scope: probes carry no credentials
# grpc.health.v1 service names: "" and the inference service answer readiness (the model is loaded);
# "liveness" answers whether the process serves at all, so a liveness probe never restarts a pod whose
# model is still loading.
READINESS_SERVICES = frozenset({"", messages.INFERENCE_SERVICE, "readiness"})
LIVENESS_SERVICE = "liveness"
_SERVING, _NOT_SERVING = 1, 2

AccessLog = Callable[..., None]


class Malformed:
    """What a request that is not a valid protobuf message decodes to: refused as INVALID_ARGUMENT (gRPC's own
    deserializer failure would be INTERNAL, a 5xx for what a client sent)."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def peer_certificate(context: grpc.ServicerContext) -> dict[str, Any] | None:
    """The mutual-TLS client certificate as ``ssl.getpeercert()`` shapes it (subject CN, DNS and URI names),
    for the guard's certificate callers; None without one."""
    # A list of PEM byte strings at run time (types-grpcio says bytes).
    pem: Any = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(pem[0])
    subject = tuple(
        (("commonName", str(attribute.value)),)
        for attribute in certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    )
    names: list[tuple[str, str]] = []
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names += [("DNS", name) for name in extension.get_values_for_type(x509.DNSName)]
        names += [("URI", name) for name in extension.get_values_for_type(x509.UniformResourceIdentifier)]
    return {"subject": subject, "subjectAltName": tuple(names)}


class Service:
    """The handlers of one worker, over the app's holder, guard and request metrics."""

    def __init__(
        self,
        holder: ModelHolder,
        settings: Settings,
        guard: Guard,
        request_metrics: RequestMetrics,
        access: AccessLog | None = None,
    ) -> None:
        self.holder = holder
        self.settings = settings
        self.guard = guard
        self.request_metrics = request_metrics
        self.access = access

    # ---- the handlers: (request, context) -> response; a ClientError for a refusal --------------------

    def server_live(self, request: Any, context: grpc.ServicerContext) -> Any:
        return messages.ServerLiveResponse(live=True)

    def server_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        return messages.ServerReadyResponse(ready=self.holder.ready())

    def model_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        # Triton's answer for a model that is unknown or not loaded: ready false, not an error status (what
        # tritonclient's is_model_ready returns as False).
        try:
            self.holder.require(request.name, request.version or None)
        except (NotFound, NotReady):
            return messages.ModelReadyResponse(ready=False)
        return messages.ModelReadyResponse(ready=True)

    def server_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return messages.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    def model_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        served = self.holder.require(request.name, request.version or None)
        runner = served.runner
        return codec.model_metadata(self.holder.name, served.version, runner.signature, runner.outputs)

    def model_infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        served = self.holder.require(request.model_name, request.model_version or None)
        if served.scheduler is not None:
            served.scheduler.admit()  # shed before decoding: a request that will be refused costs least
        runner = served.runner
        parsed = codec.parse_request(
            request,
            runner.signature,
            runner.outputs,
            served.default_outputs,
            self.settings.max_rows,
            runner.unavailable(),
        )
        results = served.predict(parsed.batch, parsed.outputs, "grpc")
        return codec.encode_response(results, runner.outputs, parsed, self.holder.name, served.version)

    def health_check(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.service == LIVENESS_SERVICE:
            return messages.HealthCheckResponse(status=_SERVING)
        if request.service in READINESS_SERVICES:
            return messages.HealthCheckResponse(status=_SERVING if self.holder.ready() else _NOT_SERVING)
        raise NotFound(f"unknown health service {request.service!r}; known: '', 'readiness', 'liveness'")

    # ---- what every call goes through ------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Both services' generic handlers, for grpc.server(handlers=...)."""
        open_scope = lambda request: HEALTH_PATH  # noqa: E731 - one-line scope functions, read as a table
        model_scope = lambda request: f"/v2/models/{request.name}"  # noqa: E731
        inference: dict[str, tuple[Callable[..., Any], Callable[[Any], str]]] = {
            "ServerLive": (self.server_live, open_scope),
            "ServerReady": (self.server_ready, open_scope),
            "ModelReady": (self.model_ready, model_scope),
            "ServerMetadata": (self.server_metadata, lambda request: "/v2"),
            "ModelMetadata": (self.model_metadata, model_scope),
            "ModelInfer": (self.model_infer, lambda request: f"/v2/models/{request.model_name}"),
        }
        health = {"Check": (self.health_check, open_scope)}
        return [self._generic(messages.INFERENCE_SERVICE, inference), self._generic(messages.HEALTH_SERVICE, health)]

    def _generic(
        self, service: str, table: Mapping[str, tuple[Callable[..., Any], Callable[[Any], str]]]
    ) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, (request_class, response_class) in messages.methods(service).items():
            handle, scope = table[name]
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(f"/{service}/{name}", handle, scope, response_class),
                request_deserializer=_deserializer(request_class),
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service, handlers)

    def _guarded(
        self, route: str, handle: Callable[[Any, grpc.ServicerContext], Any], scope: Callable[[Any], str], empty: Any
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            # Binary metadata (keys ending -bin) is bytes; the keys read here are text.
            metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
            rid = valid_request_id(metadata.get("x-request-id", ""))
            caller, model = "anonymous", ""
            response, status = empty(), 200
            try:
                if isinstance(request, Malformed):
                    raise BadRequest(f"the request is not a valid {request.message_name} message")
                who, model = self.guard.check(
                    scope(request), metadata.get("authorization"), lambda: peer_certificate(context), self.holder.name
                )
                caller = who.id if who is not None else "anonymous"
                response = handle(request, context)
            except ClientError as exc:
                status = exc.status
                if status in (401, 403):
                    caller, model = exc.caller, exc.model
                context.set_code(STATUS_CODES.get(status, grpc.StatusCode.INTERNAL))
                context.set_details(exc.message)
            except Exception:
                log.exception("unhandled error on %s", route)
                status = 500
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details("internal server error")  # details go to the log, never to the client
            context.set_trailing_metadata((("x-request-id", rid),))
            seconds = time.perf_counter() - started
            self.request_metrics.record(route, "POST", str(status), seconds)
            if self.access is not None:
                self.access(
                    route, status, seconds, response.ByteSize() if status == 200 else 0, context.peer(), rid,
                    metadata.get("user-agent"), caller, model,
                )  # fmt: skip
            return response

        return call


def _deserializer(request_class: Any) -> Callable[[bytes], Any]:
    name = request_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return request_class.FromString(data)
        except DecodeError:
            return Malformed(name)

    return parse
