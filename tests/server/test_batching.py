"""Adaptive batching: merged model calls answer each request exactly as an unbatched call would, a bad
request fails alone, and a drain answers requests still waiting for company."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from model_server import train
from model_server.core import artifact, columns
from model_server.core.columns import Batch
from model_server.core.runner import ModelRunner
from model_server.core.scheduler import Job, Scheduler, batching_pays

from tests.conftest import server_env

pytestmark = pytest.mark.slow

COLUMNS = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex"]


@pytest.fixture(scope="module")
def forest_dir(tmp_path_factory) -> str:
    model, metadata = train.train("penguins", "random-forest", name="forest", trees=40)
    directory = tmp_path_factory.mktemp("forest") / "forest"
    artifact.save(model, metadata, directory)
    return str(directory)


def random_rows(rng: random.Random, count: int) -> list[list]:
    rows = []
    for _ in range(count):
        rows.append(
            [
                rng.choice(["Biscoe", "Dream", "Torgersen"]),
                rng.choice([None, round(rng.uniform(32, 60), 1)]),
                round(rng.uniform(13, 22), 1),
                rng.choice([None, float(rng.randint(170, 235))]),
                float(rng.randint(2700, 6300)),
                rng.choice(["male", "female", None]),
            ]
        )
    return rows


def v2_body(rows: list[list], outputs: list[str]) -> dict:
    datatypes = ["BYTES", "FP64", "FP64", "FP64", "FP64", "BYTES"]
    return {
        "inputs": [
            {"name": name, "shape": [len(rows)], "datatype": dt, "data": [r[i] for r in rows]}
            for i, (name, dt) in enumerate(zip(COLUMNS, datatypes, strict=True))
        ],
        "outputs": [{"name": o} for o in outputs],
    }


def expected(runner: ModelRunner, rows: list[list], outputs: list[str]) -> dict[str, list]:
    batch = Batch(rows=len(rows), columns=columns.columns_from_rows(rows, runner.signature, "rows"))
    return {name: values.tolist() for name, values in runner.run(batch, tuple(outputs)).items()}


def scrape(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=5).text


def merged_calls(url: str) -> float:
    text = scrape(url)
    buckets = dict(re.findall(r'model_server_batch_requests_bucket\{le="([^"]+)"\} (\S+)', text))
    return float(buckets["+Inf"]) - float(buckets["1.0"])


def batch_splits(url: str) -> float:
    return float(re.search(r"^model_server_batch_splits_total (\S+)", scrape(url), re.M).group(1))


def test_concurrent_requests_are_merged_and_each_gets_exactly_its_own_answer(start_server, forest_dir):
    server = start_server(
        {
            "MODEL_SERVER_MODEL_DIR": forest_dir,
            "MODEL_SERVER_MAX_BATCH_SIZE": "64",
            "MODEL_SERVER_MAX_BATCH_DELAY_MS": "5",
        }
    )
    loaded = artifact.load(forest_dir)
    runner = ModelRunner(loaded.model, loaded.signature)
    rng = random.Random(7)
    choices = [["predict"], ["predict", "predict_proba"], ["predict_proba"], ["contributions", "baseline"]]
    cases = [(random_rows(rng, rng.choice([1, 1, 1, 2, 5, 17])), rng.choice(choices)) for _ in range(240)]

    def call(case):
        rows, outputs = case
        response = requests.post(f"{server.url}/v2/models/forest/infer", json=v2_body(rows, outputs), timeout=20)
        return response.status_code, {o["name"]: o["data"] for o in response.json()["outputs"]}

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(call, cases))
    for (rows, outputs), (status, got) in zip(cases, answers, strict=True):
        assert status == 200
        want = expected(runner, rows, outputs)
        for name in outputs:
            assert (
                np.allclose(np.ravel(got[name]), np.ravel(want[name]), rtol=1e-12, atol=1e-12)
                if name != "predict"
                else got[name] == want[name]
            )
    assert merged_calls(server.url) > 10  # the load really was merged


def test_a_bad_request_fails_alone_in_its_batch(start_server, tmp_path):
    import pandas as pd
    from model_server import package
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"colour": rng.choice(["red", "blue"], 200), "size": rng.normal(size=200)})
    model = Pipeline(
        [
            ("p", ColumnTransformer([("c", OrdinalEncoder(), ["colour"])], remainder="passthrough")),
            ("m", RandomForestClassifier(n_estimators=30, random_state=0)),
        ]
    ).fit(x, x["size"] > 0)
    artifact.save(
        model, package.describe(model, x, name="m", version="1", target=None, training_data={}), tmp_path / "m"
    )
    server = start_server(
        {
            "MODEL_SERVER_MODEL_DIR": str(tmp_path / "m"),
            # One worker and a long window: the bad request is merged with company, whatever the
            # machine's speed, so the split (not luck) is what the answers below prove.
            "MODEL_SERVER_WORKERS": "1",
            "MODEL_SERVER_MAX_BATCH_SIZE": "64",
            "MODEL_SERVER_MAX_BATCH_DELAY_MS": "500",
        }
    )
    bodies = (
        [{"instances": [["red", 0.5]]}] * 6 + [{"instances": [["green", 0.5]]}] + [{"instances": [["blue", -1.0]]}] * 6
    )
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(
            pool.map(lambda b: requests.post(f"{server.url}/v1/models/m:predict", json=b, timeout=10), bodies)
        )
    assert [r.status_code for r in responses] == [200] * 6 + [422] + [200] * 6
    assert "column 'colour' has value(s) 'green'" in responses[6].json()["error"]
    assert {tuple(r.json()["predictions"]) for r in responses[:6]} == {(True,)}
    assert {tuple(r.json()["predictions"]) for r in responses[7:]} == {(False,)}
    assert batch_splits(server.url) >= 1  # the bad request really shared a model call, which failed and split


def test_sigterm_answers_requests_still_waiting_for_company(start_server, forest_dir):
    server = start_server(server_env(forest_dir, max_batch_size=64, max_batch_delay_ms=400, graceful_timeout=10))
    rows = random_rows(random.Random(3), 1)
    statuses: list[int] = []

    def call() -> None:
        statuses.append(
            requests.post(
                f"{server.url}/v2/models/forest/infer", json=v2_body(rows, ["predict"]), timeout=10
            ).status_code
        )

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.15)  # the requests are queued, waiting out the 400 ms for company
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(15)
    assert statuses == [200] * 8
    assert server.process.wait(15) == 0


def test_batching_is_decided_by_the_model_the_same_way_every_time(artifact_dir, forest_dir, penguins_dir):
    """On for a tree ensemble and for scikit-learn's own methods, off for linear arithmetic; no timing, so
    every pod decides alike (a 100-tree forest's timed fixed cost sat right at the old threshold)."""
    cases = [
        (forest_dir, True, True, "walks all 40 trees"),
        (artifact_dir, True, False, "linear fast path costs per row"),
        (penguins_dir, True, False, "compiled LogisticRegression costs per row"),
        (artifact_dir, False, True, "per-call input checks"),
        (penguins_dir, False, True, "per-call input checks"),
    ]
    for directory, compiled, pays, reason in cases:
        loaded = artifact.load(directory)
        decisions = {
            batching_pays(ModelRunner(loaded.model, loaded.signature, compiled_paths=compiled)) for _ in range(3)
        }
        assert len(decisions) == 1
        ((got, why),) = decisions
        assert (got, reason in why) == (pays, True), why


def test_a_request_alone_does_not_wait_for_company(start_server, forest_dir):
    """One client at a time with a 200 ms window: nothing would join it, so no request waits the window."""
    server = start_server(server_env(forest_dir, workers=1, max_batch_size=64, max_batch_delay_ms=200))
    session = requests.Session()
    body = v2_body(random_rows(random.Random(3), 1), ["predict"])
    session.post(f"{server.url}/v2/models/forest/infer", json=body, timeout=10)
    elapsed = []
    for _ in range(10):
        started = time.perf_counter()
        assert session.post(f"{server.url}/v2/models/forest/infer", json=body, timeout=10).status_code == 200
        elapsed.append(time.perf_counter() - started)
    assert max(elapsed) < 0.1, elapsed


def test_jobs_merge_by_model_and_outputs_up_to_the_batch_size():
    scheduler = Scheduler(max_queue=100, max_batch_rows=4)
    a, b = object(), object()

    def job(runner, rows, outputs=("predict",)):
        return Job(runner, Batch(rows=rows, matrix=np.zeros((rows, 1))), outputs, None)  # type: ignore[arg-type]

    jobs = [job(a, 1), job(b, 1), job(a, 2), job(a, 1, ("predict_proba",)), job(a, 2), job(a, 1)]
    groups = scheduler._groups(jobs)
    assert [[jobs.index(j) for j in g] for g in groups] == [[0, 2], [1], [3], [4, 5]]
