"""Drift: a PSI per input column against the training distribution, calm for training-like traffic,
high for a shifted column, summed correctly over gunicorn workers."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import requests
from model_server.core import drift
from model_server.core.columns import Batch
from model_server.core.scheduler import Coalesced
from model_server.core.signature import Column, Signature
from model_server.transport.app import create_app
from sklearn.datasets import load_diabetes

from .conftest import make_settings

DIABETES = load_diabetes()
COLUMNS = list(DIABETES.feature_names)


def drift_scores(text: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r'model_server_feature_drift\{column="([^"]+)"\} (\S+)', text)}


def window_rows(text: str) -> float:
    """Rows in the window over the diabetes columns (other tests' models share the test process)."""
    series = re.findall(r'model_server_drift_window_rows\{bin="[^"]*",column="([^"]+)"\} (\S+)', text)
    return sum(float(v) for column, v in series if column in COLUMNS)


def send(client_or_url, rows: np.ndarray, batch: int = 20) -> None:
    for start in range(0, len(rows), batch):
        body = {"instances": rows[start : start + batch].tolist()}
        if isinstance(client_or_url, str):
            assert requests.post(client_or_url, json=body, timeout=5).status_code == 200
        else:
            assert client_or_url.post("/predict", json=body).status_code == 200


def test_training_like_traffic_is_calm_and_a_shifted_column_stands_out(artifact_dir):
    client = create_app(make_settings(artifact_dir, MODEL_SERVER_DRIFT_WINDOW="400")).test_client()
    rng = np.random.default_rng(0)
    calm = DIABETES.data[rng.integers(0, len(DIABETES.data), 300)]
    send(client, calm)
    scores = drift_scores(client.get("/metrics").get_data(as_text=True))
    assert set(scores) == set(COLUMNS)
    assert max(scores.values()) < 0.1, scores
    shifted = DIABETES.data[rng.integers(0, len(DIABETES.data), 300)].copy()
    bmi = COLUMNS.index("bmi")
    shifted[:, bmi] += 3 * DIABETES.data[:, bmi].std()
    send(client, shifted)
    scores = drift_scores(client.get("/metrics").get_data(as_text=True))
    assert scores["bmi"] > 0.25, scores
    assert max(v for k, v in scores.items() if k != "bmi") < 0.1, scores


def test_no_score_until_the_window_holds_enough_rows_and_none_when_off(artifact_dir):
    client = create_app(make_settings(artifact_dir)).test_client()
    send(client, DIABETES.data[:40])
    text = client.get("/metrics").get_data(as_text=True)
    assert window_rows(text) == 40 * len(COLUMNS)
    assert drift_scores(text) == {}
    off = create_app(make_settings(artifact_dir, MODEL_SERVER_DRIFT_WINDOW="0")).test_client()
    send(off, DIABETES.data[:200])
    assert drift_scores(off.get("/metrics").get_data(as_text=True)) == {}


def test_string_columns_count_unseen_values_as_other_and_nulls_as_missing():
    column = Column("island", "BYTES", nullable=True, categories=("Biscoe", "Dream"))
    values = np.array(["Biscoe", "Dream", "Dream", np.nan], dtype=object)
    reference = drift.reference_of(column, values, bins=10)  # four rows would get two bins (see below)
    assert reference == {"categories": ["Dream", "Biscoe"], "proportions": [0.5, 0.25], "other": 0.0, "missing": 0.25}
    signature = Signature((Column("island", "BYTES", True, distribution=reference),))
    window = drift.Window(signature, size=4)
    window.observe(Batch(rows=3, columns={"island": np.array(["Atlantis", np.nan, "Dream"], dtype=object)}))
    assert window.counts.tolist() == [1, 0, 1, 1]  # Dream, Biscoe, other, missing


def test_a_reference_gets_as_many_bins_as_its_size_keeps_quiet():
    """Bins sized to the reference: PSI's noise floor on training-like traffic (bins - 1)(1/R + 1/W) stays
    under 0.05 at the default 1000-row window; deciles from 220 rows."""
    number = Column("x", "FP64")
    rng = np.random.default_rng(1)
    for rows, bins in ((50, 3), (100, 5), (219, 9), (220, 10), (5000, 10)):
        assert drift.bins_for(rows) == bins
        assert drift.noise_floor(bins, rows) < 0.05
        reference = drift.reference_of(number, rng.normal(size=rows).astype(object))
        assert len(reference["proportions"]) == bins
    # the missing bin counts among them; a string column keeps its most frequent values, the rest is "other"
    gaps = rng.normal(size=50).astype(object)
    gaps[:5] = np.nan
    assert len(drift.reference_of(number, gaps)["proportions"]) == 2
    plans = np.array(["basic"] * 20 + ["plus"] * 15 + ["pro"] * 10 + ["family"] * 5, dtype=object)
    reference = drift.reference_of(Column("plan", "BYTES"), plans)
    assert reference["categories"] == ["basic", "plus"]
    assert reference["other"] == pytest.approx(0.3)
    assert drift.rows_for_deciles() == 220


def test_a_fifty_row_reference_no_longer_reads_noise_as_drift():
    """The simulation behind the sizing (scripts/bench --drift-floor), at test size: a 50-row reference and
    1000-row windows of the same distribution, against the fixed deciles it had before."""
    number = Column("x", "FP64")
    rng = np.random.default_rng(2)

    def mean_psi(bins: int | None) -> float:
        scores = []
        for _ in range(60):
            reference = drift.reference_of(number, rng.normal(size=50).astype(object), bins=bins)
            watched = drift._watched(Column("x", "FP64", distribution=reference))
            counts = np.bincount(watched.bins(rng.normal(size=1000)), minlength=len(watched.reference))
            scores.append(drift.psi(counts, watched.reference))
        return float(np.mean(scores))

    assert mean_psi(10) > 0.12  # deciles from 50 rows: the old noise floor
    assert mean_psi(None) < 0.06


def test_the_window_forgets_the_oldest_rows():
    column = Column("x", "FP64", distribution=drift.reference_of(Column("x", "FP64"), np.arange(100.0)))
    window = drift.Window(Signature((column,)), size=10)
    window.observe(Batch(rows=8, matrix=np.full((8, 1), -5.0)))  # all in the lowest bin
    window.observe(Batch(rows=6, matrix=np.full((6, 1), 500.0)))  # the top bin; 4 of the lows drop out
    window.publish_now()  # counted in one pass, as the publisher's timer would
    assert window.counts[0] == 4
    assert window.counts[-2] == 6  # the last numeric bin (the very last is "missing")
    assert window.counts.sum() == 10
    window.observe(Batch(rows=25, matrix=np.full((25, 1), -5.0)))  # more than the window: the last 10 count
    window.publish_now()
    assert window.counts[0] == 10


class CountedPasses:
    """A publishing pass that takes ``seconds`` and counts itself, and any pass that began while another ran."""

    def __init__(self, seconds: float, during: Callable[[], None] = lambda: None) -> None:
        self.seconds, self.during = seconds, during
        self.passes = self.overlaps = 0
        self._running = threading.Lock()

    def __call__(self) -> None:
        if not self._running.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            self.passes += 1
            self.during()
            time.sleep(self.seconds)  # a pass takes a while: a second one started meanwhile would overlap
        finally:
            self._running.release()


def test_publishing_on_request_threads_runs_once_per_interval_alone_and_counts_the_last_rows():
    """Outside a gevent worker (gthread and sync workers) a burst of requests on several threads publishes at most
    once per interval, never two passes at once, and the rows of the burst's last request are published by the
    timer without another request to carry them."""
    noted: list[int] = []
    published: list[int] = []

    def take() -> None:
        taken = noted[:]
        del noted[: len(taken)]
        published.extend(taken)

    publish = CountedPasses(0.002, take)
    publisher = Coalesced(publish, interval=0.05)

    def requests_on_a_thread(first: int) -> None:
        for value in range(first, first + 200):
            noted.append(value)
            publisher.request()
            time.sleep(0.001)

    started = time.monotonic()
    threads = [threading.Thread(target=requests_on_a_thread, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    burst = time.monotonic() - started
    time.sleep(0.2)  # past the interval: the timer publishes what the last requests noted
    assert sorted(published) == sorted(n * 1000 + v for n in range(4) for v in range(200))
    assert publish.overlaps == 0
    assert publish.passes <= burst / 0.05 + 3, (publish.passes, burst)  # 800 requests


def test_a_scrape_publishing_at_once_never_runs_beside_a_timer_or_request_pass():
    """A scrape publishes its worker's latest rows itself (``now``) while request threads and the timer publish
    too: the passes take turns, even when one outlasts the interval."""
    publish = CountedPasses(0.01)  # longer than the interval
    publisher = Coalesced(publish, interval=0.005)

    def requests_on_a_thread() -> None:
        for _ in range(60):
            publisher.request()
            time.sleep(0.002)

    def scrapes() -> None:
        for _ in range(20):
            publisher.now()
            time.sleep(0.003)

    threads = [threading.Thread(target=requests_on_a_thread) for _ in range(2)] + [threading.Thread(target=scrapes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.05)
    assert publish.passes >= 20
    assert publish.overlaps == 0


@pytest.mark.slow
def test_counts_and_scores_are_summed_over_gunicorn_workers(start_server, artifact_dir):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_DRIFT_WINDOW": "1000"})
    rows = DIABETES.data[np.random.default_rng(1).integers(0, len(DIABETES.data), 400)]
    send(f"{server.url}/predict", rows, batch=1)  # 400 one-row requests spread over both workers
    time.sleep(0.5)  # each worker counts and publishes its window every 0.1 s
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    assert window_rows(text) == 400 * len(COLUMNS)
    scores = drift_scores(text)
    assert set(scores) == set(COLUMNS)
    assert max(scores.values()) < 0.1


def test_whether_a_process_is_a_gevent_worker_is_asked_again_after_a_fork():
    """The answer is cached per process: a worker forked from a master that had asked (not patched) must not
    inherit the master's answer, or a gevent worker would neither queue nor shed."""
    from model_server.core import scheduler

    scheduler._COOPERATIVE["answer"] = True  # what a patched parent would have cached
    pid = os.fork()
    if pid == 0:
        os._exit(0 if "answer" not in scheduler._COOPERATIVE and scheduler.cooperative() is False else 1)
    _, status = os.waitpid(pid, 0)
    scheduler._COOPERATIVE.clear()
    assert os.waitstatus_to_exitcode(status) == 0
