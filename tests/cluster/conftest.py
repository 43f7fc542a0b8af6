"""One real control plane (scripts/cluster up --flux) for the whole e2e session, in a private state dir.

kwok runs no containers: pods are scheduled and marked Running/Ready by kwok. What these tests prove
is what the API server accepts, admits under Pod Security and schedules, and what Helm and Flux do
with it; that the container serves is the image tests' job (tests/image).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.kube import ROOT, tool

CLUSTER = ROOT / "scripts" / "cluster"


class Kube:
    """kubectl and helm against the test cluster, failing with the tools' own messages."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "MSOPS_CLUSTER_DIR": str(state_dir)}
        self.kubeconfig = state_dir / "kubeconfig"
        self.env["KUBECONFIG"] = str(self.kubeconfig)
        from msops import gobuild

        self.kubectl_bin = str(gobuild.bin_dir("kubernetes") / "kubectl")

    def run(self, argv: list[str], input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, input=input_text, capture_output=True, text=True, env=self.env, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr or done.stdout}")
        return done

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.run([self.kubectl_bin, *args], input_text=input_text, check=check).stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, binary: str = "helm", check: bool = True) -> subprocess.CompletedProcess:
        return self.run([tool(binary), *args], check=check)

    def apply(self, docs: list[dict] | dict, *extra: str) -> str:
        docs = docs if isinstance(docs, list) else [docs]
        return self.kubectl("apply", *extra, "-f", "-", input_text=yaml.safe_dump_all(docs))

    def status(self) -> str:
        """`scripts/cluster status` of this cluster (which must be healthy)."""
        done = self.run([str(CLUSTER), "status"])
        return done.stdout

    def restricted_namespace(self, name: str) -> None:
        """A namespace that enforces the restricted Pod Security Standard, as the issue's clusters do."""
        labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})

    def events(self, namespace: str, reason: str) -> list[str]:
        items = self.json("get", "events", "-n", namespace, "--field-selector", f"reason={reason}")["items"]
        return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message']}" for e in items]


def wait_for(
    what: str,
    probe: Callable[[], object],
    timeout: float = 120,
    interval: float = 1.0,
    detail: Callable[[], str] | None = None,
):
    """Poll ``probe`` until it returns something truthy; fail naming ``what``, the last value and ``detail()``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    context = f"\n{detail()}" if detail else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r}){context}")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    state = tmp_path_factory.mktemp("cluster")
    kube = Kube(state)
    started = time.monotonic()
    up = subprocess.run([str(CLUSTER), "up", "--flux"], env=kube.env, capture_output=True, text=True, cwd=ROOT)
    if up.returncode != 0:
        subprocess.run([str(CLUSTER), "down"], env=kube.env, capture_output=True, cwd=ROOT)
        raise AssertionError(f"scripts/cluster up --flux failed:\n{up.stderr}")
    print(f"\ncluster up in {time.monotonic() - started:.1f} s", flush=True)
    try:
        yield kube
    finally:
        status = kube.run([str(CLUSTER), "status"], check=False)
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", status.stdout)]
        subprocess.run([str(CLUSTER), "down"], env=kube.env, capture_output=True, cwd=ROOT)
    # `down` stops every process the cluster started, and leaves no state behind.
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)]
    assert left == [], f"processes still running after scripts/cluster down: {left}"
    assert not state.exists() or not any(state.iterdir())


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return "Z"
