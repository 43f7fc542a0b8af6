"""The promotion-to-verdict loop on the real node, through Flux: a commit promoting a model version becomes an
Argo Rollouts canary, the canary's judgement decides, and an aborted version is reverted in git.

A git server on 127.0.0.1 serves this checkout's chart/ and environments/; Flux applies the project's own
GitRepository and dev's HelmRelease of one model (its health check for Rollouts included). The repository's
first commit points dev at the image built from this tree (as CI's set-image commit does), turns on
rollout.enabled with one 50 % step, and moves the model to the platform's model store (a read-only claim on
a host directory holding versions 1, 2 and 3 at <model>/<version>, as the ML release pipeline lays them out).

Then two promotion commits, each what `scripts/promote --model` writes (version, sha256 and store path of the
model file), while a client pod streams real predictions through the Service on keep-alive connections:
version 2 (the model refitted on a bootstrap sample) is judged and promoted; version 3 (its predictions
shifted) is judged, fails the distribution check and is aborted, version 2 keeping every replica. Then what
the repository is told: `scripts/rollout status` names the verdict, `scripts/rollout revert --commit` writes
the revert commit with the judgement's figures, Flux applies it, and the Rollout is Healthy on version 2
with git naming what runs. Not one prediction may fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from msops import values

from tests.cluster.conftest import Kube, read_only_claim, start_stream, stop_stream, wait_for
from tests.cluster.test_gitops_flux import DECL, FLUX, Remote, condition, flux_status, reconcile_source
from tests.cluster.test_real_node_flux import commit, service_url, yaml_edit
from tests.cluster.test_real_node_rollout import ROWS, Release, write_versions
from tests.kube import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ENV = DECL.get("dev")
MODEL = ENV.releases[0].model
HELM_RELEASE = yaml.safe_load((FLUX / ENV.name / f"{MODEL}.yaml").read_text())
ENV_VALUES = f"environments/{ENV.name}/values.yaml"
MODEL_VALUES = ENV.model_file(MODEL)
CLAIM = "model-store"


@dataclass
class Loop:
    remote: Remote
    release: Release
    store: Path


def store_path(version: str) -> str:
    return DECL.store_sub_path.format(model=MODEL, version=version)


def promote(remote: Remote, store: Path, version: str) -> str:
    """The commit `scripts/promote --model` writes for ``version``: its version, sha256 and store path."""
    pin = values.artifact_pin(store / store_path(version))
    yaml_edit(remote, MODEL_VALUES, {**pin, "model.subPath": store_path(version)})
    return commit(remote, f"Promote {MODEL} {version} to {ENV.name}")


def msops(remote: Remote, kube: Kube, *args: str) -> subprocess.CompletedProcess:
    """scripts/rollout against the repository Flux reads (its work tree) and the test cluster."""
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "e2e"), ("EMAIL", "e2e@example.com"))}  # fmt: skip
    env = {**kube.env, **identity, "MSOPS_ROOT": str(remote.work), "PYTHONPATH": str(ROOT / "scripts")}
    where = ["--env", ENV.name, "--model", MODEL, "--kubectl", kube.kubectl_bin, "--kubeconfig", str(kube.kubeconfig)]
    argv = [sys.executable, "-m", "msops", "rollout", *args, *where]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=remote.work, check=False)


def applied(kube: Kube, revision: str) -> None:
    """Flux has applied ``revision``: the HelmRelease Ready at it, its helm test passed."""

    def done() -> bool:
        hr = kube.json("get", "helmrelease", HELM_RELEASE["metadata"]["name"], "-n", "flux-system")
        acted = revision[:12] in hr.get("status", {}).get("lastAttemptedRevision", "")
        return acted and condition(hr, "Ready").get("status") == "True"

    wait_for(f"Flux to apply {revision[:12]}", done, timeout=300, interval=3, detail=lambda: flux_status(kube))


@pytest.fixture(scope="module")
def loop(real_kube: Kube, node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    base = tmp_path_factory.mktemp("real-gitops-rollout")
    versions = base / "versions"
    write_versions(versions)
    store = base / "store"
    for version in ("1", "2", "3"):
        (store / store_path(version)).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(versions / f"v{version}", store / store_path(version))
    for item in [store, *store.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    remote = Remote(base)
    repository, tag = node_image.rsplit(":", 1)
    yaml_edit(remote, ENV_VALUES, {
        "image.repository": repository, "image.tag": tag, "image.digest": "", "image.pullPolicy": "Never",
        # Two replicas (one stays stable at the 50 % step), small enough for this 2-core node.
        "replicaCount": 2, "resources.requests.cpu": "200m",
        "rollout.enabled": True, "rollout.canaryWeights": [50], "rollout.observeSeconds": 20,
        "rollout.judgement.minRequests": 100, "rollout.judgement.waitSeconds": 40,
    })  # fmt: skip
    yaml_edit(remote, MODEL_VALUES, {"model.mode": "existingClaim", "model.existingClaim": CLAIM})
    promote(remote, store, "1")
    real_kube.restricted_namespace(ENV.namespace)
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: real_kube.kubectl("get", "sa", "default", "-n", ENV.namespace, check=False),
    )
    read_only_claim(real_kube, ENV.namespace, CLAIM, f"{ENV.namespace}-{CLAIM}", store)
    source = yaml.safe_load((FLUX / "source" / "gitrepository.yaml").read_text())
    source["spec"]["url"] = remote.url
    real_kube.kubectl("create", "namespace", "flux-system", check=False)
    real_kube.apply([source, HELM_RELEASE])
    try:
        yield Loop(remote, Release(real_kube, node_image, ENV.namespace, ENV.releases[0].name), store)
    finally:
        real_kube.kubectl("delete", "-f", "-", "--wait=true", "--timeout=180s",
                          input_text=yaml.safe_dump_all([HELM_RELEASE, source]), check=False)  # fmt: skip
        real_kube.kubectl("delete", "pvc", CLAIM, "-n", ENV.namespace, "--timeout=60s", check=False)
        real_kube.kubectl("delete", "pv", f"{ENV.namespace}-{CLAIM}", "--timeout=60s", check=False)
        remote.stop()


def test_a_promotion_commit_is_judged_and_an_aborted_one_is_reverted_in_git(real_kube: Kube, loop: Loop):
    remote, release = loop.remote, loop.release
    applied(real_kube, remote.git("rev-parse", "HEAD"))
    # The first revision has no stable version to judge against: it goes straight to every replica.
    wait_for("version 1 Healthy", lambda: release.promoted_from(None), timeout=240, detail=release.describe)
    assert release.versions_serving() == {"1"}
    stream = start_stream(real_kube, "flux-rollout-stream", ENV.namespace, release.image, service_url(real_kube),
                          connections=4, pause=0.02, rows=json.dumps(ROWS), reconnect_every=20)  # fmt: skip
    try:
        # Version 2: a commit, Flux applies it, the canary is judged at 50 % and promoted.
        first = release.state()["stableRS"]
        good = promote(remote, loop.store, "2")
        reconcile_source(real_kube, good)
        applied(real_kube, good)
        promoted = wait_for("version 2 promoted", lambda: release.promoted_from(first), timeout=300,
                            detail=release.describe)  # fmt: skip
        passed = release.judgements()[-1]
        print("\njudgement of version 2:\n" + passed)
        assert "verdict: the canary passed" in passed
        assert release.versions_serving() == {"2"}
        # Version 3: its predictions are shifted; the judgement refuses it and the Rollout is aborted.
        promoted_text = (remote.work / MODEL_VALUES).read_text()
        bad = promote(remote, loop.store, "3")
        reconcile_source(real_kube, bad)
        applied(real_kube, bad)
        wait_for("version 3 aborted", release.aborted, timeout=300, detail=release.describe)
        failed = release.judgements()[-1]
        print("judgement of version 3:\n" + failed)
        assert "FAIL: prediction_psi" in failed
        wait_for("version 2 alone again", lambda: release.versions_serving() == {"2"}, timeout=120,
                 detail=release.describe)  # fmt: skip
        # What the repository is told: the verdict, then the revert commit with the judgement's figures.
        status = msops(remote, real_kube, "status")
        print(status.stdout)
        assert status.returncode == 1, status.stderr
        assert "Degraded (aborted)" in status.stdout
        assert "FAIL: prediction_psi" in status.stdout
        reverted = msops(remote, real_kube, "revert", "--commit")
        assert reverted.returncode == 0, reverted.stderr
        message = remote.git("log", "-1", "--format=%B")
        print(message)
        assert message.startswith(f"Revert {MODEL} in {ENV.name}: the canary was aborted"), message
        assert "FAIL: prediction_psi" in message
        assert (remote.work / MODEL_VALUES).read_text() == promoted_text
        assert remote.git("status", "--porcelain") == ""
        remote.git("push", "-q", "origin", DECL.revision)
        revert = remote.git("rev-parse", "HEAD")
        reconcile_source(real_kube, revert)
        applied(real_kube, revert)

        # The spec names the stable version again: the Rollout is Healthy on it at once, no step to run.
        def healthy_on_version_2() -> dict | None:
            state = release.state()
            back = state.get("phase") == "Healthy" and not state.get("abort")
            return state if back and state.get("stableRS") == promoted["stableRS"] else None

        wait_for("the Rollout Healthy on version 2", healthy_on_version_2, timeout=180, detail=release.describe)
        assert msops(remote, real_kube, "status").returncode == 0
        assert release.versions_serving() == {"2"}
    finally:
        seen = stop_stream(real_kube, stream)
    print(f"client: {seen['ok']} predictions, {seen['failed']} failed, versions {seen['versions']}")
    assert seen["failed"] == 0, seen["failures"]
    assert set(seen["versions"]) == {"1", "2", "3"}  # the canary answered live traffic with version 3 meanwhile
