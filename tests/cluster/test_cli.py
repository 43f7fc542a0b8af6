"""scripts/cluster refuses bad arguments with one clear line, before it starts or builds anything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "kind"], "unknown component(s) kind (known: kubernetes, etcd"),
        (["wrap"], "name the wrapper(s) to regenerate"),
        (["up", "--nodes", "0"], "--nodes must be 1..50, not 0"),
        (["status", "etcd"], "'status' takes no component names"),
        (["up", "--real-node", "--nodes", "51"], "--nodes must be 0..50, not 51"),
        (["load-image", "a:1", "b:2"], "load-image takes at most one image reference"),
        (["load-image", "localhost/model-server:dev"], "the real node is not running: scripts/cluster up --real-node"),
    ],
)
def test_bad_arguments_are_named(argv, message, tmp_path):
    env = {**os.environ, "MSOPS_CLUSTER_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-m", "msops", "cluster", *argv], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists(), "nothing was started"


def test_status_and_down_of_a_cluster_that_is_not_running(tmp_path):
    env = {**os.environ, "MSOPS_CLUSTER_DIR": str(tmp_path / "state")}
    status = subprocess.run(
        [sys.executable, "-m", "msops", "cluster", "status"], capture_output=True, text=True, env=env
    )
    assert status.returncode == 1
    assert "not running" in status.stdout
    down = subprocess.run([sys.executable, "-m", "msops", "cluster", "down"], capture_output=True, text=True, env=env)
    assert down.returncode == 0
    assert "not running" in down.stderr
