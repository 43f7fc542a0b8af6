"""Fixtures shared by every part's tests: a trained artifact and a real gunicorn server launcher."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from msops import local
from msops.local import free_port

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIR = ROOT / "image"


def require_tools(*names: str, install: str) -> None:
    """Skip the calling test when a tool it runs is not on PATH; under CI=true fail instead: there
    scripts/test installs every tool first, so a missing one is a broken set-up, not a reason to skip."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed ({install})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: scripts/test installs it under CI, so a skip would hide the test", pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a local cluster run last, the kwok cluster's before the real node's. Each cluster is built
    once and shared across modules, so it lives until the session ends: run earlier, its control plane,
    kubelet and pods kept both cores busy under the timing-bound server and reliability tests after it
    (on CI a worker's exit reset a keep-alive connection, and a 3x load was measured against a starved
    baseline)."""

    def cluster_rank(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        return 2 if "real_kube" in names else 1 if "kube" in names else 0

    items.sort(key=cluster_rank)  # stable: the order within each group is unchanged


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs"):
        require_tools(*marker.args, install=marker.kwargs["install"])


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly trained default model artifact (LinearRegression on the diabetes data)."""
    from model_server import train
    from model_server.core import artifact

    model, metadata = train.train()
    target = tmp_path_factory.mktemp("artifact") / "model"
    artifact.save(model, metadata, target)
    return target


def server_env(model_dir: Path | str, **settings: object) -> dict[str, str]:
    """The environment of a server for ``model_dir``: ``server_env(d, workers=2)`` sets MODEL_SERVER_WORKERS=2."""
    env = {f"MODEL_SERVER_{name.upper()}": str(value) for name, value in settings.items()}
    return {"MODEL_SERVER_MODEL_DIR": str(model_dir), **env}


class Server:
    """A gunicorn process running the image's own gunicorn.conf.py on 127.0.0.1. With TLS settings in ``env``
    its URL is https and ``client`` holds what requests should send to reach it (verify, cert)."""

    def __init__(self, env: dict[str, str], log_path: Path, client: dict | None = None) -> None:
        self.port = free_port()
        scheme = "https" if env.get("MODEL_SERVER_TLS_CERT_FILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.client = client or {}
        self.log_path = log_path
        launch = local.model_server(self.port, log_path.parent / f"metrics-{self.port}", **env)
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            launch.command, cwd=launch.cwd, env={**os.environ, **launch.env}, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_live(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if requests.get(f"{self.url}/v2/health/live", timeout=1, **self.client).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not live after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory: start_server(env) -> a live Server; every server is stopped at teardown."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None, wait: bool = True, client: dict | None = None) -> Server:
        server = Server(env or {}, tmp_path / f"gunicorn-{len(servers)}.log", client)
        servers.append(server)
        if wait:
            server.wait_live()
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL if server.process.poll() is None else signal.SIGTERM, timeout=10)
