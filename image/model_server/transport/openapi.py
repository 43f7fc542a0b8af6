"""The OpenAPI 3 description served at ``/openapi.json``. A test holds it to the app's real routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.signature import Signature

if TYPE_CHECKING:
    from ..core.model import Served

_ERROR = {"$ref": "#/components/schemas/Error"}


def _path_param(name: str, example: str) -> dict[str, Any]:
    # Names and versions never hold ':' or '/' (routes.ModelNameConverter).
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[^/:]+$"},
        "example": example,
    }


_SCALAR = {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
_NULLABLE_SCALAR = {**_SCALAR, "nullable": True}


def examples(signature: Signature | None) -> dict[str, Any]:
    """Request examples built from the model's signature (each column's typical value)."""
    if signature is None:
        row: list[Any] = [0.0]
        v2_inputs = [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": row}]
    else:
        row = signature.example_row()
        v2_inputs = [
            {"name": column.name, "shape": [1], "datatype": column.datatype, "data": [column.example]}
            for column in signature.columns
        ]
    return {
        "V1Request": {"instances": [row]},
        "InferenceRequest": {"id": "1", "inputs": v2_inputs},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request",
        404: "Unknown model or version",
        413: "Body or row count over the limit",
        415: "Unsupported Content-Type",
        422: "Well-formed request the model cannot take (a missing or unknown column, a wrong datatype, "
        "a null where the column is not nullable, a non-finite value, a value the model refuses)",
        503: "Model not ready",
    }
    return {str(code): _json(_ERROR, meaning[code]) for code in codes}


def _get(
    summary: str, schema: dict[str, Any], *errors: int, params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": _json(schema, "OK"), **_errors(*errors)}}
    if params:
        operation["parameters"] = params
    return {"get": operation}


def _post(
    summary: str,
    request: dict[str, Any],
    response: dict[str, Any],
    params: list[dict[str, Any]] | None,
    example: dict[str, Any],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": request, "example": example}}},
        "responses": {"200": _json(response, "Predictions"), **_errors(400, 404, 413, 415, 422, 503)},
    }
    if params:
        operation["parameters"] = params
    return {"post": operation}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}, "error": {"type": "string"}},
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
    },
    "TensorData": {"type": "array", "items": {}, "description": "flat row-major or nested; null is a missing value"},
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {
                "type": "string",
                "enum": [
                    "INT8",
                    "INT16",
                    "INT32",
                    "INT64",
                    "UINT8",
                    "UINT16",
                    "UINT32",
                    "UINT64",
                    "FP16",
                    "FP32",
                    "FP64",
                    "BOOL",
                    "BYTES",
                ],
            },
            "parameters": {"type": "object"},
            "data": _ref("TensorData"),
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {"type": "array", "items": _ref("RequestOutput")},
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {"oneOf": [_SCALAR, {"type": "array", "items": {}}]}},
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _ref("ResponseOutput")},
        },
    },
    "V1Request": {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "oneOf": [
                        {"type": "array", "items": _NULLABLE_SCALAR},
                        {"type": "object", "additionalProperties": _NULLABLE_SCALAR},
                    ]
                },
            }
        },
    },
    "V1Response": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {"oneOf": [_SCALAR, {"type": "array", "items": {}}]}}},
    },
    "V1Explanations": {
        "type": "object",
        "required": ["explanations"],
        "properties": {
            "explanations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["explains", "value", "baseline", "contributions"],
                    "properties": {
                        "explains": {"type": "string"},
                        "value": {"type": "number"},
                        "baseline": {"type": "number"},
                        "contributions": {"type": "object", "additionalProperties": {"type": "number"}},
                    },
                },
            }
        },
    },
    "Judgement": {
        "type": "object",
        "description": "This pod's recent prediction outcomes, across its workers: what a canary analysis compares",
        "required": ["name", "version", "requests", "errors", "error_ratio", "latency_seconds", "predictions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "sha256": {"type": "string"},
            "task": {"type": "string"},
            "host": {"type": "string"},
            "workers": {"type": "integer"},
            "window_seconds": {"type": "number"},
            "seconds_covered": {"type": "number"},
            "requests": {"type": "integer"},
            "errors": {"type": "integer", "description": "5xx answers (the server's or the model's failures)"},
            "error_ratio": {"type": "number"},
            "latency_seconds": {"type": "object", "additionalProperties": {"type": "number", "nullable": True}},
            "latency_percentiles": {"type": "array", "items": {"type": "number"}},
            "predictions": {
                "type": "object",
                "description": "percentiles 0-100 of predicted values (regressors), or counts per class",
                "properties": {
                    "kind": {"type": "string", "enum": ["percentiles", "classes"]},
                    "rows": {"type": "integer"},
                    "percentiles": {"type": "array", "items": {"type": "number"}},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": {"type": "string"}}},
    },
}


def document(version: str, model_name: str = "", served: Served | None = None) -> dict[str, Any]:
    """The whole OpenAPI document for this server version, with examples for the served model."""
    name = _path_param("name", model_name or "model")
    version_param = _path_param("version", served.version if served is not None else "1")
    example = examples(served.runner.signature if served is not None else None)
    v1, v2 = example["V1Request"], example["InferenceRequest"]
    v2_infer = _post("V2 inference", _ref("InferenceRequest"), _ref("InferenceResponse"), [name], v2)
    v2_infer_version = _post(
        "V2 inference, one version", _ref("InferenceRequest"), _ref("InferenceResponse"), [name, version_param], v2
    )
    paths = {
        "/v2": _get("Server metadata", _ref("ServerMetadata")),
        "/v2/health/live": _get("Liveness", _ref("Live")),
        "/v2/health/ready": _get("Readiness: 200 when the model is loaded", _ref("Ready"), 503),
        "/v2/models/{name}": _get("Model metadata", _ref("ModelMetadata"), 404, 503, params=[name]),
        "/v2/models/{name}/versions/{version}": _get(
            "Model metadata, one version", _ref("ModelMetadata"), 404, 503, params=[name, version_param]
        ),
        "/v2/models/{name}/ready": _get("Model readiness", _ref("ModelReady"), 404, 503, params=[name]),
        "/v2/models/{name}/versions/{version}/ready": _get(
            "Model readiness, one version", _ref("ModelReady"), 404, 503, params=[name, version_param]
        ),
        "/v2/models/{name}/infer": v2_infer,
        "/v2/models/{name}/versions/{version}/infer": v2_infer_version,
        "/v2/models/{name}/judgement": _get(
            "Recent outcomes for a canary analysis (query: window, seconds, default 300)",
            _ref("Judgement"),
            400,
            404,
            503,
            params=[name],
        ),
        "/v1/models": _get("Models served (KServe V1)", _ref("ModelList")),
        "/v1/models/{name}": _get("Model readiness (KServe V1)", _ref("ModelReady"), 404, 503, params=[name]),
        "/v1/models/{name}:predict": _post("KServe V1 prediction", _ref("V1Request"), _ref("V1Response"), [name], v1),
        "/v1/models/{name}:explain": _post(
            "KServe V1 explanation: per-column contributions and a baseline per row (422 where unsupported)",
            _ref("V1Request"),
            _ref("V1Explanations"),
            [name],
            v1,
        ),
        "/predict": _post("V1 prediction for the served model", _ref("V1Request"), _ref("V1Response"), None, v1),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, aggregated over workers",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": _get("This document", {"type": "object"}),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "model-server",
            "version": version,
            "description": "scikit-learn model server (Open Inference Protocol V2 and KServe V1)",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m model_server.transport.openapi ARTIFACT_DIR``: the artifact's name, then example V1 and V2
    bodies, one per line (what scripts/serve prints as curl commands)."""
    import json
    import sys
    from pathlib import Path

    from ..core import artifact
    from ..core.signature import read

    argv = sys.argv[1:] if argv is None else argv
    metadata = artifact.read_metadata(Path(argv[0]))
    bodies = examples(read(metadata, argv[0]))
    print(metadata["name"])
    print(json.dumps(bodies["V1Request"]))
    print(json.dumps({"inputs": bodies["InferenceRequest"]["inputs"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
