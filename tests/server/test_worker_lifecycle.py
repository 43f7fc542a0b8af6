"""Workers come and go (a TERM to one, HUP, TTOU/TTIN) without ever taking the listening socket from the
others; the health port answers beside a flooded main port; sheds are answered early and cheaply.

Each runs the real gunicorn with the image's gunicorn.conf.py on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from msops import local

from tests.conftest import server_env

from .conftest import ROWS, KeepAliveClients, wait_for

TRIALS = 20
BODY = {"instances": ROWS[:1].tolist()}


def workers(server) -> set[int]:
    return set(local.children(server.process.pid))


def fresh_predictions(url: str, count: int = 5) -> list[str]:
    """``count`` predictions, each on a new connection (a connection the listening socket must accept)."""
    outcomes = []
    for _ in range(count):
        try:
            response = requests.post(f"{url}/predict", json=BODY, headers={"Connection": "close"}, timeout=5)
            outcomes.append(str(response.status_code))
        except requests.RequestException as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def replace_one_worker(server) -> None:
    before = workers(server)
    victim = min(before)
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: victim not in workers(server) and len(workers(server)) == 2, "the worker was not replaced")


def reload_master(server) -> None:
    before = workers(server)
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for(lambda: not (workers(server) & before) and len(workers(server)) == 2, "HUP did not replace the workers")


def shrink_then_grow(server) -> None:
    os.kill(server.process.pid, signal.SIGTTOU)
    wait_for(lambda: len(workers(server)) == 1, "TTOU did not stop a worker")
    assert fresh_predictions(server.url) == ["200"] * 5
    os.kill(server.process.pid, signal.SIGTTIN)
    wait_for(lambda: len(workers(server)) == 2, "TTIN did not start a worker")


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [replace_one_worker, reload_master, shrink_then_grow],
    ids=["TERM to one worker", "HUP to the master", "TTOU then TTIN"],
)
def test_a_worker_leaving_alone_never_closes_the_port(start_server, artifact_dir, change):
    """Before the fix the first worker to leave shut the socket all processes share: after one `kill -TERM
    <worker>` every new connection was refused until the pod restarted."""
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_WORKERS": "2"})
    assert fresh_predictions(server.url) == ["200"] * 5
    after_signal: list[str] = []
    with KeepAliveClients(server.url) as clients:
        for _ in range(TRIALS):
            change(server)
            after_signal += fresh_predictions(server.url)
    assert Counter(after_signal) == {"200": 5 * TRIALS}
    assert set(clients.outcomes) == {"200"}, clients.outcomes
    # A connection accepted just before the worker stopped accepting is served, not dropped with a traceback.
    assert "Traceback" not in server.logs()
    assert clients.outcomes["200"] > 100
    # The whole server still stops as before: the socket stops listening, so a new connection is refused.
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    assert server.process.returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v2/health/live", timeout=2)


@pytest.mark.slow
def test_a_reload_keeps_the_metrics_counted_so_far(start_server, artifact_dir):
    """HUP reads gunicorn.conf.py again; it must not empty the metrics directory the workers still write to."""
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_WORKERS": "2"})
    assert fresh_predictions(server.url, 10) == ["200"] * 10
    reload_master(server)
    assert fresh_predictions(server.url, 10) == ["200"] * 10
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'model_server_requests_total{method="POST",route="/predict",status="200"} 20.0' in text


@pytest.fixture
def capped(start_server, artifact_dir):
    """A server of one worker that holds at most 20 connections, with a health port. One worker: with two,
    the kernel may hand one of them fewer stuck connections than its cap, and it would serve the check."""
    health = local.free_port()
    server = start_server(
        {
            "MODEL_SERVER_MODEL_DIR": str(artifact_dir),
            "MODEL_SERVER_WORKERS": "1",
            "MODEL_SERVER_WORKER_CONNECTIONS": "20",
            "MODEL_SERVER_HEALTH_PORT": str(health),
        }
    )
    server.health_url = f"http://127.0.0.1:{health}"
    return server


@pytest.mark.slow
def test_the_health_port_answers_probes_while_the_main_port_is_flooded_past_its_cap(capped):
    # Positive control: both ports answer before the flood; the health port answers nothing but probes.
    assert requests.get(f"{capped.url}/v2/health/ready", timeout=2).status_code == 200
    assert requests.get(f"{capped.health_url}/v2/health/ready", timeout=2).status_code == 200
    assert requests.get(f"{capped.health_url}/metrics", timeout=2).status_code == 200
    refused = requests.post(f"{capped.health_url}/predict", json=BODY, timeout=2)
    assert refused.status_code == 404
    assert "only" in refused.json()["error"]
    # Four times the cap of connections stuck in their headers, far past the 64 looked at past the cap.
    stuck = []
    for _ in range(4 * 20 + 64):
        sock = socket.create_connection(("127.0.0.1", capped.port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        stuck.append(sock)
    try:
        time.sleep(0.5)
        slowest = 0.0
        for _ in range(10):
            started = time.perf_counter()
            assert requests.get(f"{capped.health_url}/v2/health/live", timeout=2).status_code == 200
            assert requests.get(f"{capped.health_url}/v2/health/ready", timeout=2).status_code == 200
            assert requests.get(f"{capped.health_url}/metrics", timeout=2).status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 1.0
        # The main port is past its cap: a prediction there is refused at once, not queued.
        over = requests.post(f"{capped.url}/predict", json=BODY, timeout=5)
        assert over.status_code == 503
        assert over.headers["Retry-After"] == "1"
    finally:
        for sock in stuck:
            sock.close()
    wait_for(
        lambda: requests.post(f"{capped.url}/predict", json=BODY, timeout=5).status_code == 200,
        "the main port did not recover after the stuck connections closed",
    )


def _raw_exchange(port: int, payload: bytes, reads: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        for _ in range(reads):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.slow
def test_a_large_body_past_the_budget_is_refused_unread_and_the_client_reads_the_503(start_server, artifact_dir):
    server = start_server(server_env(artifact_dir, workers=1, max_body_bytes=1048576, max_inflight_body_bytes=1048576))
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    # One connection sends 900 KiB of a 1 MiB body and stalls: it holds most of the budget.
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    holder.sendall(head % (1 << 20) + b" " * (900 << 10))
    time.sleep(0.3)
    try:
        started = time.perf_counter()
        answer = _raw_exchange(server.port, head % (200 << 10) + b" " * (200 << 10))
        elapsed = time.perf_counter() - started
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"Retry-After: 1" in answer
        assert b"MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES" in answer
        assert elapsed < 2
        # A small request is still served beside it (small bodies are not counted).
        assert requests.post(f"{server.url}/predict", json=BODY, timeout=5).status_code == 200
    finally:
        holder.close()
    # Positive control: with the budget free again the same large request is read and answered on its merits.
    body = b'{"instances": ' + b" " * (200 << 10) + b"[[" + b",".join([b"0.1"] * 10) + b"]]}"
    answer = _raw_exchange(server.port, (head % len(body)) + body)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


@pytest.mark.slow
def test_a_shed_is_answered_before_the_request_reaches_the_app(start_server, artifact_dir):
    """With MODEL_SERVER_MAX_QUEUE=1 and 16 clients, predictions are shed, each with a 503, Retry-After and the
    caller's request id, and counted in /metrics. Most by the worker itself from the request head: those never
    reach the app, so they have no access-log line (a request whose body was still arriving when the queue
    filled is shed by the app, and logged)."""
    server = start_server(
        {"MODEL_SERVER_MODEL_DIR": str(artifact_dir), "MODEL_SERVER_WORKERS": "1", "MODEL_SERVER_MAX_QUEUE": "1"}
    )
    requests.post(f"{server.url}/predict", json=BODY, timeout=5)  # the path is known to the fast path now
    answers: list[tuple[str, requests.Response]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        for n in range(40):
            rid = f"client-{index}-{n}"
            response = session.post(f"{server.url}/predict", json=BODY, headers={"X-Request-ID": rid}, timeout=10)
            with lock:
                answers.append((rid, response))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    shed = [(rid, r) for rid, r in answers if r.status_code == 503]
    assert shed, "no request was shed"
    assert {r.status_code for _, r in answers} == {200, 503}
    for rid, response in shed:
        assert response.headers["Retry-After"] == "1"
        assert response.headers["X-Request-ID"] == rid
        assert "MODEL_SERVER_MAX_QUEUE" in response.json()["error"]
    time.sleep(0.3)
    logged = server.logs()
    by_worker = [rid for rid, _ in shed if rid not in logged]
    assert len(by_worker) > len(shed) / 2, (len(by_worker), len(shed))
    assert all(rid in logged for rid, r in answers if r.status_code == 200)
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert f'model_server_shed_requests_total{{reason="queue"}} {float(len(shed))}' in metrics


@contextlib.contextmanager
def serving_with_hooks(hooks: str, artifact_dir, tmp_path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The image's server with ``hooks`` (gunicorn hook definitions, which may call the image's own through
    ``_image``) added to its gunicorn.conf.py: the process, its port and its log, stopped on the way out."""
    from tests.conftest import IMAGE_DIR

    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "import gc, os, runpy, signal\n"
        f"_image = runpy.run_path({str(IMAGE_DIR / 'gunicorn.conf.py')!r})\n"
        "globals().update({k: v for k, v in _image.items() if not k.startswith('__')})\n" + hooks
    )
    port = local.free_port()
    launch = local.model_server(port, tmp_path / "metrics", artifact_dir, MODEL_SERVER_WORKERS="2")
    logs = tmp_path / "gunicorn.log"
    with logs.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(conf)],
            cwd=launch.cwd,
            env={**os.environ, **launch.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, port, logs
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_worker_stopped_while_it_starts_stops_at_once_not_at_the_graceful_timeout(artifact_dir, tmp_path):
    # A stop signal the moment a worker is forked, before gunicorn has put the worker's own handlers in place:
    # here the first worker sends SIGTERM to itself from a post_fork hook run after the image's own hooks.
    # Lost, the worker would serve on and the master would stop only at the graceful timeout (20 s).
    import runpy

    from tests.conftest import IMAGE_DIR

    assert "post_fork" in runpy.run_path(str(IMAGE_DIR / "gunicorn.conf.py"))  # the hook under test exists
    hooks = (
        "def post_fork(server, worker):\n"
        "    _image['post_fork'](server, worker)\n"
        "    if worker.age == 1:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    with serving_with_hooks(hooks, artifact_dir, tmp_path) as (process, port, logs):
        wait_for(lambda: "came while it was starting" in logs.read_text(), "the first worker kept its early SIGTERM")
        # its place is taken by a new worker, and the server answers (the positive control: only age 1 stops)
        wait_for(lambda: logs.read_text().count("Booting worker") >= 3, "the stopped worker was not replaced")
        wait_for(lambda: fresh_predictions(f"http://127.0.0.1:{port}", 1) == ["200"], "the server did not answer")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert time.monotonic() - started < 5


def test_a_worker_patches_with_one_scan_of_the_installed_distributions_and_gevent_plugins_still_run(tmp_path):
    # gevent looks its plugins up 25 times while it patches; each look-up read every installed distribution's
    # metadata (170 ms of each worker's start). Counted here in a fresh interpreter, with a plugin of our own
    # installed (the positive control: the look-ups are answered, not skipped).
    (tmp_path / "probe_plugin.py").write_text("seen = []\ndef will_patch_all(event):\n    seen.append(event)\n")
    info = tmp_path / "probe_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gevent.plugins.monkey.will_patch_all]\nprobe = probe_plugin:will_patch_all\n"
    )
    script = (
        "import importlib.metadata as metadata\n"
        "scans = []\n"
        "real = metadata.distributions\n"
        "metadata.distributions = lambda **kw: scans.append(1) or real(**kw)\n"
        "from gevent import monkey\n"
        "from model_server.process.worker import ModelServerWorker\n"
        "worker = ModelServerWorker.__new__(ModelServerWorker)\n"
        "worker.sockets = []\n"
        "worker.patch()\n"
        "import probe_plugin\n"
        "print(len(scans), len(probe_plugin.seen), monkey.is_module_patched('socket'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    scans, plugin_calls, patched = done.stdout.split()
    assert (plugin_calls, patched) == ("1", "True"), done.stdout
    assert scans == "1", f"gevent's plugin look-ups scanned the installed distributions {scans} times"


def test_workers_collect_garbage_and_the_masters_start_is_frozen_out_of_their_collections(artifact_dir, tmp_path):
    # The master starts with the collector off (gunicorn.conf.py); a worker left that way would never free a
    # reference cycle. Each worker reports, once it is set up, whether its collector runs and how many of the
    # master's objects were frozen before the fork.
    report = tmp_path / "gc"
    hooks = (
        "def post_worker_init(worker):\n"
        f"    with open({str(report)!r}, 'a') as out:\n"
        "        out.write(f'{os.getpid()} {gc.isenabled()} {gc.get_freeze_count()}\\n')\n"
    )
    with serving_with_hooks(hooks, artifact_dir, tmp_path) as (_, port, _):
        wait_for(lambda: fresh_predictions(f"http://127.0.0.1:{port}", 1) == ["200"], "the server did not answer")
        wait_for(lambda: report.exists() and len(report.read_text().splitlines()) == 2, "both workers reported")
        workers = [line.split() for line in report.read_text().splitlines()]
    assert [enabled for _, enabled, _ in workers] == ["True", "True"], workers
    # numpy, scikit-learn and the model: far more than any collection of the workers' own should walk
    assert all(int(frozen) > 100_000 for _, _, frozen in workers), workers
