"""Signal scenarios: SIGTERM drains without failing an accepted request; a SIGKILLed worker is replaced."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import requests

from bench.harness import Server
from bench.reliability.lab import Lab, Result, worker_pids

T = TypeVar("T")


def sigterm_keepalive_trials(lab: Lab, trials: int = 20) -> Result:
    """SIGTERM while 8 keep-alive clients stream requests, repeated: no request may fail or be reset."""
    totals: dict[str, int] = {}
    exits: list[float] = []
    for _ in range(trials):
        server = lab.server(MODEL_SERVER_GRACEFUL_TIMEOUT="10")

        def terminate(server: Server = server) -> float:
            started = time.monotonic()
            server.popen.send_signal(signal.SIGTERM)
            server.popen.wait(30)
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


def _stream(url: str, deadline: float, outcomes: list[tuple[str, str]], stop: threading.Event | None = None) -> None:
    """Keep-alive requests until the deadline (or ``stop``); each outcome is (kind, request id)."""
    session = requests.Session()
    while time.monotonic() < deadline and not (stop and stop.is_set()):
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
    ids: set[str] = set()
    for line in server.output().splitlines():
        if '"gunicorn.access"' in line:
            ids.add(json.loads(line).get("request_id"))
    return ids


def _under_stream(
    url: str, seconds: float, action: Callable[[], T], clients: int = 8
) -> tuple[list[tuple[str, str]], T]:
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
        server.popen.send_signal(signal.SIGTERM)
        server.popen.wait(30)
        return time.monotonic() - started

    outcomes, elapsed = _under_stream(server.base, 6, terminate)
    accepted = _logged_request_ids(server)
    kinds = [kind for kind, _ in outcomes]
    failed_accepted = [kind for kind, rid in outcomes if kind not in ("ok", "refused") and rid in accepted]
    unread = [kind for kind, rid in outcomes if kind.startswith("failed") and rid not in accepted]
    return Result(
        "SIGTERM under load",
        not failed_accepted and server.popen.returncode == 0 and elapsed < 10,
        {
            "answered 200": kinds.count("ok"),
            "failed after being accepted": len(failed_accepted),
            "refused after the listener closed": kinds.count("refused"),
            "sent on a keep-alive connection the server closed unread": len(unread),
            "exit code": server.popen.returncode,
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


def _fresh_connections(url: str, count: int = 5) -> list[str]:
    """``count`` predictions, each on a new connection: the listening socket must accept them."""
    outcomes = []
    for _ in range(count):
        try:
            response = requests.post(
                f"{url}/predict", json={"instances": [[0.01] * 10]}, headers={"Connection": "close"}, timeout=5
            )
            outcomes.append(str(response.status_code))
        except requests.RequestException as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def worker_exits(lab: Lab, trials: int = 10) -> Result:
    """Workers leaving alone under keep-alive load, ``trials`` times each: a TERM to one worker, HUP to the
    master (every worker replaced), TTOU then TTIN. Every request on the open connections and on new ones
    must succeed: the listening socket is the siblings' too."""
    server = lab.server()
    master = server.popen.pid

    def workers() -> set[int]:
        return set(worker_pids(server))

    def term_one() -> bool:
        victim = min(workers())
        os.kill(victim, signal.SIGTERM)
        return _wait(lambda: victim not in workers() and len(workers()) == 2)

    def hup() -> bool:
        before = workers()
        os.kill(master, signal.SIGHUP)
        return _wait(lambda: not (workers() & before) and len(workers()) == 2)

    def ttou_ttin() -> bool:
        os.kill(master, signal.SIGTTOU)
        shrunk = _wait(lambda: len(workers()) == 1)
        os.kill(master, signal.SIGTTIN)
        return shrunk and _wait(lambda: len(workers()) == 2)

    outcomes: list[tuple[str, str]] = []
    fresh: dict[str, list[str]] = {}
    replaced = True
    stop = threading.Event()
    clients = [threading.Thread(target=_stream, args=(server.base, float("inf"), outcomes, stop)) for _ in range(8)]
    for client in clients:
        client.start()
    try:
        for name, change in (("TERM to one worker", term_one), ("HUP", hup), ("TTOU then TTIN", ttou_ttin)):
            fresh[name] = []
            for _ in range(trials):
                replaced = change() and replaced
                fresh[name] += _fresh_connections(server.base)
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    kinds = [kind for kind, _ in outcomes]
    failed = [kind for kind in kinds if kind != "ok"]
    fresh_failed = {name: [o for o in got if o != "200"] for name, got in fresh.items()}
    return Result(
        f"workers leaving alone under keep-alive load ({trials} times each: TERM, HUP, TTOU/TTIN)",
        replaced and not failed and not any(fresh_failed.values()) and kinds.count("ok") > 100,
        {
            "keep-alive answers 200": kinds.count("ok"),
            "keep-alive failures": {kind: failed.count(kind) for kind in sorted(set(failed))} or 0,
            **{
                f"new connections after {name}": f"{len(got) - len(fresh_failed[name])} of {len(got)} answered"
                for name, got in fresh.items()
            },
            "workers replaced every time": replaced,
        },
        "Only a whole-server stop (the master lets go of the socket first) takes the shared socket out of "
        "listening; a worker leaving alone stops accepting, answers its open connections' next requests with "
        "Connection: close and exits, while its siblings keep accepting.",
    )
