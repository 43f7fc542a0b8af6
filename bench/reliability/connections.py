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


def connection_cap(lab: Lab, cap: int = 100, seconds: float = 15.0) -> Result:
    """Twice the connection cap of stuck connections, kept open (each one the server closes is reopened at
    once): probes on the health port must answer within a second throughout."""
    health = local.free_port()
    server = lab.server(MODEL_SERVER_WORKER_CONNECTIONS=str(cap), MODEL_SERVER_HEALTH_PORT=str(health))
    target = 2 * cap * 2  # two workers, twice the cap each
    stuck: list[socket.socket] = []
    opened = reopened = 0

    def open_one() -> None:
        nonlocal opened
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        stuck.append(sock)
        opened += 1

    for _ in range(target):
        open_one()
    health_checks: list[tuple[str, int | str, float]] = []
    main_checks: list[tuple[int | str, float]] = []
    deadline = time.monotonic() + seconds
    next_check = time.monotonic()
    while time.monotonic() < deadline:
        for sock in list(stuck):
            try:
                if sock.recv(4096) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                pass
            stuck.remove(sock)  # answered (503) or closed: replace it
            sock.close()
            reopened += 1
        while len(stuck) < target:
            open_one()
        if time.monotonic() >= next_check:
            for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
                health_checks.append((path, *timed_get(f"http://127.0.0.1:{health}{path}")))
            main_checks.append(timed_get(f"{server.base}/v2/health/ready"))
            next_check = time.monotonic() + 0.25
        time.sleep(0.01)
    for sock in stuck:
        sock.close()
    slowest = max(elapsed for _, _, elapsed in health_checks)
    failed = [(path, status) for path, status, elapsed in health_checks if status != 200 or elapsed >= 1]
    main_ok = sum(1 for status, elapsed in main_checks if status == 200 and elapsed < 1)
    return Result(
        f"connection cap exceeded: {target} stuck connections against a cap of {cap} per worker",
        bool(health_checks) and not failed,
        {
            "stuck connections kept open": target,
            "connections opened in all": opened,
            "closed by the server and reopened": reopened,
            "health-port probes": len(health_checks),
            "slowest health-port probe s": round(slowest, 3),
            "failed or >= 1 s": failed[:5] or 0,
            "main-port readiness probes answered within 1 s": f"{main_ok} of {len(main_checks)}",
        },
        "Past MODEL_SERVER_WORKER_CONNECTIONS a connection is refused at once (503, or closed unread past 64 "
        "being looked at); the health port (MODEL_SERVER_HEALTH_PORT, the chart's probes and ServiceMonitor) "
        "is counted apart, so no number of connections on the main port can fail a probe. The main port "
        "still answers probes past the cap when a handler is free, but nothing there is promised.",
    )


def slow_bodies(lab: Lab, connections: int = 1000, seconds: float = 20.0) -> Result:
    """Connections that declare a maximal (4 MiB) body, send 3 MiB of it and stall: the worker's body budget
    must bound memory, probes and small predictions must keep answering."""
    budget = 32 << 20
    server = lab.server(MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES=str(budget))
    workers = worker_pids(server)
    before = local.rss_mib(workers)
    declared, sent_each = 4 << 20, 3 << 20
    payload = memoryview(b" " * sent_each)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    socks: dict[socket.socket, int] = {}
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(head)
        sock.setblocking(False)
        socks[sock] = 0
    outcomes: dict[str, int] = {}
    peak = list(before)
    checks: list[tuple[str, int | str, float]] = []
    session = requests.Session()
    deadline = time.monotonic() + seconds
    next_check = time.monotonic()
    while time.monotonic() < deadline and socks:
        for sock, offset in list(socks.items()):
            try:
                answer = sock.recv(4096)
                outcome = "503" if answer.startswith(b"HTTP/1.1 503") else ("closed" if not answer else "other")
            except BlockingIOError:
                if offset < sent_each:
                    try:
                        socks[sock] = offset + sock.send(payload[offset : offset + (256 << 10)])
                    except BlockingIOError:
                        pass
                    except OSError:
                        outcome = "reset"
                    else:
                        continue
                else:
                    continue
            except OSError:
                outcome = "reset"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            del socks[sock]
            sock.close()
        peak = [max(p, now) for p, now in zip(peak, local.rss_mib(workers), strict=True)]
        if time.monotonic() >= next_check:
            checks.append(("/v2/health/ready", *timed_get(f"{server.base}/v2/health/ready")))
            checks.append(("prediction", *timed_predict(session, f"{server.base}/predict")))
            next_check = time.monotonic() + 1
        time.sleep(0.005)
    stalled = len(socks)
    for sock in socks:
        sock.close()
    growth = max(p - b for p, b in zip(peak, before, strict=True))
    bound = 2 * budget / (1 << 20)
    failed = [(what, status) for what, status, elapsed in checks if status != 200 or elapsed >= 1]
    return Result(
        f"{connections} slow maximal bodies (4 MiB declared, 3 MiB sent, then stalled)",
        growth <= bound and not failed and bool(checks),
        {
            "refused with 503 before the body was read": outcomes.get("503", 0),
            "closed or reset by the server": outcomes.get("closed", 0) + outcomes.get("reset", 0),
            "still stalled, holding the budget, at the end": stalled,
            "peak RSS growth per worker MiB": round(growth, 1),
            "bound MiB (2 x MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES)": round(bound),
            "RSS per worker before / peak MiB": f"{[round(x) for x in before]} / {[round(x) for x in peak]}",
            "probes and 1-row predictions meanwhile": len(checks),
            "failed or >= 1 s": failed[:5] or 0,
        },
        "Each worker holds at most MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES (32 MiB here) of bodies over 64 KiB: "
        "eight stalled 4 MiB uploads fill it, and every further large body gets 503 + Retry-After before a "
        "byte of it is read, its connection closed after a one-second linger. Small bodies are not counted, "
        "so ordinary predictions go on beside them.",
    )
