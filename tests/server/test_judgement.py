"""The canary judgement: each pod's recent outcomes (core/outcomes.py, GET /v2/models/<name>/judgement) and the
verdict comparing a canary's to the stable's (model_server.judge)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from model_server import judge, train
from model_server.core import artifact, outcomes
from model_server.transport.app import create_app
from sklearn.datasets import load_diabetes

from ..conftest import server_env
from .conftest import make_settings

DIABETES = load_diabetes().data


def send(post, rows: np.ndarray, batch: int = 5) -> None:
    for start in range(0, len(rows), batch):
        assert post({"instances": rows[start : start + batch].tolist()}) == 200


# ---- the endpoint ----------------------------------------------------------------------------------


def test_a_pod_reports_its_predictions_errors_and_latency_not_its_clients_mistakes(artifact_dir):
    client = create_app(make_settings(artifact_dir)).test_client()
    rows = DIABETES[:50]
    send(lambda body: client.post("/v1/models/diabetes:predict", json=body).status_code, rows)
    assert client.post("/v1/models/diabetes:predict", json={"instances": [[1.0]]}).status_code == 422
    assert client.post("/v2/models/diabetes/infer", data=b"{", content_type="application/json").status_code == 400
    assert client.get("/v2/models/diabetes").status_code == 200  # metadata: not a prediction
    summary = client.get("/v2/models/diabetes/judgement").get_json()
    assert (summary["version"], summary["task"]) == ("1", "regression")
    assert summary["requests"] == 12  # 10 predictions and 2 refused: a request's outcome, whoever caused it
    assert summary["errors"] == 0  # the refusals were the client's (4xx), never counted against the model
    assert summary["predictions"]["rows"] == 50
    predicted = client.post("/v1/models/diabetes:predict", json={"instances": rows.tolist()}).get_json()
    assert summary["predictions"]["percentiles"][50] == pytest.approx(np.median(predicted["predictions"]))
    assert 0 < summary["latency_seconds"]["p50"] <= summary["latency_seconds"]["p99"]


def test_a_server_failure_counts_as_an_error(artifact_dir, monkeypatch):
    app = create_app(make_settings(artifact_dir))
    client = app.test_client()
    runner = app.extensions["model_server"].served.runner
    send(lambda body: client.post("/predict", json=body).status_code, DIABETES[:20])

    def broken(*_):
        raise RuntimeError("the model fell over")

    monkeypatch.setitem(runner.methods, "predict", broken)
    assert client.post("/predict", json={"instances": DIABETES[:1].tolist()}).status_code == 500
    summary = client.get("/v2/models/diabetes/judgement").get_json()
    assert (summary["requests"], summary["errors"]) == (5, 1)
    assert summary["error_ratio"] == pytest.approx(0.2)


def test_a_classifier_reports_class_counts_by_label_even_when_only_scores_were_asked(penguins_dir):
    app = create_app(make_settings(penguins_dir))
    client = app.test_client()
    signature = app.extensions["model_server"].served.runner.signature
    row = [column.example for column in signature.columns]
    assert client.post("/v1/models/penguins:predict", json={"instances": [row] * 3}).status_code == 200
    body = {
        "inputs": [
            {"name": c.name, "shape": [2], "datatype": c.datatype, "data": [row[i]] * 2}
            for i, c in enumerate(signature.columns)
        ],
        "outputs": [{"name": "predict_proba"}],
    }
    assert client.post("/v2/models/penguins/infer", json=body).status_code == 200
    predictions = client.get("/v2/models/penguins/judgement").get_json()["predictions"]
    assert predictions == {"kind": "classes", "rows": 5, "counts": {"Adelie": 5, "Chinstrap": 0, "Gentoo": 0}}


@pytest.mark.parametrize("window", ["0", "-5", "abc", "nan", "1e9"])
def test_a_bad_window_is_refused_naming_it(artifact_dir, window):
    client = create_app(make_settings(artifact_dir)).test_client()
    response = client.get(f"/v2/models/diabetes/judgement?window={window}")
    assert response.status_code == 400
    assert f"window='{window}'" in response.get_json()["error"]
    assert client.get("/v2/models/diabetes/judgement?window=60").status_code == 200  # positive control


def test_the_window_keeps_only_recent_outcomes(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(outcomes.time, "monotonic", lambda: clock[0])
    recent = outcomes.Recorder()
    recent.request(0.010, 200)
    recent.predictions(np.array([1.0, 2.0]))
    clock[0] += 100
    recent.request(0.020, 503)
    recent.predictions(np.array([3.0]))
    summary = recent.summary(60, None)
    assert (summary["requests"], summary["errors"], summary["predictions"]["rows"]) == (1, 1, 1)
    assert summary["latency_seconds"]["p99"] == pytest.approx(0.020)
    assert recent.summary(200, None)["requests"] == 2


def test_memory_is_bounded_by_the_ring_whatever_the_traffic(tmp_path):
    recent = outcomes.Recorder(str(tmp_path))
    for start in range(0, 3 * outcomes.RING, 500):
        recent.predictions(np.arange(start, start + 500, dtype=np.float64))
        recent.request(0.001, 200)
    files = list(tmp_path.iterdir())
    assert [f.stat().st_size for f in files] == [outcomes._Rings.SIZE]
    summary = recent.summary(60, None)
    assert summary["predictions"]["rows"] == outcomes.RING
    last = 3 * outcomes.RING - 3 * outcomes.RING % 500 + 500  # one past the last value written
    assert summary["predictions"]["percentiles"][0] == last - outcomes.RING  # the oldest rows were forgotten


def test_a_pods_answer_covers_every_worker_and_forgets_a_dead_one(tmp_path):
    """Each worker writes its own rings; any worker's summary reads its live siblings' too."""
    children = []
    for values in ([1.0] * 30, [5.0] * 10):
        pid = os.fork()
        if pid == 0:  # a worker: record, then wait to be told to exit
            worker = outcomes.Recorder(str(tmp_path))
            for _ in values:
                worker.request(0.001, 200)
            worker.predictions(np.array(values))
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    reader = outcomes.Recorder(str(tmp_path))
    deadline = time.monotonic() + 10
    while reader.summary(60, None)["requests"] < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = reader.summary(60, None)
    assert (summary["workers"], summary["requests"], summary["predictions"]["rows"]) == (3, 40, 40)
    os.kill(children[1], 9)
    os.waitpid(children[1], 0)
    summary = reader.summary(60, None)
    assert (summary["workers"], summary["requests"]) == (2, 30)  # a dead worker's rings no longer count
    outcomes.forget(children[1], str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2
    os.kill(children[0], 9)
    os.waitpid(children[0], 0)


# ---- the verdict's statistics ----------------------------------------------------------------------


def pod(host: str, values: np.ndarray, latencies: np.ndarray, errors: int = 0, version: str = "1") -> dict:
    return {
        "host": host,
        "version": version,
        "requests": len(latencies),
        "errors": errors,
        "latency_percentiles": np.percentile(latencies, outcomes.PERCENTILES).tolist(),
        "predictions": outcomes.prediction_summary(values, None),
    }


def side(name: str, *pods: dict) -> judge.Side:
    merged = judge.Side(name)
    for summary in pods:
        merged.add(summary)
    return merged


def test_merged_pods_give_the_quantiles_of_all_their_values():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 3000), rng.normal(3, 1, 1000)
    parts = [(len(a), np.percentile(a, outcomes.PERCENTILES)), (len(b), np.percentile(b, outcomes.PERCENTILES))]
    everything = np.concatenate([a, b])
    for level in (0.1, 0.5, 0.9, 0.99):
        assert judge.mixture_quantile(parts, level) == pytest.approx(np.quantile(everything, level), abs=0.05)


def test_the_same_model_reads_calm_and_a_shifted_one_fails_the_distribution_check():
    rng = np.random.default_rng(2)
    latencies = rng.uniform(0.001, 0.003, 400)
    stable = side(
        "stable", pod("s1", rng.normal(150, 50, 300), latencies), pod("s2", rng.normal(150, 50, 300), latencies)
    )
    same = side("canary", pod("c1", rng.normal(150, 50, 300), latencies, version="2"))
    shifted = side("canary", pod("c1", rng.normal(190, 50, 300), latencies, version="2"))
    calm = judge.verdict(stable, same, judge.Thresholds())
    assert calm["passed"], calm
    assert calm["checks"]["prediction_psi"]["canary"] < 0.1  # noise floor here 0.045
    failed = judge.verdict(stable, shifted, judge.Thresholds())
    assert not failed["passed"]
    assert [name for name, check in failed["checks"].items() if not check["passed"]] == ["prediction_psi"]
    assert "FAIL: prediction_psi" in judge.report(failed)
    assert "the canary FAILED" in judge.report(failed)


def test_errors_and_latency_fail_their_own_checks():
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, 300)
    fast = rng.uniform(0.010, 0.020, 400)
    stable = side("stable", pod("s1", values, fast, errors=2))
    erring = judge.verdict(stable, side("canary", pod("c1", values, fast, errors=20)), judge.Thresholds())
    assert [n for n, c in erring["checks"].items() if not c["passed"]] == ["error_ratio"]
    slow = judge.verdict(stable, side("canary", pod("c1", values, fast * 3)), judge.Thresholds())
    assert [n for n, c in slow["checks"].items() if not c["passed"]] == ["p50_latency_seconds", "p99_latency_seconds"]
    # a slow slice (5 % of requests ten times slower) moves the tail only
    tail = np.concatenate([fast[:380], fast[:20] * 10])
    sliced = judge.verdict(stable, side("canary", pod("c1", values, tail)), judge.Thresholds())
    assert [n for n, c in sliced["checks"].items() if not c["passed"]] == ["p99_latency_seconds"]
    fine = judge.verdict(stable, side("canary", pod("c1", values, fast * 1.2, errors=3)), judge.Thresholds())
    assert fine["passed"], fine


def test_classifiers_compare_class_frequencies():
    def classes(host: str, counts: dict[str, int]) -> dict:
        summary = pod(host, np.zeros(1), np.full(200, 0.002))
        summary["predictions"] = {"kind": "classes", "rows": sum(counts.values()), "counts": counts}
        return summary

    stable = side("stable", classes("s1", {"a": 100, "b": 60, "c": 40}))
    alike = side("canary", classes("c1", {"a": 95, "b": 62, "c": 43}))
    flipped = side("canary", classes("c1", {"a": 40, "b": 60, "c": 100}))
    assert judge.verdict(stable, alike, judge.Thresholds())["passed"]
    assert not judge.verdict(stable, flipped, judge.Thresholds())["checks"]["prediction_psi"]["passed"]


def test_too_little_traffic_gives_no_verdict_naming_the_side():
    rng = np.random.default_rng(4)
    stable = side("stable", pod("s1", rng.normal(0, 1, 300), np.full(300, 0.002)))
    quiet = side("canary", pod("c1", rng.normal(0, 1, 30), np.full(30, 0.002)))
    with pytest.raises(judge.NoVerdict, match="the canary answered 30 predictions"):
        judge.verdict(stable, quiet, judge.Thresholds())
    assert judge.verdict(stable, quiet, judge.Thresholds(min_requests=30))["passed"]


# ---- end to end: two servers, the judge's command --------------------------------------------------


@pytest.fixture(scope="module")
def shifted_dir(tmp_path_factory) -> Path:
    """Version 2 of the diabetes model, with the same signature, predicting 40 more for everyone."""
    model, metadata = train.train("diabetes")
    model.intercept_ += 40.0
    metadata["version"] = "2"
    target = tmp_path_factory.mktemp("artifact") / "shifted"
    artifact.save(model, metadata, target)
    return target


def traffic(url: str, rows: np.ndarray) -> None:
    session = requests.Session()
    send(lambda body: session.post(f"{url}/predict", json=body, timeout=5).status_code, rows)


@pytest.mark.slow
def test_the_judge_passes_the_same_model_and_fails_a_shifted_one(artifact_dir, shifted_dir, start_server, capsys):
    rng = np.random.default_rng(5)
    stable = start_server(server_env(artifact_dir, workers=2))
    same = start_server(server_env(artifact_dir, workers=2))
    shifted = start_server(server_env(shifted_dir, workers=2))
    for server in (stable, same, shifted):
        traffic(server.url, DIABETES[rng.integers(0, len(DIABETES), 800)])
    assert judge.main(["--stable", stable.url, "--canary", same.url, "--window", "60"]) == 0
    passed = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n{passed}")
    assert "verdict: the canary passed" in passed, passed
    assert "on 1 pod(s): 160 requests" in passed, passed
    assert judge.main(["--stable", stable.url, "--canary", shifted.url, "--window", "60"]) == 1
    failed = capsys.readouterr().out
    with capsys.disabled():
        print(failed)
    assert "FAIL: prediction_psi" in failed, failed
    assert "canary: version 2" in failed, failed
    assert judge.main(["--stable", stable.url, "--canary", same.url, "--min-requests", "1000"]) == 2
    assert "too little traffic to judge: the stable answered 160" in capsys.readouterr().err
