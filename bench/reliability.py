"""Reliability scenarios: load, overload, faults and slow clients against the production config.

Each scenario starts its own server on 127.0.0.1 (image/gunicorn.conf.py, 2 workers), drives it with
bounded loops (wrk runs of fixed length, client loops with deadlines) and returns a Result with the
figures and a pass/fail verdict. `scripts/reliability` runs them all and writes docs/reliability.md;
tests/reliability runs shortened versions and asserts the same verdicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.harness import IMAGE, Server, free_port, run_wrk

sys.path.insert(0, str(IMAGE))
from model_server import artifact, train

RSS_GROWTH_BOUND = 0.10


@dataclass
class Result:
    name: str
    passed: bool
    figures: dict[str, object] = field(default_factory=dict)
    note: str = ""


class Lab:
    """A scratch directory, a trained artifact, and servers that are always stopped."""

    def __init__(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="reliability-"))
        model, metadata = train.train()
        self.model_dir = self.scratch / "model"
        artifact.save(model, metadata, self.model_dir)
        self.servers: list[Server] = []

    def server(self, until: str = "prediction", **env: str) -> Server:
        port = free_port()
        server = Server(
            "ours",
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "MODEL_SERVER_MODEL_DIR": str(self.model_dir),
                "MODEL_SERVER_WORKERS": "2",
                "PROMETHEUS_MULTIPROC_DIR": str(self.scratch / f"metrics-{port}"),
                **env,
            },
            IMAGE,
            port,
        )
        self.servers.append(server)
        server.start(self.scratch, until)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


def worker_pids(server: Server) -> list[int]:
    return [pid for pid in server.pids() if pid != server.process.pid]


def rss_mib(pids: list[int]) -> list[float]:
    sizes = []
    for pid in pids:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        sizes.append(int(match.group(1)) / 1024 if match else 0.0)
    return sizes


def capacity(lab: Lab, server: Server, seconds: int = 5) -> float:
    return run_wrk(server, "v1", 1, lab.scratch, seconds=seconds).rps


def sustained(lab: Lab, seconds: int = 60) -> Result:
    """About 80 % of measured capacity, paced by wrk's per-connection delay; zero errors, bounded RSS."""
    server = lab.server()
    run_wrk(server, "v1", 1, lab.scratch, seconds=3)  # warm every worker before measuring anything
    full = capacity(lab, server)
    before = rss_mib(worker_pids(server))
    connections = 16
    target = 0.8 * full
    # wrk is closed-loop: each connection waits delay_ms after every answer. The served rate is not
    # a simple function of the delay (latency shrinks as load drops), so bisect on short probes.
    low, high = 0.0, 20.0
    for _ in range(6):
        delay_ms = (low + high) / 2
        probe = run_wrk(server, "v1", 1, lab.scratch, seconds=3, connections=connections, delay_ms=delay_ms)
        low, high = (delay_ms, high) if probe.rps > target else (low, delay_ms)
    sample = run_wrk(server, "v1", 1, lab.scratch, seconds=seconds, connections=connections, delay_ms=(low + high) / 2)
    after = rss_mib(worker_pids(server))
    growth = max((a - b) / b for a, b in zip(after, before, strict=True)) if before else 0.0
    share = sample.rps / full
    return Result(
        "sustained load, ~80 % of capacity",
        # The verdict needs a real load (>= 60 % of capacity), zero errors and bounded memory; the
        # pacing aims at 80 % but lands within ~10 % of it, so the served share is reported.
        sample.errors == 0 and growth <= RSS_GROWTH_BOUND and share >= 0.6,
        {
            "capacity req/s": round(full),
            "served req/s": round(sample.rps),
            "share of capacity": f"{share:.0%}",
            "seconds": seconds,
            "requests": sample.total,
            "errors": sample.errors,
            "p50 ms": round(sample.p50_ms, 2),
            "p99 ms": round(sample.p99_ms, 2),
            "RSS per worker before MiB": [round(x) for x in before],
            "RSS per worker after MiB": [round(x) for x in after],
            "RSS growth": f"{growth:.1%} (bound {RSS_GROWTH_BOUND:.0%})",
        },
    )


def overload(lab: Lab, seconds: int = 20) -> Result:
    """Three times the connections capacity needs, then recovery to full speed."""
    server = lab.server()
    baseline = capacity(lab, server)
    shed_before = _metric(server, "model_server_shed_requests_total")
    # 16 keep-alive connections saturate 2 workers; 3x that, each sending as fast as answered,
    # offers three times the load the server can serve.
    sample = run_wrk(server, "v1", 1, lab.scratch, seconds=seconds, connections=48, threads=2)
    shed = round(_metric(server, "model_server_shed_requests_total") - shed_before)
    live = requests.get(f"{server.base}/v2/health/live", timeout=5).status_code
    after = capacity(lab, server)
    recovered = after >= 0.9 * baseline
    # The kernel, not the server, decides which worker accepts each of the 48 connections: now and then one
    # worker starts with more connections than its queue holds and sheds a few until they even out.
    return Result(
        "overload, 3x the saturating concurrency",
        sample.errors == shed and shed <= 0.001 * sample.total and live == 200 and recovered,
        {
            "capacity req/s": round(baseline),
            "served under overload req/s": round(sample.rps),
            "requests": sample.total,
            "shed (503 + Retry-After)": shed,
            "other non-2xx or socket errors": sample.errors - shed,
            "p50 ms": round(sample.p50_ms, 2),
            "p99 ms": round(sample.p99_ms, 2),
            "capacity after req/s": round(after),
        },
        "3x is within what the workers' queues (MODEL_SERVER_MAX_QUEUE each) absorb: every answer is a 200, "
        "except at most 0.1 % shed while the kernel has handed one worker more connections than its queue "
        "holds. Past it the server sheds (the 16x scenario).",
    )


def _timed_get(url: str) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        status: int | str = requests.get(url, timeout=5).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - started


def _timed_predict(session: requests.Session, url: str) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        status: int | str = session.post(url, json={"instances": [[0.01] * 10]}, timeout=5).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - started


def _metric(server: Server, name: str) -> float:
    text = requests.get(f"{server.base}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE))


def stuck_headers(lab: Lab, connections: int = 1000, hold: float = 60.0) -> Result:
    """Slowloris: connections that send a request line and one header, then a header every few seconds.
    Probes and predictions must answer within a second while they are open; the server must close them."""
    server = lab.server()
    before = rss_mib(worker_pids(server))
    stuck = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        stuck.append(sock)
    opened = time.monotonic()
    closed_at: dict[int, float] = {}
    checks: list[tuple[str, int | str, float]] = []
    session = requests.Session()
    next_trickle = next_check = time.monotonic()
    while time.monotonic() - opened < hold and len(closed_at) < connections:
        now = time.monotonic()
        for index, sock in enumerate(stuck):
            if index in closed_at:
                continue
            try:
                if now >= next_trickle:
                    sock.sendall(b"X-Trickle: 1\r\n")
                if sock.recv(4096) == b"":
                    closed_at[index] = now - opened
            except BlockingIOError:
                pass
            except OSError:
                closed_at[index] = now - opened  # reset or broken pipe: the server closed it
        if now >= next_trickle:
            next_trickle = now + 3
        if now >= next_check and len(closed_at) < connections // 2:  # while most are still open
            for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
                checks.append((path, *_timed_get(f"{server.base}{path}")))
            checks.append(("prediction", *_timed_predict(session, f"{server.base}/predict")))
            next_check = now + 1
        time.sleep(0.05)
    after = rss_mib(worker_pids(server))
    for sock in stuck:
        sock.close()
    growth = max((a - b) / b for a, b in zip(after, before, strict=True))
    slowest = max((seconds for _, _, seconds in checks), default=float("nan"))
    failed_checks = [(what, status) for what, status, seconds in checks if status != 200 or seconds >= 1]
    closed_in_time = sum(1 for t in closed_at.values() if t <= 60) / connections
    return Result(
        f"{connections} connections stuck sending headers",
        bool(checks) and not failed_checks and closed_in_time >= 0.95 and growth <= 0.5,
        {
            "probes and predictions while they were open": len(checks),
            "slowest of them s": round(slowest, 3),
            "failed or >= 1 s": failed_checks[:5] or 0,
            "closed by the server within 60 s": f"{closed_in_time:.0%}",
            "median close after s": round(statistics.median(closed_at.values()), 1) if closed_at else "none",
            "RSS per worker before / during MiB": f"{[round(x) for x in before]} / {[round(x) for x in after]}",
        },
        "Each connection has MODEL_SERVER_HEADER_TIMEOUT (10 s) to send its headers, then gets 408 and is "
        "closed; connections never wait for a free slot, and past MODEL_SERVER_WORKER_CONNECTIONS only "
        "probes and /metrics are answered.",
    )


def _status_script(scratch: Path) -> Path:
    """wrk's own body script plus per-status counts, printed at the end."""
    from bench.harness import wrk_script

    script = scratch / "statuses.lua"
    script.write_text(
        wrk_script(scratch, "v1", 1).read_text() + "local threads = {}\n"
        "function setup(thread) table.insert(threads, thread) end\n"
        "function init(args) statuses = {} end\n"
        "function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end\n"
        "function done(summary, latency, requests)\n"
        "  local total = {}\n"
        "  for _, t in ipairs(threads) do\n"
        "    for k, v in pairs(t:get('statuses')) do total[k] = (total[k] or 0) + v end\n"
        "  end\n"
        "  for k, v in pairs(total) do io.write(string.format('status %d %d\\n', k, v)) end\n"
        "end\n"
    )
    return script


def overload_16x(lab: Lab, seconds: int = 15) -> Result:
    """16 times the benchmark's concurrency: only 200s and fast 503s, probes prompt, admitted p99 bounded."""
    import subprocess

    server = lab.server()
    before = rss_mib(worker_pids(server))
    connections = 16 * 16
    wrk = subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(_status_script(lab.scratch)),
         server.url("v1")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1)
    probes: list[tuple[int | str, float]] = []
    admitted: list[float] = []
    statuses: dict[int | str, int] = {}
    deadline = time.monotonic() + seconds - 2

    def sample_predictions() -> None:
        # One more client beside wrk's, one request at a time: the latency an admitted request sees.
        session = requests.Session()
        while time.monotonic() < deadline:
            status, elapsed = _timed_predict(session, f"{server.base}/predict")
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                admitted.append(elapsed * 1000)

    sampler = threading.Thread(target=sample_predictions)
    sampler.start()
    while time.monotonic() < deadline:
        probes.append(_timed_get(f"{server.base}/v2/health/live"))
        time.sleep(0.2)
    sampler.join(30)
    out, _ = wrk.communicate(timeout=seconds + 60)
    after = rss_mib(worker_pids(server))
    counts = {int(k): int(v) for k, v in re.findall(r"^status (\d+) (\d+)$", out, re.MULTILINE)}
    socket_errors = re.search(r"Socket errors: (.*)", out)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    shed = _metric(server, "model_server_shed_requests_total")
    slowest_probe = max(seconds for _, seconds in probes)
    growth = max((a - b) / b for a, b in zip(after, before, strict=True))
    p99_admitted = statistics.quantiles(admitted, n=100)[98] if len(admitted) >= 20 else float("nan")
    only_200_503 = set(counts) <= {200, 503} and set(statuses) <= {200, 503}
    return Result(
        "overload, 16x the benchmark's concurrency",
        only_200_503
        and socket_errors is None
        and all(status == 200 for status, _ in probes)
        and slowest_probe < 1
        and growth <= 0.5,
        {
            "connections": connections,
            "answers by status": dict(sorted(counts.items())),
            "socket errors": socket_errors.group(1) if socket_errors else 0,
            "p50 / p99 of all answers ms": f"{percentiles.get('50')} / {percentiles.get('99')}",
            "p99 of admitted (200) predictions, sampled ms": f"{p99_admitted:.2f} (of {len(admitted)})",
            "shed (503 + Retry-After), from /metrics": round(shed),
            "liveness probes": len(probes),
            "slowest probe s": round(slowest_probe, 3),
            "RSS per worker before / after MiB": f"{[round(x) for x in before]} / {[round(x) for x in after]}",
        },
        "Each worker queues at most MODEL_SERVER_MAX_QUEUE predictions; past that a request gets 503 with "
        "Retry-After: 1 as soon as its turn comes, instead of adding to everyone's wait. Probes never queue. "
        "The admitted p99 is from a client sending one request at a time beside wrk's load.",
    )


def sigterm_keepalive_trials(lab: Lab, trials: int = 20) -> Result:
    """SIGTERM while 8 keep-alive clients stream requests, repeated: no request may fail or be reset."""
    totals: dict[str, int] = {}
    exits: list[float] = []
    for _ in range(trials):
        server = lab.server(MODEL_SERVER_GRACEFUL_TIMEOUT="10")

        def terminate(server: Server = server) -> float:
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(30)
            return time.monotonic() - started

        outcomes, elapsed = _under_stream(server.base, 3, terminate)
        exits.append(elapsed)
        for kind, _ in outcomes:
            totals[kind] = totals.get(kind, 0) + 1
    failures = {kind: n for kind, n in totals.items() if kind not in ("ok", "refused")}
    return Result(
        f"SIGTERM under keep-alive load, {trials} times",
        not failures,
        {
            "answered 200": totals.get("ok", 0),
            "refused after the listener stopped": totals.get("refused", 0),
            "failed or reset": failures or 0,
            "slowest exit after SIGTERM s": round(max(exits), 2),
        },
        "On SIGTERM each worker accepts what is already waiting, takes the socket out of listening (new "
        "connections are refused, not reset) and answers the next request on every open connection with "
        "Connection: close.",
    )


def _stream(url: str, deadline: float, outcomes: list[tuple[str, str]]) -> None:
    """Keep-alive requests until the deadline; each outcome is (kind, request id)."""
    session = requests.Session()
    while time.monotonic() < deadline:
        request_id = uuid.uuid4().hex
        try:
            response = session.post(
                f"{url}/predict", json={"instances": [[0.01] * 10]}, headers={"X-Request-ID": request_id}, timeout=10
            )
        except requests.RequestException as exc:
            refused = "refused" in str(exc).lower()
            outcomes.append(("refused" if refused else f"failed: {type(exc).__name__}", request_id))
            if refused:
                return
            session = requests.Session()
            continue
        outcomes.append(("ok" if response.status_code == 200 else f"status {response.status_code}", request_id))


def _logged_request_ids(server: Server) -> set[str]:
    """Request IDs the server's access log recorded: the requests it read, i.e. accepted."""
    ids = set()
    for line in server.log.read_text().splitlines():
        if '"gunicorn.access"' in line:
            ids.add(json.loads(line).get("request_id"))
    return ids


def _under_stream(url: str, seconds: float, action, clients: int = 8) -> tuple[list[tuple[str, str]], object]:
    outcomes: list[tuple[str, str]] = []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_stream, args=(url, deadline, outcomes)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 3)
    value = action()
    for thread in threads:
        thread.join(seconds + 30)
    return outcomes, value


def sigterm_under_load(lab: Lab) -> Result:
    server = lab.server(MODEL_SERVER_GRACEFUL_TIMEOUT="10")

    def terminate() -> float:
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        return time.monotonic() - started

    outcomes, elapsed = _under_stream(server.base, 6, terminate)
    accepted = _logged_request_ids(server)
    kinds = [kind for kind, _ in outcomes]
    failed_accepted = [kind for kind, rid in outcomes if kind not in ("ok", "refused") and rid in accepted]
    unread = [kind for kind, rid in outcomes if kind.startswith("failed") and rid not in accepted]
    return Result(
        "SIGTERM under load",
        not failed_accepted and server.process.returncode == 0 and elapsed < 10,
        {
            "answered 200": kinds.count("ok"),
            "failed after being accepted": len(failed_accepted),
            "refused after the listener closed": kinds.count("refused"),
            "sent on a keep-alive connection the server closed unread": len(unread),
            "exit code": server.process.returncode,
            "exit after SIGTERM s": round(elapsed, 2),
            "graceful timeout s": 10,
        },
        "A request counts as accepted when the server read it (its X-Request-ID is in the access log). "
        "Requests a client wrote onto an idle keep-alive connection while the worker closed it were never "
        "read: in Kubernetes the preStop pause takes the pod out of the endpoints before SIGTERM, so none arrive.",
    )


def sigkill_worker_under_load(lab: Lab) -> Result:
    server = lab.server()
    victim = worker_pids(server)[0]

    def kill() -> None:
        os.kill(victim, signal.SIGKILL)

    outcomes, _ = _under_stream(server.base, 6, kill)
    kinds = [kind for kind, _ in outcomes]
    failed = [kind for kind in kinds if kind != "ok"]
    time.sleep(1)
    replaced = victim not in worker_pids(server) and len(worker_pids(server)) == 2
    live = requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code
    return Result(
        "a worker killed with SIGKILL under load",
        replaced and live == 200 and kinds.count("ok") > 100 and len(failed) <= 8,
        {
            "answered 200": kinds.count("ok"),
            "failed (in flight on the killed worker)": len(failed),
            "worker replaced": replaced,
            "ready afterwards": live == 200,
        },
        "Only requests on the killed worker's connections fail (at most one per client connection held by it).",
    )


FAULTS = ("missing", "truncated", "wrong sha256", "wrong scikit-learn version", "not a model")


def _break(directory: Path, fault: str) -> None:
    metadata_path = directory / artifact.METADATA_FILE
    metadata = json.loads(metadata_path.read_text())
    model_file = directory / metadata["model_file"]
    if fault == "missing":
        shutil.rmtree(directory)
    elif fault == "truncated":
        model_file.write_bytes(model_file.read_bytes()[:200])
        metadata["model_sha256"] = artifact.sha256_file(model_file)
    elif fault == "wrong sha256":
        with model_file.open("ab") as handle:
            handle.write(b"\0")
    elif fault == "wrong scikit-learn version":
        metadata["sklearn_version"] = "0.24.2"
    elif fault == "not a model":
        import skops.io

        skops.io.dump({"weights": [1, 2, 3]}, model_file)
        metadata["model_sha256"] = artifact.sha256_file(model_file)
    if metadata_path.exists():
        metadata_path.write_text(json.dumps(metadata))


def artifact_fault(lab: Lab, fault: str) -> Result:
    directory = lab.scratch / f"fault-{fault.replace(' ', '-')}"
    shutil.copytree(lab.model_dir, directory)
    _break(directory, fault)
    server = lab.server("live", MODEL_SERVER_MODEL_DIR=str(directory), MODEL_SERVER_RELOAD_INTERVAL="1")
    live = requests.get(f"{server.base}/v2/health/live", timeout=5).status_code
    ready = requests.get(f"{server.base}/v2/health/ready", timeout=5)
    workers = sorted(worker_pids(server))
    time.sleep(3)
    stable = sorted(worker_pids(server)) == workers
    log = server.log.read_text()
    refusals = [line for line in log.splitlines() if "model artifact refused" in line]
    # Hot reload: a good artifact appearing in place is picked up within the reload interval.
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(lab.model_dir, directory)
    deadline, recovered = time.monotonic() + 15, False
    while time.monotonic() < deadline and not recovered:
        recovered = requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
        time.sleep(0.2)
    recovered = recovered and all(
        requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200 for _ in range(6)
    )
    return Result(
        f"model artifact: {fault}",
        live == 200
        and ready.status_code == 503
        and len(refusals) == 1
        and stable
        and "Traceback" not in log
        and recovered,
        {
            "live": live,
            "ready": ready.status_code,
            "log lines naming it": len(refusals),
            "message": json.loads(refusals[0])["message"][:90] if refusals else "",
            "no worker restarts": stable,
            "ready after a good artifact appears": recovered,
        },
    )


def slow_clients(lab: Lab, slow: int = 40, seconds: float = 6) -> Result:
    """Slow clients trickling headers hold greenlets, not workers: fast clients keep their latency."""
    server = lab.server()
    sockets = []
    for _ in range(slow):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    latencies, statuses = [], []
    deadline = time.monotonic() + seconds
    next_trickle = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_trickle:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
            next_trickle = time.monotonic() + 1
        started = time.perf_counter()
        response = requests.post(f"{server.base}/predict", json={"instances": [[0.01] * 10]}, timeout=5)
        latencies.append((time.perf_counter() - started) * 1000)
        statuses.append(response.status_code)
    for sock in sockets:
        sock.close()
    big_header = requests.get(f"{server.base}/v2/health/live", headers={"X-Big": "x" * 10000}, timeout=5).status_code
    big_body = requests.post(
        f"{server.base}/predict", data=b" " * (5 << 20), headers={"Content-Type": "application/json"}, timeout=10
    ).status_code
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies)
    return Result(
        "slow clients beside fast ones; oversized headers and bodies",
        all(s == 200 for s in statuses) and p99 < 50 and big_header == 431 and big_body == 413,
        {
            "slow connections held open": slow,
            "fast requests": len(latencies),
            "fast p50 ms": round(statistics.median(latencies), 2),
            "fast p99 ms": round(p99, 2),
            "10 kB header": big_header,
            "5 MiB body": big_body,
        },
        "Slow connections wait in greenlets, each bounded by the header deadline; none holds a worker.",
    )


SCENARIOS = {
    "sustained": sustained,
    "overload": overload,
    "sigterm": sigterm_under_load,
    "sigkill": sigkill_worker_under_load,
    "slow-clients": slow_clients,
    "stuck-headers": stuck_headers,
    "overload-16x": overload_16x,
    "sigterm-keepalive": sigterm_keepalive_trials,
    **{
        f"artifact-{fault.replace(' ', '-')}": (lambda lab, fault=fault: artifact_fault(lab, fault)) for fault in FAULTS
    },
}


def hostile_corpus(lab: Lab) -> Result:
    """Bodies built to break parsers: every one must get a 4xx, none a 5xx or a dead worker."""
    server = lab.server()
    json_type = {"Content-Type": "application/json"}
    corpus: dict[str, tuple[bytes, dict[str, str]]] = {
        "deep nesting (100 000 levels)": (b"[" * 100_000 + b"]" * 100_000, json_type),
        "huge integer": (b'{"instances": [[' + b"9" * 5000 + b"]]}", json_type),
        "huge float": (b'{"instances": [[1e999, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', json_type),
        "NaN literal": (b'{"instances": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', json_type),
        "Infinity literal": (b'{"instances": [[Infinity, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', json_type),
        "strings for numbers": (b'{"instances": [["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]]}', json_type),
        "10 MB of whitespace": (b" " * 10_000_000, json_type),
        "invalid UTF-8": (b'{"instances": "\xff\xfe"}', json_type),
        "text/plain": (b'{"instances": [[0,0,0,0,0,0,0,0,0,0]]}', {"Content-Type": "text/plain"}),
        "form encoded": (b"instances=1", {"Content-Type": "application/x-www-form-urlencoded"}),
        "duplicated keys": (b'{"instances": [[0,0,0,0,0,0,0,0,0,0]], "instances": 1}', json_type),
        "empty body": (b"", json_type),
        "null": (b"null", json_type),
        "V2 shape lies": (
            b'{"inputs": [{"name": "x", "shape": [1000000000, 10], "datatype": "FP64", "data": [1]}]}',
            json_type,
        ),
        "V2 binary size lies": (
            b'{"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", '
            b'"parameters": {"binary_data_size": 80}}]}',
            {**json_type, "Inference-Header-Content-Length": "100"},
        ),
    }
    answers = {}
    for name, (data, headers) in corpus.items():
        url = f"{server.base}/v2/models/diabetes/infer" if name.startswith("V2") else f"{server.base}/predict"
        try:
            answers[name] = requests.post(url, data=data, headers=headers, timeout=30).status_code
        except requests.ConnectionError as exc:
            answers[name] = f"connection error: {type(exc).__name__}"
    alive = requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    bad = {name: code for name, code in answers.items() if not (isinstance(code, int) and 400 <= code < 500)}
    return Result("hostile bodies", not bad and alive, {**answers, "server still ready": alive})


def schemathesis_run(lab: Lab, examples: int = 300) -> Result:
    """schemathesis against the server's own /openapi.json: no 5xx, responses conform."""
    import subprocess

    server = lab.server()
    cli = Path(sys.executable).parent / "schemathesis"
    # positive_data_acceptance is left out: the schema cannot say that a tensor's shape must match
    # the model's 10 features, so schema-valid bodies are rightly refused with 422.
    result = subprocess.run(
        [str(cli), "run", f"{server.base}/openapi.json", "--checks", "all", "--exclude-checks",
         "positive_data_acceptance", "--max-examples", str(examples), "--workers", "1", "--no-color"],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    summary = [line for line in result.stdout.splitlines() if re.search(r"\d+ (passed|failed|errored)", line)]
    cases = re.search(r"(\d+) generated", result.stdout)
    failures = re.findall(r"^- (ST\d+ .+)$", result.stdout, re.MULTILINE)
    return Result(
        "schemathesis (every operation of /openapi.json)",
        result.returncode == 0,
        {
            "max examples per operation": examples,
            "test cases generated": int(cases.group(1)) if cases else "see output",
            "summary": summary[-1].strip() if summary else result.stdout[-300:],
            **({"failures": sorted(set(failures))} if failures else {}),
        },
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="scenario name (repeatable); default: all")
    parser.add_argument("--write", type=Path, help="write the Markdown report here (e.g. docs/reliability.md)")
    parser.add_argument("--quick", action="store_true", help="shorter runs (15 s sustained, 8 s overload)")
    args = parser.parse_args(argv)
    scenarios = {
        **SCENARIOS,
        "hostile-corpus": hostile_corpus,
        "schemathesis": schemathesis_run,
    }
    if args.quick:
        scenarios["sustained"] = lambda lab: sustained(lab, seconds=15)
        scenarios["overload"] = lambda lab: overload(lab, seconds=8)
        scenarios["stuck-headers"] = lambda lab: stuck_headers(lab, connections=300, hold=20)
        scenarios["overload-16x"] = lambda lab: overload_16x(lab, seconds=8)
        scenarios["sigterm-keepalive"] = lambda lab: sigterm_keepalive_trials(lab, trials=3)
    names = args.only or list(scenarios)
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(scenarios)}")
    results = []
    for name in names:
        lab = Lab()
        try:
            print(f"reliability: {name} ...", file=sys.stderr)
            results.append(scenarios[name](lab))
        finally:
            lab.close()
        print(f"reliability: {name}: {'PASS' if results[-1].passed else 'FAIL'}", file=sys.stderr)
    command = (
        "scripts/reliability" + (" --quick" if args.quick else "") + "".join(f" --only {n}" for n in args.only or [])
    )
    report = render(results, command)
    print(report)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        temp = args.write.with_name(f".{args.write.name}.tmp")
        temp.write_text(report)
        temp.replace(args.write)
    return 0 if all(r.passed for r in results) else 1


def render(results: list[Result], command: str) -> str:
    lines = [
        "| scenario | verdict | figures |",
        "|---|---|---|",
    ]
    for result in results:
        figures = "; ".join(f"{key}: {value}" for key, value in result.figures.items())
        lines.append(f"| {result.name} | {'pass' if result.passed else '**FAIL**'} | {figures} |")
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(
        [f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} (2 cores, 127.0.0.1 only).", "", *lines, "", *notes]
    )


if __name__ == "__main__":
    sys.exit(main())
