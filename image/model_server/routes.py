"""Every HTTP route: Open Inference Protocol V2, KServe V1, health, metrics and the OpenAPI description.

The request path for a prediction, top to bottom: ``read_json`` -> ``v1``/``v2.parse_request``
(-> ``tensors``) -> ``ModelHolder.predict`` -> ``encode_response`` -> ``json_response``.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request
from werkzeug.routing import BaseConverter

from . import __version__, jsonbody, metrics, openapi, v1, v2
from .artifact import Artifact
from .config import Settings
from .errors import ClientError
from .model import ModelHolder

SERVER_NAME = "model-server"
EXTENSIONS = ["binary_tensor_data"]
_JSON_TYPES = ("", "application/json")


def read_json(allow_binary: bool = False) -> tuple[object, bytes]:
    """The decoded JSON body and, for the V2 binary extension, the raw bytes after it."""
    mimetype = request.mimetype
    header = request.headers.get(v2.BINARY_HEADER) if allow_binary else None
    if header is None and mimetype not in _JSON_TYPES and not mimetype.endswith("+json"):
        raise ClientError(415, f"Content-Type {mimetype!r} is not supported; send application/json")
    raw = request.get_data(cache=False)
    binary = b""
    if header is not None:
        if not header.isdigit() or int(header) > len(raw):
            raise ClientError(400, f"{v2.BINARY_HEADER} {header!r} must be a byte count within the body")
        raw, binary = raw[: int(header)], raw[int(header) :]
    return jsonbody.loads(raw), binary


def json_response(payload: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        mimetype="application/json",
    )


class ModelNameConverter(BaseConverter):
    """Model names and versions never contain ':' (training refuses them), so
    /v1/models/x:predict can only mean the predict route, whatever the method."""

    regex = "[^/:]+"


def register(app: Flask, holder: ModelHolder, settings: Settings) -> None:
    app.url_map.converters["model"] = ModelNameConverter
    max_rows = settings.max_rows

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
        current = holder.require(name, version)
        return json_response(
            {
                "name": holder.name,
                "versions": [current.version],
                "platform": "sklearn",
                **v2.tensor_metadata(current.feature_names),
                "parameters": {"feature_names": current.feature_names, "estimator": current.metadata.get("estimator")},
            }
        )

    @app.get("/v2/models/<model:name>/ready")
    @app.get("/v2/models/<model:name>/versions/<model:version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        holder.require(name, version)
        return json_response({"name": holder.name, "ready": True})

    @app.post("/v2/models/<model:name>/infer")
    @app.post("/v2/models/<model:name>/versions/<model:version>/infer")
    def infer(name: str, version: str | None = None) -> Response:
        current = holder.require(name, version)
        body, binary = read_json(allow_binary=True)
        parsed = v2.parse_request(body, binary, current.feature_names, max_rows)
        predictions = holder.predict(parsed.matrix, "v2")
        payload, binary_out = v2.encode_response(predictions, parsed, holder.name, current.version)
        if not binary_out:
            return json_response(payload)
        header = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(
            header + binary_out,
            mimetype="application/octet-stream",
            headers={v2.BINARY_HEADER: str(len(header))},
        )

    # ---- KServe V1 ----------------------------------------------------------------------
    @app.get("/v1/models")
    def list_models() -> Response:
        return json_response({"models": [holder.name] if holder.ready() else []})

    @app.get("/v1/models/<model:name>")
    def v1_model_ready(name: str) -> Response:
        holder.require(name)
        return json_response({"name": holder.name, "ready": True})

    @app.post("/v1/models/<model:name>:predict")
    def predict_v1(name: str) -> Response:
        current = holder.require(name)
        return _predict_v1(current)

    @app.post("/predict")
    def predict_alias() -> Response:
        return _predict_v1(holder.require(holder.name))

    def _predict_v1(current: Artifact) -> Response:
        body, _ = read_json()
        matrix = v1.parse_request(body, current.feature_names, max_rows)
        return json_response(v1.encode_response(holder.predict(matrix, "v1")))

    # ---- Operations -------------------------------------------------------------------
    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition(settings.metrics_dir)
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return json_response(openapi.document(__version__))
