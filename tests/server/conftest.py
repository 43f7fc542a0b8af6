from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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
