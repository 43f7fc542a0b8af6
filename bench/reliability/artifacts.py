"""Artifact faults: a broken model directory keeps the server live but not ready, then it recovers."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import requests
from model_server.core import artifact

from bench.reliability.lab import Lab, Result, worker_pids

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
    log = server.output()
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
