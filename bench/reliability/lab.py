"""What every scenario shares: a Lab (scratch directory, trained artifact, servers always stopped), the
Result it returns, and small probes of a running server."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from model_server import train
from model_server.core import artifact
from msops import local

from bench.harness import Server, run_wrk


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
        """A started server, returned once every one of its workers runs."""
        env = {"MODEL_SERVER_WORKERS": "2", **env}
        port = local.free_port()
        launch = local.model_server(port, self.scratch / f"metrics-{port}", self.model_dir, **env)
        server = Server("ours", launch.command, launch.env, launch.cwd, port)
        self.servers.append(server)
        server.start(self.scratch, until)
        # The first worker can answer before gunicorn has forked the next (it spawns them up to 0.1 s apart):
        # a scenario that counted or measured its workers then would see one appear and call it a restart.
        workers, deadline = int(env["MODEL_SERVER_WORKERS"]), time.monotonic() + 10
        while len(worker_pids(server)) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers expected, {len(worker_pids(server))} running after 10 s")
            time.sleep(0.02)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


def worker_pids(server: Server) -> list[int]:
    return [pid for pid in server.pids() if pid != server.popen.pid]


def warm_up(lab: Lab, server: Server, seconds: int = 3) -> None:
    """Load every worker for a moment before anything is measured: a fresh worker's first seconds run at about
    half speed (a cold 3x-overload baseline read 4333 req/s, 8317 after the overload), and a figure taken
    cold flatters whatever is compared with it."""
    run_wrk(server, "v1", 1, lab.scratch, seconds=seconds)


def capacity(lab: Lab, server: Server, seconds: int = 5) -> float:
    return run_wrk(server, "v1", 1, lab.scratch, seconds=seconds).rps


def timed_get(url: str) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        status: int | str = requests.get(url, timeout=5).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - started


def timed_predict(session: requests.Session, url: str) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        status: int | str = session.post(url, json={"instances": [[0.01] * 10]}, timeout=5).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - started


def metric(server: Server, name: str) -> float:
    text = requests.get(f"{server.base}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE))
