"""Every route and every error status, through the Flask test client."""

from pathlib import Path

import numpy as np
import orjson
import pytest
from model_server.transport.app import create_app
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROWS, make_settings

JSON = {"Content-Type": "application/json"}


def post(client, url, body, headers=JSON):
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    return client.post(url, data=data, headers=headers)


def v2_request(rows, **extra):
    rows = np.asarray(rows)
    return {
        "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}],
        **extra,
    }


def test_server_metadata_and_health(client):
    meta = client.get("/v2").get_json()
    assert meta["name"] == "model-server"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


@pytest.mark.parametrize("url", ["/v2/models/diabetes", "/v2/models/diabetes/versions/1"])
def test_model_metadata_describes_tensors(client, url):
    meta = client.get(url).get_json()
    assert meta["name"] == "diabetes"
    assert meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]][:3] == ["age", "sex", "bmi"]
    assert {(i["datatype"], tuple(i["shape"]), i["parameters"]["nullable"]) for i in meta["inputs"]} == {
        ("FP64", (-1,), False)
    }
    assert meta["outputs"][0] == {"name": "predict", "datatype": "FP64", "shape": [-1]}
    assert [o["name"] for o in meta["outputs"][1:]] == ["contributions", "baseline"]
    parameters = meta["parameters"]
    assert parameters["matrix_input"] == {"name": "input-0", "datatype": "FP64", "shape": [-1, 10]}
    assert (parameters["task"], parameters["estimator"]) == ("regression", "LinearRegression")
    assert parameters["default_outputs"] == ["predict"]
    assert parameters["feature_names"][0] == "age"


@pytest.mark.parametrize(
    "url", ["/v2/models/diabetes/ready", "/v2/models/diabetes/versions/1/ready", "/v1/models/diabetes"]
)
def test_model_ready(client, url):
    assert client.get(url).get_json() == {"name": "diabetes", "ready": True}


def test_v1_model_list(client):
    assert client.get("/v1/models").get_json() == {"models": ["diabetes"]}


@pytest.mark.parametrize("url", ["/v1/models/diabetes:predict", "/predict"])
def test_v1_predictions_equal_in_process_predict(client, served, url):
    response = post(client, url, {"instances": ROWS.tolist()})
    assert response.status_code == 200
    np.testing.assert_allclose(response.get_json()["predictions"], served.model.predict(ROWS), rtol=0, atol=0)


def test_v1_rows_keyed_by_feature_name(client, served):
    rows = [dict(zip(served.signature.names, row, strict=True)) for row in ROWS.tolist()]
    response = post(client, "/v1/models/diabetes:predict", {"instances": rows})
    np.testing.assert_array_equal(response.get_json()["predictions"], served.model.predict(ROWS))


@pytest.mark.parametrize("url", ["/v2/models/diabetes/infer", "/v2/models/diabetes/versions/1/infer"])
def test_v2_predictions_equal_in_process_predict(client, served, url):
    response = post(client, url, v2_request(ROWS, id="abc", parameters={"x": 1}, outputs=[{"name": "predict"}]))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == "abc"
    assert (body["model_name"], body["model_version"]) == ("diabetes", "1")
    np.testing.assert_array_equal(body["outputs"][0]["data"], served.model.predict(ROWS))


def test_v2_binary_request_and_response(client, served):
    raw = ROWS.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input-0", "shape": [3, 10], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        }
    )
    response = client.post(
        "/v2/models/diabetes/infer",
        data=header + raw,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.data
    split = int(response.headers["Inference-Header-Content-Length"])
    meta = orjson.loads(response.data[:split])
    values = np.frombuffer(response.data[split:], "<f8")
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(values, served.model.predict(ROWS.astype(np.float32).astype(np.float64)))


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/v2/health/live", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    generated = client.get("/v2/health/live", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert len(generated) == 32
    assert generated != "bad id with spaces"


@pytest.mark.parametrize(
    ("method", "url", "body", "headers", "status", "fragment"),
    [
        ("post", "/predict", b"{not json", JSON, 400, "malformed JSON"),
        ("post", "/predict", b'{"instances": [[NaN]]}', JSON, 422, "the model expects 10"),
        ("post", "/predict", b'{"instances": [[Infinity]]}', JSON, 400, "malformed JSON"),
        ("post", "/predict", b"\xff\xfe{}", JSON, 400, "malformed JSON"),
        ("post", "/predict", b'{"instances": [[1]]}', {"Content-Type": "text/plain"}, 415, "text/plain"),
        ("post", "/predict", {"instances": [[1, 2]]}, JSON, 422, "expects 10"),
        ("post", "/predict", {"instances": [[0.1] * 10] * 101}, JSON, 413, "limit is 100"),
        ("post", "/predict", b" " * 70000, JSON, 413, "Too Large"),
        ("post", "/v1/models/other:predict", {"instances": [[0.1] * 10]}, JSON, 404, "'other' is not served"),
        ("post", "/v2/models/other/infer", v2_request(ROWS), JSON, 404, "'other' is not served"),
        ("post", "/v2/models/diabetes/versions/9/infer", v2_request(ROWS), JSON, 404, "no version '9'"),
        ("get", "/v2/models/other", None, None, 404, "not served"),
        ("get", "/nowhere", None, None, 404, "Not Found"),
        ("get", "/predict", None, None, 405, "Method Not Allowed"),
        ("delete", "/v2/models/diabetes/infer", None, None, 405, "Method Not Allowed"),
        (
            "post",
            "/v2/models/diabetes/infer",
            b'{"inputs": []}',
            {"Content-Type": "application/octet-stream"},
            415,
            "octet-stream",
        ),
        (
            "post",
            "/v2/models/diabetes/infer",
            b"{}",
            {**JSON, "Inference-Header-Content-Length": "99"},
            400,
            "byte count",
        ),
        ("post", "/predict", {"instances": [[0.1] * 10, [1e308] * 10]}, JSON, 422, "row(s) 1 give a non-finite"),
        ("post", "/v2/models/diabetes/infer", v2_request([[-1e308] * 10]), JSON, 422, "row(s) 0 give a non-finite"),
    ],
)
def test_errors_are_json_with_the_right_status(client, method, url, body, headers, status, fragment):
    data = orjson.dumps(body) if isinstance(body, dict) else body
    response = getattr(client, method)(url, data=data, headers=headers)
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    assert fragment in response.get_json()["error"]


def test_bad_artifact_keeps_health_up_and_readiness_down(tmp_path: Path, artifact_dir: Path):
    app = create_app(make_settings(tmp_path / "missing"))
    client = app.test_client()
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert "does not exist" in ready.get_json()["error"]
    assert client.get("/v1/models").get_json() == {"models": []}
    response = post(client, "/predict", {"instances": [[0.1] * 10]})
    assert response.status_code == 503
    assert "not ready" in response.get_json()["error"]


def test_model_appearing_later_is_picked_up(tmp_path: Path, artifact_dir: Path):
    target = tmp_path / "model"
    app = create_app(make_settings(target, MODEL_SERVER_RELOAD_INTERVAL="1"))
    client = app.test_client()
    assert client.get("/v2/health/ready").status_code == 503
    target.mkdir()
    for item in artifact_dir.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    app.extensions["model_server"]._last_attempt = float("-inf")  # skip the retry interval
    assert client.get("/v2/health/ready").status_code == 200
    assert post(client, "/predict", {"instances": [[0.1] * 10]}).status_code == 200


def test_unexpected_errors_become_a_bare_500(client, monkeypatch):
    holder = client.application.extensions["model_server"]

    def explode(*_args):
        raise RuntimeError("secret internals")

    monkeypatch.setitem(holder.served.runner.methods, "predict", explode)
    response = post(client, "/predict", {"instances": [[0.1] * 10]})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error"}


def scrape(client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by series; the test process shares one registry, so tests compare scrapes."""
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(metric: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return metric, frozenset(labels.items())


def test_metrics_count_requests_and_rows(client):
    before = scrape(client)
    post(client, "/predict", {"instances": [[0.1] * 10] * 3})
    after = scrape(client)
    counted = {
        series("model_server_requests_total", method="POST", route="/predict", status="200"): 1,
        series("model_server_request_duration_seconds_count", route="/predict"): 1,
        series("model_server_predicted_rows_total", protocol="v1"): 3,
    }
    for key, increase in counted.items():
        assert after[key] - before.get(key, 0.0) == increase, key
    assert after[series("model_server_model_info", name="diabetes", version="1")] == 1.0


def test_metric_labels_stay_bounded_whatever_the_client_sends(client):
    client.get("/metrics")  # its own series exist before the first scrape below
    before = scrape(client)
    for n in range(5):
        client.open(f"/v2/models/x{n}" * 5, method=f"BREW{n}")
        client.get(f"/no/such/path/1234{n}")
        client.open("/predict", method=f"BREW{n}")
    after = scrape(client)
    requests_total = {key: value for key, value in after.items() if key[0] == "model_server_requests_total"}
    new = {key: value - before.get(key, 0.0) for key, value in requests_total.items() if value != before.get(key)}
    assert new == {
        series("model_server_requests_total", method="other", route="unmatched", status="404"): 5,
        series("model_server_requests_total", method="GET", route="unmatched", status="404"): 5,
        series("model_server_requests_total", method="other", route="unmatched", status="405"): 5,
        series("model_server_requests_total", method="GET", route="/metrics", status="200"): 1,
    }
