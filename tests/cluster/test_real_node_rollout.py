"""Progressive delivery on the real node: the chart's Argo Rollouts canary (rollout.enabled), run by the Argo
Rollouts controller that `scripts/cluster up --real-node` starts, while a client pod sends real predictions
through the release's Service on keep-alive connections for the whole time.

The model versions live in a read-only claim on a host directory (the platform's model store), one
directory each; a new version is `helm upgrade --set model.subPath=...`, which changes the pod template the
Rollout runs. (a) a good version 2 (the same model refitted on a bootstrap sample) goes to the canary weight,
is judged and promoted; (b) version 3, whose predictions are shifted (its intercept 60 higher), is judged,
fails the distribution check, and the rollout is aborted: version 2 keeps every replica; (c) version 4
predicts alike but about a thousand times slower (a bagged ensemble of linear models) and is aborted by
the latency check. None costs a single failed request. Each prints the judgement's figures (the analysis
Job's log).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from model_server import train
from model_server.core import artifact
from sklearn.datasets import load_diabetes
from sklearn.ensemble import BaggingRegressor
from sklearn.linear_model import LinearRegression

from tests.cluster.conftest import (
    Kube,
    judgement_logs,
    read_only_claim,
    rollout_promoted,
    rollout_status,
    start_stream,
    stop_stream,
    wait_for,
)
from tests.kube import CHART, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NAMESPACE = "e2e-rollout"
RELEASE = "canary"
SERVICE = f"http://{RELEASE}-model-server.{NAMESPACE}.svc.cluster.local"
ROWS = np.round(load_diabetes().data[:200], 6).tolist()


def write_versions(store: Path) -> None:
    """v1 (the demo model), v2 (refitted on a bootstrap sample: a good new version), v3 (v2 shifted by 60),
    v4 (a bagged ensemble of linear models: alike in what it predicts, a thousand times slower)."""
    model, metadata = train.train("diabetes")
    artifact.save(model, metadata, store / "v1")
    data = load_diabetes()
    picked = np.random.default_rng(7).integers(0, len(data.target), len(data.target))
    model.fit(data.data[picked], data.target[picked])
    artifact.save(model, {**metadata, "version": "2"}, store / "v2")
    model.intercept_ += 60.0
    artifact.save(model, {**metadata, "version": "3"}, store / "v3")
    # v4: the same predictions within noise (linear models averaged), about 10 ms each instead of 0.01 ms
    slow = BaggingRegressor(LinearRegression(), n_estimators=100, random_state=0).fit(data.data, data.target)
    artifact.save(slow, {**metadata, "version": "4", "estimator": "BaggingRegressor"}, store / "v4")
    for item in [store, *store.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


@dataclass
class Release:
    """A release whose pods an Argo Rollout runs: its state, judgements and the versions its pods serve."""

    kube: Kube
    image: str
    namespace: str = NAMESPACE
    name: str = RELEASE

    def helm_args(self, sub_path: str) -> list[str]:
        repository, tag = self.image.rsplit(":", 1)
        sets = {
            "image.repository": repository,
            "image.tag": tag,
            "image.digest": "",
            "image.pullPolicy": "Never",
            "replicaCount": "2",
            "resources.requests.cpu": "200m",
            "model.mode": "existingClaim",
            "model.existingClaim": "model-store",
            "model.subPath": sub_path,
            "rollout.enabled": "true",
            "rollout.canaryWeights": "{50}",
            "rollout.observeSeconds": "20",
            "rollout.judgement.minRequests": "100",
            "rollout.judgement.waitSeconds": "40",
            "tests.enabled": "true",
        }
        args = [self.name, str(CHART), "-n", self.namespace]
        for key, value in sets.items():
            args += ["--set-string" if key in ("image.tag",) else "--set", f"{key}={value}"]
        return args

    def state(self) -> dict:
        return rollout_status(self.kube, self.namespace, self.name)

    def promoted_from(self, previous: str | None) -> dict | None:
        """The Rollout's status once a revision other than ``previous`` is stable on every replica."""
        return rollout_promoted(self.state(), previous)

    def aborted(self) -> dict | None:
        state = self.state()
        return state if state.get("abort") and state.get("phase") == "Degraded" else None

    def judgements(self) -> list[str]:
        """The analysis Jobs' logs, oldest first: the figures each judgement saw."""
        return judgement_logs(self.kube, self.namespace, self.name)

    def pod_versions(self) -> dict[str, str]:
        """Each serving pod of the release still running (not on its way out), and the model version its log
        says it loaded ("model loaded"), or "" while it has not."""
        selector = f"app.kubernetes.io/instance={self.name},rollouts-pod-template-hash"
        found = {}
        for pod in self.kube.json("get", "pods", "-n", self.namespace, "-l", selector)["items"]:
            if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") != "Running":
                continue
            name = pod["metadata"]["name"]
            found[name] = ""
            for line in self.kube.kubectl("logs", name, "-n", self.namespace, check=False).splitlines():
                if '"model loaded"' in line:
                    found[name] = json.loads(line)["version"]
        return found

    def versions_serving(self) -> set[str]:
        return set(self.pod_versions().values())

    def describe(self) -> str:
        return (
            f"pods: {self.pod_versions()}\n"
            + self.kube.kubectl("get", "pods,rs", "-n", self.namespace, "-o", "wide", "--show-labels", check=False)
            + self.kube.kubectl("describe", "rollout", "-n", self.namespace, check=False)[-3000:]
        )


@pytest.fixture(scope="module")
def release(real_kube: Kube, node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    real_kube.restricted_namespace(NAMESPACE)
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: real_kube.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False),
    )
    store = tmp_path_factory.mktemp("rollout-store")
    write_versions(store)
    read_only_claim(real_kube, NAMESPACE, "model-store", f"{NAMESPACE}-model-store", store)
    installed = Release(real_kube, node_image)
    real_kube.helm("install", *installed.helm_args("v1"), "--wait", "--timeout", "4m")
    # The first revision has no stable version to judge against: it goes straight to every replica.
    wait_for("the first revision Healthy", lambda: installed.promoted_from(None), timeout=240,
             detail=lambda: real_kube.kubectl("describe", "rollout", "-n", NAMESPACE))  # fmt: skip
    try:
        yield installed
    finally:
        real_kube.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m", check=False)
        real_kube.kubectl("delete", "pvc", "model-store", "-n", NAMESPACE, "--timeout=60s", check=False)
        real_kube.kubectl("delete", "pv", f"{NAMESPACE}-model-store", "--timeout=60s", check=False)


def test_a_good_version_is_promoted_a_shifted_or_slow_one_aborted_without_a_failed_request(release: Release):
    kube = release.kube
    stream = start_stream(kube, "rollout-stream", NAMESPACE, release.image, SERVICE, connections=4, pause=0.02,
                          rows=json.dumps(ROWS), reconnect_every=20)  # fmt: skip
    try:
        # (a) version 2: 50 %, 20 s of traffic, a judgement that passes, then every replica.
        first = release.state()["stableRS"]
        kube.helm("upgrade", *release.helm_args("v2"), "--wait", "--timeout", "4m")
        promoted = wait_for("version 2 promoted", lambda: release.promoted_from(first), timeout=300,
                 detail=release.describe)  # fmt: skip
        passed = release.judgements()
        print("\n(a) judgement of version 2:\n" + passed[-1])
        assert "verdict: the canary passed" in passed[-1]
        assert release.versions_serving() == {"2"}
        # (b) version 3: the judgement fails on the prediction distribution; the rollout is aborted.
        kube.helm("upgrade", *release.helm_args("v3"), "--wait", "--timeout", "4m")
        degraded = wait_for("version 3 aborted", release.aborted, timeout=300,
                            detail=release.describe)  # fmt: skip
        failed = release.judgements()
        print("(b) judgement of version 3:\n" + failed[-1])
        assert "FAIL: prediction_psi" in failed[-1]
        assert "pass: error_ratio" in failed[-1]
        assert degraded["stableRS"] == promoted["stableRS"]  # version 2's ReplicaSet is still the stable one
        wait_for("version 2 alone again", lambda: release.versions_serving() == {"2"}, timeout=120,
                 detail=release.describe)  # fmt: skip
        # What an operator reads: scripts/rollout status, the verdict and its figures (exit 1: aborted).
        where = ["--namespace", NAMESPACE, "--release", RELEASE, "--kubeconfig", str(kube.kubeconfig)]
        status = kube.run([str(ROOT / "scripts/rollout"), "status", *where, "--kubectl", kube.kubectl_bin], check=False)
        print(status.stdout)
        assert status.returncode == 1, status.stderr
        assert "Degraded (aborted)" in status.stdout
        assert "FAIL: prediction_psi" in status.stdout
        # (c) version 4 predicts alike but slowly: the latency check aborts it.
        kube.helm("upgrade", *release.helm_args("v4"), "--wait", "--timeout", "4m")
        judged = lambda: len(found := release.judgements()) == 3 and "verdict:" in found[-1]  # noqa: E731
        wait_for("version 4 judged", judged, timeout=300, detail=release.describe)
        wait_for("version 4 aborted", release.aborted, timeout=120, detail=release.describe)
        slow = release.judgements()[-1]
        print("(c) judgement of version 4:\n" + slow)
        assert "FAIL: p50_latency_seconds" in slow  # slower on every request, not only in the tail
        assert "pass: error_ratio" in slow
        wait_for("version 2 alone after the second abort", lambda: release.versions_serving() == {"2"},
                 timeout=120, detail=release.describe)  # fmt: skip
    finally:
        seen = stop_stream(kube, stream)
    print(f"client: {seen['ok']} predictions, {seen['failed']} failed, versions {seen['versions']}")
    assert seen["failed"] == 0, seen["failures"]
    assert set(seen["versions"]) == {"1", "2", "3", "4"}  # every version answered live traffic at some point
