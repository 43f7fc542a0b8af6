"""The real OCI image, built from image/Dockerfile and run as a container (slow; CI runs it)."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from model_server import train
from model_server.core import artifact
from msops.container import Container, build, engine, inspect, snapshot

from bench.image_report import BUDGET_MB
from tests.conftest import require_tools

pytestmark = [pytest.mark.slow, pytest.mark.image]
ROWS = np.array(train.DIABETES_ROWS[:2])


@pytest.fixture(scope="session")
def image() -> str:
    if engine() is None:
        require_tools("podman", "buildah", "debootstrap", install="apt-get install podman buildah debootstrap")
    if engine() == "docker":
        pytest.skip("container tests drive buildah; with a docker engine, run the image with docker instead")
    return build("localhost/model-server:test")


@pytest.fixture(scope="session")
def config(image: str) -> dict:
    return inspect(image)["Config"]


@pytest.fixture
def container(image: str):
    made: list[Container] = []

    def make(**kwargs) -> Container:
        made.append(Container(image, **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.remove()


def test_image_config_is_non_root_with_exec_form_cmd_and_labels(config):
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert "8080/tcp" in config["ExposedPorts"]
    assert config.get("StopSignal") == "SIGTERM"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PORT"] == "8080"
    assert env["MODEL_SERVER_MODEL_DIR"] == "/models/default"
    labels = config["Labels"]
    for key in ("title", "source", "version", "revision", "licenses", "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_serves_both_protocols_as_uid_10001_with_its_own_cmd_writing_only_temp_dirs(container, config):
    box = container()
    before = snapshot(box.rootfs)
    box.start(config["Cmd"])
    box.wait_live()
    deadline = time.monotonic() + 10
    while len(pids := box.server_pids()) < 3 and time.monotonic() < deadline:  # master + 2 workers
        time.sleep(0.1)
    assert len(pids) >= 3, pids
    for pid in pids:
        uid_line = next(
            line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")
        )
        assert uid_line.split()[1:] == ["10001"] * 4, uid_line

    baked = artifact.load(box.rootfs / "models" / "default")
    expected = baked.model.predict(ROWS)
    v1 = requests.post(f"{box.url}/v1/models/diabetes:predict", json={"instances": ROWS.tolist()}, timeout=5).json()
    body = {"inputs": [{"name": "input-0", "shape": [2, 10], "datatype": "FP64", "data": ROWS.ravel().tolist()}]}
    v2 = requests.post(f"{box.url}/v2/models/diabetes/infer", json=body, timeout=5).json()
    np.testing.assert_array_equal(v1["predictions"], expected)
    np.testing.assert_array_equal(v2["outputs"][0]["data"], expected)

    metrics = requests.get(f"{box.url}/metrics", timeout=5).text
    assert (
        'model_server_requests_total{method="POST",route="/v1/models/<model:name>:predict",status="200"} 1.0' in metrics
    )
    assert 'model_server_predicted_rows_total{protocol="v2"} 2.0' in metrics

    assert box.stop() == 0
    after = snapshot(box.rootfs)
    # buildah itself manages these while a container runs
    managed = {"etc/hosts", "etc/resolv.conf", "etc/hostname", "etc"}
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)} - managed
    assert changed == set(), f"the server wrote outside /tmp and /dev/shm: {sorted(changed)[:20]}"


def test_the_baked_penguins_pipeline_serves_with_missing_values(container, config):
    box = container(env={"MODEL_SERVER_MODEL_DIR": "/models/penguins"})
    box.start(config["Cmd"])
    box.wait_live()
    baked = artifact.load(box.rootfs / "models" / "penguins")
    rows = [["Dream", 46.5, 17.9, 192.0, 3500.0, "female"], ["Biscoe", None, None, None, None, None]]
    answer = requests.post(f"{box.url}/v1/models/penguins:predict", json={"instances": rows}, timeout=5)
    assert answer.status_code == 200, answer.text
    frame = pd.DataFrame(rows, columns=list(baked.signature.names)).fillna(np.nan)
    assert answer.json()["predictions"] == baked.model.predict(frame).tolist()
    meta = requests.get(f"{box.url}/v2/models/penguins", timeout=5).json()
    assert meta["parameters"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert box.stop() == 0
    assert "compiled preprocessing" in box.logs()


def test_image_stays_within_its_size_budget(image):
    # The budget scripts/image-report holds it to, and why it is what it is (bench/image_report.py).
    assert inspect(image)["Size"] <= BUDGET_MB * 1000 * 1000


def test_serves_a_mounted_artifact_and_refuses_a_tampered_one(container, config, tmp_path):
    model, metadata = train.train(name="mounted", version="7")
    good = tmp_path / "good"
    artifact.save(model, metadata, good)
    box = container(env={"MODEL_SERVER_MODEL_DIR": "/mnt/models"}, volumes={good: "/mnt/models"})
    box.start(config["Cmd"])
    box.wait_live()
    assert requests.get(f"{box.url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{box.url}/v1/models", timeout=5).json() == {"models": ["mounted"]}
    assert requests.get(f"{box.url}/v2/models/mounted", timeout=5).json()["versions"] == ["7"]
    box.stop()

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    with (bad / "model.skops").open("ab") as handle:
        handle.write(b"\0")
    tampered = container(env={"MODEL_SERVER_MODEL_DIR": "/mnt/models"}, volumes={bad: "/mnt/models"})
    tampered.start(config["Cmd"])
    tampered.wait_live()
    ready = requests.get(f"{tampered.url}/v2/health/ready", timeout=5)
    assert ready.status_code == 503
    assert "sha256 mismatch" in ready.json()["error"]
    tampered.stop()
    refusals = [json.loads(line) for line in tampered.logs().splitlines() if "model artifact refused" in line]
    assert len(refusals) == 1, tampered.logs()
    assert "sha256 mismatch" in refusals[0]["message"]


def test_sigterm_during_a_stream_finishes_in_flight_requests_and_exits_zero(container, config):
    box = container(env={"MODEL_SERVER_GRACEFUL_TIMEOUT": "10"})
    box.start(config["Cmd"])
    box.wait_live()
    outcomes: list[str] = []

    def client() -> None:
        session = requests.Session()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                response = session.post(f"{box.url}/predict", json={"instances": ROWS.tolist()}, timeout=5)
            except requests.ConnectionError:
                return  # the listener is closed: requests from here on were never accepted
            outcomes.append("ok" if response.status_code == 200 else str(response.status_code))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    started = time.monotonic()
    code = box.stop(signal.SIGTERM, timeout=20)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(20)
    assert code == 0, box.logs()[-2000:]
    assert elapsed < 10
    assert outcomes.count("ok") > 50
    assert [o for o in outcomes if o != "ok"] == []


def test_image_holds_no_compilers_pip_cache_tests_or_git(container):
    box = container()
    root = box.rootfs
    for compiler in ("gcc", "cc", "c++", "g++", "clang", "make"):
        assert not (root / "usr" / "bin" / compiler).exists(), compiler
    assert not (root / "root" / ".cache" / "pip").exists()
    assert not list((root / "opt" / "venv").glob("lib/python*/site-packages/pip"))
    site = next((root / "opt" / "venv").glob("lib/python*/site-packages"))
    assert not [p for p in site.rglob("tests") if p.is_dir()]
    assert not (root / "app" / "tests").exists()
    assert not list((root / "app").rglob(".git"))
    assert not (root / ".git").exists()
    assert not list(site.glob("setuptools*")), "setuptools builds the server's package, then leaves"
    # The server is an installed package (image/pyproject.toml), not source beside the config.
    assert (site / "model_server" / "process" / "wsgi.py").is_file()
    assert list(site.glob("model_server-*.dist-info"))
    assert sorted(p.name for p in (root / "app").iterdir() if p.name != "__pycache__") == ["gunicorn.conf.py"]
