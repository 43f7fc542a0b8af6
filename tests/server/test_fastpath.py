"""The WSGI fast path answers exactly as the Flask views for the same routes would, and skips Flask."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from model_server.transport import fastpath
from model_server.transport.app import create_app
from model_server.transport.middleware import Observability
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app

from .conftest import ROWS, make_settings
from .test_routes import JSON, v2_request

BINARY_ROWS = np.asarray(ROWS, dtype="<f8")
BINARY_JSON = orjson.dumps(
    {
        "inputs": [{"name": "input-0", "shape": [3, 10], "datatype": "FP64", "parameters": {"binary_data_size": 240}}],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
    }
)
CASES = [
    ("/predict", orjson.dumps({"instances": ROWS.tolist()}), JSON),
    ("/v1/models/diabetes:predict", orjson.dumps({"instances": ROWS.tolist()}), JSON),
    ("/v2/models/diabetes/infer", orjson.dumps(v2_request(ROWS, id="r-1")), JSON),
    ("/v2/models/diabetes/versions/1/infer", orjson.dumps(v2_request(ROWS)), JSON),
    (
        "/v2/models/diabetes/infer",
        BINARY_JSON + BINARY_ROWS.tobytes(),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(BINARY_JSON))},
    ),
    ("/predict", b"{not json", JSON),
    ("/predict", b'{"instances": [[1, 1], "x":1}', JSON),
    ("/predict", b'{"instances": [[1]]}', {"Content-Type": "text/plain"}),
    ("/predict", orjson.dumps({"instances": [[0.1] * 10] * 101}), JSON),
    ("/predict", b" " * 70000, JSON),
    ("/v1/models/other:predict", b"{}", JSON),
    ("/v2/models/diabetes/versions/9/infer", orjson.dumps(v2_request(ROWS)), JSON),
    ("/v2/models/diabetes/infer", b"{}", {**JSON, "Inference-Header-Content-Length": "99"}),
    ("/v2/models/diabetes/infer", b'{"inputs": [{"name": "x"}]}', {"Content-Type": "application/json; charset=utf-8"}),
]


@pytest.fixture
def stacks(artifact_dir):
    """The app as served (fast path in front) and the same app with the fast path taken out."""
    app = create_app(make_settings(artifact_dir, MODEL_SERVER_MAX_ROWS="100", MODEL_SERVER_MAX_BODY_BYTES="65536"))
    flask_calls = []
    app.before_request(lambda: flask_calls.append(1))
    # The Flask app the fast path stands in front of, behind the same middleware.
    flask_only = Observability(app.extensions[fastpath.EXTENSION].app)
    return Client(app.wsgi_app), Client(flask_only), flask_calls


@pytest.mark.parametrize(("path", "body", "headers"), CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_fast_path_answers_as_flask_does(stacks, path, body, headers):
    fast, flask_only, flask_calls = stacks
    headers = {**headers, "X-Request-ID": "same-id"}
    got = fast.post(path, data=body, headers=headers)
    assert flask_calls == [], "the prediction was answered without entering Flask"
    want = flask_only.post(path, data=body, headers=headers)
    assert flask_calls == [1]
    assert got.status == want.status
    assert got.get_data() == want.get_data()
    for header in ("Content-Type", "Content-Length", "X-Request-ID", "Inference-Header-Content-Length"):
        assert got.headers.get(header) == want.headers.get(header), header


PREDICTION = orjson.dumps({"instances": ROWS.tolist()})
CHUNKED = {"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": None}
# WSGI environs as servers hand them over, past what the test client would send or correct: how the
# body's length is given (or not), and whether the server ends the stream itself (gunicorn does).
FRAMING = {
    "non-numeric Content-Length": (PREDICTION, {"CONTENT_LENGTH": "twelve"}, 400),  # read as 0: no body
    "negative Content-Length": (PREDICTION, {"CONTENT_LENGTH": "-5"}, 400),  # read as 0: no body
    "chunked, stream ended by the server": (PREDICTION, {**CHUNKED, "wsgi.input_terminated": True}, 200),
    "chunked, stream not ended by the server": (PREDICTION, CHUNKED, 400),  # WSGI: no body to read
    "chunked past the body limit": (b" " * 70000, {**CHUNKED, "wsgi.input_terminated": True}, 413),
    "chunked with a Content-Length": (PREDICTION, {"CONTENT_LENGTH": "5", "HTTP_TRANSFER_ENCODING": "chunked"}, 400),
    "body shorter than its Content-Length": (PREDICTION, {"CONTENT_LENGTH": str(len(PREDICTION) + 10)}, 400),
    "Content-Length past the body limit": (PREDICTION, {"CONTENT_LENGTH": "70000"}, 413),
}


def _environ(body: bytes, overrides: dict[str, object]) -> dict[str, object]:
    builder = EnvironBuilder(path="/predict", method="POST", data=body, headers={**JSON, "X-Request-ID": "same-id"})
    out = builder.get_environ()
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("body", "overrides", "status"), FRAMING.values(), ids=FRAMING.keys())
def test_fast_path_reads_bodies_as_flask_does(stacks, body, overrides, status):
    fast, flask_only, flask_calls = stacks
    got_body, got_status, got_headers = run_wsgi_app(fast.application, _environ(body, overrides), buffered=True)
    assert flask_calls == [], "the prediction was answered without entering Flask"
    want_body, want_status, want_headers = run_wsgi_app(
        flask_only.application, _environ(body, overrides), buffered=True
    )
    assert flask_calls == [1]
    assert int(got_status[:3]) == status
    assert (got_status, b"".join(got_body)) == (want_status, b"".join(want_body))
    for header in ("Content-Type", "Content-Length", "X-Request-ID"):
        assert got_headers.get(header) == want_headers.get(header), header


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/predict", 405),
        ("PUT", "/v2/models/diabetes/infer", 405),
        ("POST", "/v2/health/live", 405),
        ("POST", "/nowhere", 404),
        ("POST", "/v1/models", 405),
    ],
)
def test_everything_else_still_goes_to_flask(stacks, method, path, status):
    fast, _, _ = stacks
    response = fast.open(path, method=method)
    assert response.status_code == status
    assert "error" in response.get_json()
    # Routing errors are raised before Flask's before_request hooks; the JSON shape proves Flask answered.
    assert response.headers["Content-Type"] == "application/json"


class _Wire:
    """A socket stand-in that hands gunicorn's parser the raw request bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def _gunicorn_request(raw: bytes):
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    return next(RequestParser(Config(), _Wire(raw), ("127.0.0.1", 1)))


def _raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("path", "body", "headers"), CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_the_workers_direct_door_answers_as_flask_does(stacks, path, body, headers):
    """What the gevent worker sends for a prediction it answers from gunicorn's parsed head, without WSGI."""
    fast, flask_only, _ = stacks
    door = fast.application.app.app  # Observability -> Guarded -> PredictionFastPath
    headers = {**headers, "X-Request-ID": "same-id"}
    fast.post(path, data=body, headers=headers)  # the first request to a path is matched through WSGI
    answer = door.direct(_gunicorn_request(_raw_request(path, body, headers)), keep_alive=True)
    assert answer is not None
    status, got_headers, got_body = _split_response(answer.data)
    want = flask_only.post(path, data=body, headers=headers)
    assert (status, got_body) == (want.status_code, want.get_data())
    for header in ("Content-Type", "Content-Length", "X-Request-ID", "Inference-Header-Content-Length"):
        assert got_headers.get(header) == want.headers.get(header), header
    assert got_headers["Connection"] == ("close" if answer.close else "keep-alive")
    assert answer.close == (len(body) > 65536)  # only a body refused unread (over the limit) closes it
    assert (answer.status, answer.request_id, answer.body_bytes) == (status, "same-id", len(got_body))


def test_the_direct_door_leaves_what_it_does_not_take_to_wsgi(stacks):
    fast, _, _ = stacks
    door = fast.application.app.app
    body = orjson.dumps({"instances": ROWS.tolist()})
    fast.post("/predict", data=body, headers=JSON)
    assert door.direct(_gunicorn_request(_raw_request("/predict", body, JSON)), keep_alive=False).close
    for raw in (
        _raw_request("/v1/models/diabetes:predict", body, JSON),  # not matched through WSGI yet
        _raw_request("/predict", body, {**JSON, "Expect": "100-continue"}),  # WSGI sends the 100 Continue
        _raw_request("/%70redict", body, JSON),  # percent-encoded: its PATH_INFO differs from the raw path
        _raw_request("/predict", body, JSON).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        assert door.direct(_gunicorn_request(raw), keep_alive=True) is None, raw[:40]
