"""Every HTTP route: Open Inference Protocol V2, KServe V1, health, metrics and the OpenAPI description.

The request path for a prediction, top to bottom: ``fastpath.PredictionFastPath`` (or Flask, for the
same routes in tests and as the fallback) -> ``v1_handler``/``infer_handler``: ``decode_body`` ->
``v1``/``v2.parse_request`` (-> ``columns``: a checked Batch) -> ``ModelRunner.run`` (-> ``codecs``:
what the estimator takes; its methods) -> ``encode_response`` -> ``dumps``. This module is the HTTP
shell: the only one that turns a ClientError into a status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from .. import __version__, metrics
from ..config import Settings
from ..core import drift, explain, outcomes
from ..core.model import ModelHolder, Served
from ..errors import BadRequest, ClientError, UnsupportedMediaType
from . import jsonbody, openapi, v1, v2
from .admission import BodyBudget, request_body

SERVER_NAME = "model-server"
EXTENSIONS = ["binary_tensor_data"]
_JSON_TYPES = ("", "application/json")

# A prediction handler: (raw body, mimetype, V2 binary header, URL args) -> (body, headers).
Prediction = tuple[bytes, list[tuple[str, str]]]
Handler = Callable[[bytes, str, "str | None", Mapping[str, "str | None"]], Prediction]


def decode_body(raw: bytes, mimetype: str, binary_header: str | None) -> tuple[object, bytes]:
    """The decoded JSON body and, for the V2 binary extension (``binary_header`` set), the bytes after it."""
    if binary_header is None and mimetype not in _JSON_TYPES and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not supported; send application/json")
    binary = b""
    if binary_header is not None:
        if not binary_header.isdigit() or int(binary_header) > len(raw):
            raise BadRequest(f"{v2.BINARY_HEADER} {binary_header!r} must be a byte count within the body")
        raw, binary = raw[: int(binary_header)], raw[int(binary_header) :]
    return jsonbody.loads(raw), binary


def status_and_message(exc: BaseException) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """The status, ``{"error": ...}`` message and extra headers for ``exc``: the same from Flask and from
    the fast path."""
    if isinstance(exc, ClientError):
        return exc.status, exc.message, exc.headers
    if isinstance(exc, HTTPException):
        return exc.code or 500, f"{exc.name}: {exc.description}", ()
    return 500, "internal server error", ()  # details go to the log, never to the client


def dumps(payload: object) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(payload: object, status: int = 200) -> Response:
    return Response(dumps(payload), status=status, mimetype="application/json")


def _flask_prediction(
    handler: Handler, max_body_bytes: int, budget: BodyBudget, binary: bool = False, **args: str | None
) -> Response:
    """A prediction handler run from Flask (the fast path in fastpath.py runs the same handler)."""
    header = request.headers.get(v2.BINARY_HEADER) if binary else None
    with request_body(request.environ, max_body_bytes, budget) as raw:
        body, headers = handler(raw, request.mimetype, header, args)
    return Response(body, headers=headers)


class ModelNameConverter(BaseConverter):
    """Model names and versions never contain ':' (training refuses them), so
    /v1/models/x:predict can only mean the predict route, whatever the method."""

    regex = "[^/:]+"


def register(app: Flask, holder: ModelHolder, settings: Settings, budget: BodyBudget) -> dict[str, Handler]:
    """Add every route to ``app``; return the prediction handlers by endpoint, for the fast path."""
    app.url_map.converters["model"] = ModelNameConverter

    # ---- Open Inference Protocol (V2) -------------------------------------------------
    @app.get("/v2")
    def server_metadata() -> Response:
        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    @app.get("/v2/health/live")
    def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    def ready() -> Response:
        if holder.ready():
            return json_response({"ready": True})
        return json_response({"ready": False, "error": f"model is not ready: {holder.error}"}, 503)

    @app.get("/v2/models/<model:name>")
    @app.get("/v2/models/<model:name>/versions/<model:version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        return json_response(metadata(holder.name, holder.require(name, version)))

    @app.get("/v2/models/<model:name>/ready")
    @app.get("/v2/models/<model:name>/versions/<model:version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        holder.require(name, version)
        return json_response({"name": holder.name, "ready": True})

    def infer_handler(raw: bytes, mimetype: str, header: str | None, args: Mapping[str, str | None]) -> Prediction:
        served = holder.require(args["name"] or "", args.get("version"))
        runner = served.runner
        body, binary = decode_body(raw, mimetype, header)
        parsed = v2.parse_request(
            body,
            binary,
            runner.signature,
            runner.outputs,
            served.default_outputs,
            settings.max_rows,
            runner.unavailable(),
        )
        results = served.predict(parsed.batch, parsed.outputs, "v2")
        payload, binary_out = v2.encode_response(results, runner.outputs, parsed, holder.name, served.version)
        encoded = dumps(payload)
        if not binary_out and not parsed.binary_outputs:
            return encoded, [("Content-Type", "application/json")]
        return encoded + binary_out, [
            ("Content-Type", "application/octet-stream"),
            (v2.BINARY_HEADER, str(len(encoded))),
        ]

    @app.post("/v2/models/<model:name>/infer")
    @app.post("/v2/models/<model:name>/versions/<model:version>/infer")
    def infer(name: str, version: str | None = None) -> Response:
        return _flask_prediction(
            infer_handler, settings.max_body_bytes, budget, binary=True, name=name, version=version
        )

    @app.get("/v2/models/<model:name>/judgement")
    def judgement(name: str) -> Response:
        # What a canary analysis compares between two versions (core/outcomes.py, model_server/judge.py).
        served = holder.require(name)
        window = judgement_window(request.args.get("window"))
        summary = served.recent.summary(window, served.runner.description.classes) if served.recent else {}
        return json_response(
            {
                "name": holder.name,
                "version": served.version,
                "sha256": served.artifact.metadata.get("model_sha256", ""),
                "task": served.runner.description.task,
                **summary,
            }
        )

    # ---- KServe V1 ----------------------------------------------------------------------
    @app.get("/v1/models")
    def list_models() -> Response:
        return json_response({"models": [holder.name] if holder.ready() else []})

    @app.get("/v1/models/<model:name>")
    def v1_model_ready(name: str) -> Response:
        holder.require(name)
        return json_response({"name": holder.name, "ready": True})

    def v1_handler(raw: bytes, mimetype: str, header: str | None, args: Mapping[str, str | None]) -> Prediction:
        # /predict names no model: it is the loaded one.
        served = holder.require(args.get("name") or holder.name)
        runner = served.runner
        body, _ = decode_body(raw, mimetype, None)
        batch = v1.parse_request(body, runner.signature, settings.max_rows)
        output = served.default_outputs[0]
        values = served.predict(batch, (output,), "v1")[output]
        payload = v1.encode_response(values, runner.outputs[output].datatype)
        return dumps(payload), [("Content-Type", "application/json")]

    @app.post("/v1/models/<model:name>:predict")
    def predict_v1(name: str) -> Response:
        return _flask_prediction(v1_handler, settings.max_body_bytes, budget, name=name)

    def explain_handler(raw: bytes, mimetype: str, header: str | None, args: Mapping[str, str | None]) -> Prediction:
        served = holder.require(args["name"] or "")
        runner = served.runner
        body, _ = decode_body(raw, mimetype, None)
        batch = v1.parse_request(body, runner.signature, settings.max_rows)
        results = served.predict(batch, explain.OUTPUTS, "v1")
        explains = runner.outputs[explain.BASELINE].parameters["explains"]
        payload = v1.encode_explanations(
            results[explain.CONTRIBUTIONS], results[explain.BASELINE], runner.signature, explains
        )
        return dumps(payload), [("Content-Type", "application/json")]

    @app.post("/v1/models/<model:name>:explain")
    def explain_v1(name: str) -> Response:
        return _flask_prediction(explain_handler, settings.max_body_bytes, budget, name=name)

    @app.post("/predict")
    def predict_alias() -> Response:
        return _flask_prediction(v1_handler, settings.max_body_bytes, budget)

    # ---- Operations -------------------------------------------------------------------
    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        served = holder.served
        scores = None
        if served is not None and settings.drift_window:
            signature = served.artifact.signature
            if served.window is not None:
                served.window.publish_now()  # this worker's latest rows, not the last timer's

            def scores(counts: dict[tuple[str, str], float]) -> Iterable[tuple[str, float]]:
                return ((column, psi) for column, psi, _ in drift.scores(signature, counts))

        body, content_type = metrics.exposition(settings.metrics_dir, scores)
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        served = holder.served if holder.ready() else None
        return json_response(openapi.document(__version__, holder.name, served))

    return {
        "infer": infer_handler,
        "predict_v1": v1_handler,
        "predict_alias": v1_handler,
        "explain_v1": explain_handler,
    }


JUDGEMENT_MAX_WINDOW_S = 86400.0


def judgement_window(raw: str | None) -> float:
    """The ``window`` query argument: seconds, a positive number up to a day (default five minutes)."""
    if raw is None or raw == "":
        return outcomes.DEFAULT_WINDOW_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= JUDGEMENT_MAX_WINDOW_S:
        raise BadRequest(
            f"window={raw[:40]!r} must be a number of seconds above 0 and at most {JUDGEMENT_MAX_WINDOW_S:g}"
        )
    return seconds


def metadata(name: str, served: Served) -> dict[str, object]:
    """V2 model metadata: every input column and output with datatype and shape, classes, task."""
    runner = served.runner
    description = runner.description
    parameters: dict[str, object] = {
        "task": description.task,
        "estimator": description.estimator,
        "default_outputs": list(served.default_outputs),
        "batching": served.batching,
        "feature_names": list(runner.signature.names),
    }
    if description.classes is not None:
        parameters["classes"] = list(description.classes)
    matrix = v2.matrix_input(runner.signature)
    if matrix is not None:
        parameters["matrix_input"] = matrix
    return {
        "name": name,
        "versions": [served.version],
        "platform": "sklearn",
        **v2.tensor_metadata(runner.signature, runner.outputs),
        "parameters": parameters,
    }
