"""Integration: the real gunicorn process with the image's own gunicorn.conf.py, on 127.0.0.1."""

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from msops import local
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import server_env

from .conftest import ROWS


@pytest.fixture
def server(start_server, artifact_dir):
    return start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_WORKERS": "2"})


def test_predictions_over_http_equal_in_process_predict(server, served):
    expected = served.model.predict(ROWS)
    v1 = requests.post(f"{server.url}/v1/models/diabetes:predict", json={"instances": ROWS.tolist()}, timeout=5)
    v2 = requests.post(
        f"{server.url}/v2/models/diabetes/infer",
        json={"inputs": [{"name": "input-0", "shape": [3, 10], "datatype": "FP64", "data": ROWS.ravel().tolist()}]},
        timeout=5,
    )
    np.testing.assert_array_equal(v1.json()["predictions"], expected)
    np.testing.assert_array_equal(v2.json()["outputs"][0]["data"], expected)


def test_metrics_aggregate_every_worker(server):
    # Sync workers close each connection, so 40 requests land on both workers.
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda _: requests.post(f"{server.url}/predict", json={"instances": [[0.1] * 10] * 2}, timeout=5),
                range(40),
            )
        )
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'model_server_requests_total{method="POST",route="/predict",status="200"} 40.0' in text
    assert 'model_server_predicted_rows_total{protocol="v1"} 80.0' in text
    assert 'model_server_request_duration_seconds_count{route="/predict"} 40.0' in text
    assert 'model_server_model_info{name="diabetes",version="1"} 1.0' in text


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by its series (name and labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _worker_pids(master: int) -> set[int]:
    return set(local.children(master))


def _predict_traffic(url: str, requests_count: int = 20) -> None:
    # A connection per request, so the requests spread over both workers.
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(
                lambda _: requests.post(f"{url}/predict", json={"instances": ROWS[:2].tolist()}, timeout=5),
                range(requests_count),
            )
        )
    assert [r.status_code for r in replies] == [200] * requests_count


@pytest.mark.slow
def test_worker_restarts_add_no_series_and_leave_no_dead_workers_values(start_server, artifact_dir):
    """Each worker writes the drift gauge under its own pid; the scrape aggregates them into series
    without a pid label, and gunicorn's child_exit hook drops a dead worker's share. Were either
    missing, every killed worker (timeout, OOM) would leave series or counts behind for good."""
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_WORKERS": "2"})
    _predict_traffic(server.url)
    requests.get(f"{server.url}/metrics", timeout=5)  # so that both scrapes below see /metrics counted
    time.sleep(0.5)  # each worker publishes its drift window within 0.1 s
    before = _samples(requests.get(f"{server.url}/metrics", timeout=5).text)
    window = "model_server_drift_window_rows"
    assert sum(v for (name, _), v in before.items() if name == window) == 20 * 2 * 10

    dead: set[int] = set()
    for _ in range(3):
        workers = _worker_pids(server.process.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        dead |= workers
        deadline = time.monotonic() + 20
        while not (len(_worker_pids(server.process.pid) - dead) == 2 or time.monotonic() > deadline):
            time.sleep(0.1)
        server.wait_live()
        _predict_traffic(server.url)
    time.sleep(0.5)
    after = _samples(requests.get(f"{server.url}/metrics", timeout=5).text)

    assert [key for key in after if "pid" in dict(key[1])] == []
    assert set(after) == set(before)
    # Only the live workers' windows count: the rows sent since the last restart, none of the dead's.
    assert sum(v for (name, _), v in after.items() if name == window) == 20 * 2 * 10
    assert after[("model_server_model_ready", frozenset())] == 1.0
    assert after[("model_server_model_info", frozenset({("name", "diabetes"), ("version", "1")}))] == 1.0


def test_logs_are_json_with_the_request_id(server):
    requests.get(f"{server.url}/v2/health/live", headers={"X-Request-ID": "trace-7"}, timeout=5)
    time.sleep(0.2)
    entries = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert entries, server.logs()
    access = [e for e in entries if e.get("request_id") == "trace-7"]
    assert access
    assert access[0]["status"] == 200
    assert access[0]["path"] == "/v2/health/live"
    assert any(e["message"] == "model loaded" for e in entries)


def test_body_over_the_limit_is_413(start_server, artifact_dir):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_MAX_BODY_BYTES": "2048"})
    response = requests.post(
        f"{server.url}/predict", data=b"[" * 5000, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == 413
    assert "error" in response.json()
    # Chunked: no Content-Length to refuse up front, so the limit applies while reading.
    chunks = (b" " * 512 for _ in range(8))
    chunked = requests.post(
        f"{server.url}/predict", data=chunks, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert chunked.status_code == 413
    small = (part for part in (b'{"instances": ', b"[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}"))
    accepted = requests.post(
        f"{server.url}/predict", data=small, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert accepted.status_code == 200, accepted.text
    assert len(accepted.json()["predictions"]) == 1


def test_oversized_headers_are_refused_by_gunicorn(server):
    response = requests.get(f"{server.url}/v2/health/live", headers={"X-Big": "x" * 10000}, timeout=5)
    assert response.status_code == 431


def test_bad_artifact_serves_health_but_not_ready(start_server, tmp_path):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(tmp_path / "absent")})
    assert requests.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
    refusals = [line for line in server.logs().splitlines() if "model artifact refused" in line]
    assert len(refusals) == 1, server.logs()
    assert "does not exist" in refusals[0]
    assert "Traceback" not in server.logs()


def _send_partial_request(url_port: int, body: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", url_port), timeout=10)
    head = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    half = len(body) // 2
    sock.sendall(head + body[:half])
    return sock, body[half:]


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_and_exits_zero(start_server, artifact_dir):
    server = start_server(server_env(artifact_dir, workers=2, graceful_timeout=10))
    body = json.dumps({"instances": ROWS.tolist()}).encode()
    # Two requests are in flight (half their body sent) when SIGTERM arrives.
    in_flight = [_send_partial_request(server.port, body) for _ in range(2)]
    time.sleep(0.3)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    replies = []
    for sock, rest in in_flight:
        sock.sendall(rest)
        replies.append(_read_all(sock))
        sock.close()
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies), replies
    server.process.wait(15)
    assert server.process.returncode == 0
    assert time.monotonic() - started < 10
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v2/health/live", timeout=2)


@pytest.mark.slow
def test_concurrent_stream_survives_sigterm_without_failed_accepted_requests(start_server, artifact_dir):
    """Every request the server accepted (and so logged) is answered 200.

    Connections still in the kernel's listen backlog when the listener closes are reset without
    being read: the server never accepted them. In Kubernetes the chart's preStop pause removes the
    pod from its endpoints first, so no new connection arrives by then.
    """
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_WORKERS": "2"})
    outcomes: list[str] = []

    def client() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                response = requests.post(f"{server.url}/predict", json={"instances": ROWS.tolist()}, timeout=5)
            except requests.ConnectionError:
                outcomes.append("not accepted")
                return
            outcomes.append("ok" if response.status_code == 200 else f"status {response.status_code}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(15)
    for thread in threads:
        thread.join(10)
    logged = [
        entry
        for entry in (json.loads(line) for line in server.logs().splitlines() if line.startswith("{"))
        if entry.get("path") == "/predict"
    ]
    assert outcomes.count("ok") > 50
    assert [o for o in outcomes if o not in ("ok", "not accepted")] == []
    assert all(entry["status"] == 200 for entry in logged)
    assert len(logged) == outcomes.count("ok")
    assert server.process.returncode == 0
