from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient
from model_server import train
from model_server.config import Settings
from model_server.core import artifact
from model_server.transport.app import create_app

ROWS = np.array(train.DIABETES_ROWS)


def make_settings(model_dir: Path, **overrides: str) -> Settings:
    env = {
        "MODEL_SERVER_MODEL_DIR": str(model_dir),
        "MODEL_SERVER_LOG_LEVEL": "warning",
        "PROMETHEUS_MULTIPROC_DIR": "",
    }
    env.update(overrides)
    return Settings.from_env(env)


@pytest.fixture(scope="session")
def served(artifact_dir: Path) -> artifact.Artifact:
    return artifact.load(artifact_dir)


@pytest.fixture
def client(artifact_dir: Path) -> FlaskClient:
    app = create_app(make_settings(artifact_dir, MODEL_SERVER_MAX_ROWS="100", MODEL_SERVER_MAX_BODY_BYTES="65536"))
    return app.test_client()


@pytest.fixture(scope="session")
def penguins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The penguins demo: a classifier Pipeline with string columns and real missing values."""
    from model_server import train

    model, metadata = train.train("penguins")
    target = tmp_path_factory.mktemp("artifact") / "penguins"
    artifact.save(model, metadata, target)
    return target


@pytest.fixture
def penguins_client(penguins_dir: Path) -> FlaskClient:
    app = create_app(make_settings(penguins_dir, MODEL_SERVER_MAX_ROWS="100", MODEL_SERVER_MAX_BODY_BYTES="65536"))
    return app.test_client()


class KeepAliveClients:
    """Threads predicting on keep-alive connections until the ``with`` block ends; every outcome counted:
    the status of each answer, or ``failed: <exception>`` for a request that got none. ``token`` is a
    one-item list so a test can move the clients to another token while they run."""

    def __init__(self, url: str, clients: int = 4, verify: str | bool = True, token: list[str] | None = None) -> None:
        self.url, self.verify, self.token = url, verify, token
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        body = {"instances": ROWS[:1].tolist()}
        session = requests.Session()
        while not self._stop.is_set():
            headers = {"Authorization": f"Bearer {self.token[0]}"} if self.token else {}
            try:
                # verify per request: a Session's own verify loses to REQUESTS_CA_BUNDLE in the environment.
                response = session.post(
                    f"{self.url}/predict", json=body, headers=headers, verify=self.verify, timeout=10
                )
                self.outcomes[str(response.status_code)] += 1
            except requests.RequestException as exc:
                self.outcomes[f"failed: {type(exc).__name__}: {str(exc)[-120:]}"] += 1
                session = requests.Session()
            time.sleep(0.002)

    def __enter__(self) -> KeepAliveClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> float:
    """Seconds until ``condition()`` held; TimeoutError naming ``what`` past ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        time.sleep(0.05)
    return time.monotonic() - started
