"""Connection scenarios: stuck header connections and slow clients must not hold a worker or delay probes."""

from __future__ import annotations

import contextlib
import socket
import statistics
import time

import requests
from msops import local

from bench.reliability.lab import Lab, Result, timed_get, timed_predict, worker_pids


def stuck_headers(lab: Lab, connections: int = 1000, hold: float = 60.0) -> Result:
    """Slowloris: connections that send a request line and one header, then a header every few seconds.
    Probes and predictions must answer within a second while they are open; the server must close them."""
    server = lab.server()
    before = local.rss_mib(worker_pids(server))
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
                checks.append((path, *timed_get(f"{server.base}{path}")))
            checks.append(("prediction", *timed_predict(session, f"{server.base}/predict")))
            next_check = now + 1
        time.sleep(0.05)
    after = local.rss_mib(worker_pids(server))
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
