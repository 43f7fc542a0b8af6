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
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
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
from .threads import HubBridge

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
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
HEALTH_PATH = "/v2/health/live"  # the guard's open scope: probes carry no credentials
# grpc.health.v1 service names: "" and the inference service answer readiness (the model is loaded);
# "liveness" answers whether the process serves at all, so a liveness probe never restarts a pod whose
# model is still loading.
READINESS_SERVICES = frozenset({"", messages.INFERENCE_SERVICE, "readiness"})
LIVENESS_SERVICE = "liveness"
_SERVING, _NOT_SERVING, _SERVICE_UNKNOWN = 1, 2, 3
# A Watch stream holds one of the worker's concurrent calls for as long as it is open: at most this share of
# them may be Watch streams, so watchers can never starve predictions. How often an open stream looks again
# (readiness has no notification; a change reaches the watcher within this, a stop too).
WATCHERS_SHARE = 4
WATCH_POLL_S = 0.5

AccessLog = Callable[..., None]
Scope = Callable[[Any], str]


class TooManyWatchers(ClientError, status=429):
    """A Watch past this worker's share of streams (RESOURCE_EXHAUSTED)."""


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
        bridge: HubBridge | None = None,
    ) -> None:
        self.holder = holder
        # In a gevent worker the calls arrive on gRPC's native threads and their handlers run in the hub.
        self.bridge = bridge
        self.settings = settings
        self.guard = guard
        self.request_metrics = request_metrics
        self.access = access
        self.stopping = threading.Event()  # set when the worker stops serving gRPC: open Watch streams end
        self.max_watchers = max(1, settings.worker_connections // WATCHERS_SHARE)
        self._watchers = 0
        self._watchers_lock = threading.Lock()

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
        status = self._health(request.service)
        if status is None:
            raise NotFound(f"unknown health service {request.service!r}; known: '', 'readiness', 'liveness'")
        return messages.HealthCheckResponse(status=status)

    def health_watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """The standard's Watch: the status at once, then each change. An unknown service is SERVICE_UNKNOWN,
        not an error (it may be served later). When the worker stops, NOT_SERVING and the end of the stream,
        so a watcher moves away at once instead of holding the worker's drain to its graceful timeout."""
        with self._watchers_lock:
            if self._watchers >= self.max_watchers:
                raise TooManyWatchers(
                    f"this worker already streams {self._watchers} health watches, its most "
                    f"(MODEL_SERVER_WORKER_CONNECTIONS / {WATCHERS_SHARE}); use Check, or watch again later"
                )
            self._watchers += 1
        gone = threading.Event()
        # Called on gRPC's own thread when the client goes: in a gevent worker, gevent's event is set in the hub.
        context.add_callback(self.bridge.threadsafe(gone.set) if self.bridge else gone.set)
        try:
            sent = None
            while not gone.is_set():
                stopping = self.stopping.is_set()
                status = _NOT_SERVING if stopping else self._health(request.service) or _SERVICE_UNKNOWN
                if status != sent:
                    yield messages.HealthCheckResponse(status=status)
                    sent = status
                if stopping:
                    return
                gone.wait(WATCH_POLL_S)
        finally:
            with self._watchers_lock:
                self._watchers -= 1

    def _health(self, service: str) -> int | None:
        """SERVING or NOT_SERVING for a service name the health service knows; None for any other."""
        if service == LIVENESS_SERVICE:
            return _SERVING
        if service in READINESS_SERVICES:
            return _SERVING if self.holder.ready() else _NOT_SERVING
        return None

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
        streams = {"Watch": (self.health_watch, open_scope)}
        return [
            self._generic(messages.INFERENCE_SERVICE, inference),
            self._generic(messages.HEALTH_SERVICE, health, streams),
        ]

    def _generic(
        self,
        service: str,
        table: Mapping[str, tuple[Callable[..., Any], Scope]],
        streams: Mapping[str, tuple[Callable[..., Iterator[Any]], Scope]] | None = None,
    ) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, (request_class, response_class) in messages.methods(service).items():
            route = f"/{service}/{name}"
            if streams and name in streams:
                stream, scope = streams[name]
                streaming = self._guarded_stream(route, stream, scope)
                handlers[name] = grpc.unary_stream_rpc_method_handler(
                    self.bridge.stream(streaming) if self.bridge else streaming,
                    request_deserializer=_deserializer(request_class),
                    response_serializer=response_class.SerializeToString,
                )
                continue
            handle, scope = table[name]
            unary = self._guarded(route, handle, scope, response_class)
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self.bridge.unary(unary) if self.bridge else unary,
                request_deserializer=_deserializer(request_class),
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service, handlers)

    def _guarded(
        self, route: str, handle: Callable[[Any, grpc.ServicerContext], Any], scope: Scope, empty: Any
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            opened = _Call(context)
            response = empty()
            try:
                opened.admit(self, request, scope)
                response = handle(request, context)
            except Exception as exc:  # a ClientError worded for the client by _Call.refused; the rest logged
                opened.refused(exc, route)
            self._account(route, opened, response)
            return response

        return call

    def _guarded_stream(
        self, route: str, stream: Callable[[Any, grpc.ServicerContext], Iterator[Any]], scope: Scope
    ) -> Callable[[Any, grpc.ServicerContext], Generator[Any, None, None]]:
        """The same guard, refusals and request ID as a unary call; counted and logged once, when the stream's
        first message is ready (its latency) or it is refused."""

        def call(request: Any, context: grpc.ServicerContext) -> Generator[Any, None, None]:
            opened = _Call(context)
            first, rest = None, iter(())
            try:
                opened.admit(self, request, scope)
                rest = stream(request, context)
                first = next(rest, None)
            except Exception as exc:  # as in _guarded
                opened.refused(exc, route)
            self._account(route, opened, first)
            if first is not None:
                yield first
                yield from rest

        return call

    def _account(self, route: str, opened: _Call, response: Any) -> None:
        """Request ID, metrics and the access log of a call answered (``response``) or refused."""
        opened.context.set_trailing_metadata((("x-request-id", opened.rid),))
        seconds = time.perf_counter() - opened.started
        self.request_metrics.record(route, "POST", str(opened.status), seconds)
        if self.access is not None:
            size = response.ByteSize() if opened.status == 200 and response is not None else 0
            self.access(
                route, opened.status, seconds, size, opened.context.peer(), opened.rid,
                opened.metadata.get("user-agent"), opened.caller, opened.model,
            )  # fmt: skip


class _Call:
    """One call's bookkeeping: its metadata, request ID, caller and outcome."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.started = time.perf_counter()
        self.context = context
        # Binary metadata (keys ending -bin) is bytes; the keys read here are text.
        self.metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        self.rid = valid_request_id(self.metadata.get("x-request-id", ""))
        self.caller, self.model, self.status = "anonymous", "", 200

    def admit(self, service: Service, request: Any, scope: Scope) -> None:
        """The guard's verdict on the caller; a ClientError when the request is malformed or refused."""
        if isinstance(request, Malformed):
            raise BadRequest(f"the request is not a valid {request.message_name} message")
        who, self.model = service.guard.check(
            scope(request),
            self.metadata.get("authorization"),
            lambda: peer_certificate(self.context),
            service.holder.name,
        )
        self.caller = who.id if who is not None else "anonymous"

    def refused(self, exc: Exception, route: str) -> None:
        """A ClientError as the gRPC status of its HTTP status, with REST's message; anything else INTERNAL."""
        if isinstance(exc, ClientError):
            self.status = exc.status
            if exc.status in (401, 403):
                self.caller, self.model = exc.caller, exc.model
            self.context.set_code(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL))
            self.context.set_details(exc.message)
            return
        log.error("unhandled error on %s", route, exc_info=exc)
        self.status = 500
        self.context.set_code(grpc.StatusCode.INTERNAL)
        self.context.set_details("internal server error")  # details go to the log, never to the client


def _deserializer(request_class: Any) -> Callable[[bytes], Any]:
    name = request_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return request_class.FromString(data)
        except DecodeError:
            return Malformed(name)

    return parse
