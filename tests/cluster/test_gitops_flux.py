"""The GitOps loop for real: a commit to dev's values reaches the API server through Flux, for every model.

A local git server on 127.0.0.1 serves a repository made of this checkout's chart/ and environments/;
the project's own GitRepository and dev's HelmReleases, one per model (environments/flux), point
Flux's source- and helm-controllers at it. Two changes are made to the applied copies, both stated
here: the GitRepository URL (GitHub is not reachable) and `spec.test.enable: false`, because kwok
runs no container, so the smoke-test Pod could never succeed and would fail every release for a
reason that says nothing about the chart (the test Pod's admission is checked in test_environments).

A commit to dev's environment-wide values upgrades every model's release, and its revert rolls each
back; a commit to one model's values file changes that model's Deployment and leaves the other's
pod template as it was.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from msops import environments, manifests

from tests.cluster.conftest import Kube, wait_for
from tests.kube import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DECL = environments.load()
ENV = DECL.get("dev")
# Every model dev serves, each its own HelmRelease (model-server-<model>-dev) and Helm release.
RELEASES = ENV.releases
assert len(RELEASES) >= 2, "the per-model test needs a model that must not move"
FLUX = ROOT / "environments" / "flux"
GIT = ["git", "-c", "user.email=e2e@example.com", "-c", "user.name=e2e", "-c", "commit.gpgsign=false"]


class Remote:
    """A bare repository behind msops.gitserver, and a work tree that commits and pushes to it."""

    def __init__(self, base: Path) -> None:
        self.bare = base / "repos" / "model-server-gitops.git"
        self.work = base / "work"
        for part in ("chart", "environments"):
            shutil.copytree(ROOT / part, self.work / part)
        self.git("init", "-q", "-b", DECL.revision)
        self.git("add", "-A")
        self.git("commit", "-qm", "Initial state: this checkout's chart and environments")
        subprocess.run(["git", "clone", "-q", "--bare", str(self.work), str(self.bare)], check=True)
        self.git("remote", "add", "origin", str(self.bare))
        self.server = subprocess.Popen(
            [sys.executable, "-m", "msops.gitserver", "--root", str(self.bare.parent)],
            stdout=subprocess.PIPE,
            stderr=(base / "gitserver.log").open("wb"),
            text=True,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        )
        line = self.server.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        self.url = f"{line.removeprefix('listening on ')}/model-server-gitops.git"

    def git(self, *args: str) -> str:
        return subprocess.run([*GIT, *args], cwd=self.work, check=True, capture_output=True, text=True).stdout.strip()

    def commit_and_push(self, path: str, old: str, new: str, message: str) -> str:
        file = self.work / path
        text = file.read_text()
        assert old in text, f"{path} no longer contains {old!r}"
        file.write_text(text.replace(old, new, 1))
        self.git("commit", "-qam", message)
        self.git("push", "-q", "origin", DECL.revision)
        return self.git("rev-parse", "HEAD")

    def revert_and_push(self) -> str:
        self.git("revert", "--no-edit", "HEAD")
        self.git("push", "-q", "origin", DECL.revision)
        return self.git("rev-parse", "HEAD")

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=10)


def helm_release_name(release: environments.Release) -> str:
    return f"{release.name}-{ENV.name}"


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


@pytest.fixture(scope="module")
def remote(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    remote = Remote(tmp_path_factory.mktemp("gitops"))
    # A clean slate for the release Flux will own (the Helm tests installed the same name here).
    for release in ENV.releases:
        kube.helm("uninstall", release.name, "-n", ENV.namespace, "--wait", "--ignore-not-found")
    kube.restricted_namespace(ENV.namespace)
    source = yaml.safe_load((FLUX / "source" / "gitrepository.yaml").read_text())
    assert source["spec"]["url"] == DECL.repo_url
    assert source["spec"]["ref"]["branch"] == DECL.revision
    source["spec"]["url"] = remote.url
    helm_releases = []
    for release in RELEASES:
        helm_release = yaml.safe_load((FLUX / ENV.name / f"{release.model}.yaml").read_text())
        assert helm_release["metadata"]["name"] == helm_release_name(release)
        assert helm_release["spec"]["releaseName"] == release.name
        assert helm_release["spec"]["targetNamespace"] == ENV.namespace
        assert helm_release["spec"]["chart"]["spec"]["valuesFiles"] == manifests.flux_values_files(DECL, release)
        helm_release["spec"]["test"]["enable"] = False
        helm_releases.append(helm_release)
    kube.kubectl("create", "namespace", "flux-system", check=False)
    kube.apply([source, *helm_releases])
    try:
        yield remote
    finally:
        kube.kubectl(
            "delete",
            "-f",
            "-",
            "--wait=true",
            "--timeout=120s",
            input_text=yaml.safe_dump_all([*helm_releases, source]),
            check=False,
        )
        remote.stop()


def reconcile_source(kube: Kube, revision: str) -> None:
    """What `flux reconcile source git` does: ask for a reconcile now instead of at the next interval."""
    kube.kubectl(
        "annotate",
        "--overwrite",
        "-n",
        "flux-system",
        "gitrepository/model-server-gitops",
        f"reconcile.fluxcd.io/requestedAt={datetime.now(UTC).isoformat()}",
    )
    wait_for(
        f"GitRepository artifact at {revision[:12]}",
        lambda: (
            revision
            in kube.json("get", "gitrepository", "model-server-gitops", "-n", "flux-system")
            .get("status", {})
            .get("artifact", {})
            .get("revision", "")
        ),
        timeout=120,
    )


def deployment(kube: Kube, release: environments.Release) -> dict | None:
    items = kube.json("get", "deployment", "-n", ENV.namespace, "-l", f"app.kubernetes.io/instance={release.name}")
    return items["items"][0] if items["items"] else None


def release_state(kube: Kube, release: environments.Release) -> tuple[bool, int | None, int]:
    hr = kube.json("get", "helmrelease", helm_release_name(release), "-n", "flux-system")
    ready = condition(hr, "Ready").get("status") == "True"
    dep = deployment(kube, release)
    if dep is None:
        return ready, None, 0
    return ready, dep["spec"]["replicas"], dep.get("status", {}).get("readyReplicas") or 0


def flux_status(kube: Kube) -> str:
    """The Flux objects' conditions, for a failure message."""
    lines = []
    for kind in ("gitrepository", "helmchart", "helmrelease"):
        for obj in kube.json("get", kind, "-n", "flux-system")["items"]:
            ready = condition(obj, "Ready")
            lines.append(f"{kind}/{obj['metadata']['name']}: {ready.get('status')} {ready.get('message', '')}")
    return "\n".join(lines)


def history(kube: Kube, release: environments.Release) -> list[str]:
    """Helm's statuses of the release, oldest first."""
    entries = yaml.safe_load(kube.helm("history", release.name, "-n", ENV.namespace, "-o", "yaml").stdout)
    return [entry["status"] for entry in entries]


def settled(kube: Kube, replicas: int, what: str) -> dict[str, list[str]]:
    """Wait for every model's HelmRelease Ready with ``replicas`` ready; return each one's Helm history."""
    wait_for(
        what,
        lambda: all(release_state(kube, release) == (True, replicas, replicas) for release in RELEASES),
        timeout=240,
        detail=lambda: flux_status(kube),
    )
    return {release.model: history(kube, release) for release in RELEASES}


def every_model(statuses: list[str]) -> dict[str, list[str]]:
    return {release.model: statuses for release in RELEASES}


def reconciled(kube: Kube, release: environments.Release, commit: str) -> bool:
    """The release's HelmRelease has acted on ``commit`` (dev's chart version carries the revision) and is Ready."""
    hr = kube.json("get", "helmrelease", helm_release_name(release), "-n", "flux-system")
    status = hr.get("status", {})
    return commit[:12] in status.get("lastAttemptedRevision", "") and condition(hr, "Ready").get("status") == "True"


def expected_version(kube: Kube, release: environments.Release) -> str:
    """The model version the release's server is told to accept (its ConfigMap)."""
    maps = kube.json("get", "configmap", "-n", ENV.namespace, "-l", f"app.kubernetes.io/instance={release.name}")
    return next(m["data"]["MODEL_SERVER_EXPECTED_VERSION"] for m in maps["items"] if "PORT" in m.get("data", {}))


def test_a_commit_reaches_the_cluster_and_a_revert_rolls_it_back(kube: Kube, remote: Remote):
    started = time.monotonic()
    assert settled(kube, 1, "every HelmRelease Ready with 1 ready replica") == every_model(["deployed"])
    installed_at = time.monotonic() - started

    commit = remote.commit_and_push(
        f"environments/{ENV.name}/values.yaml", "replicaCount: 1", "replicaCount: 2", "dev: two replicas"
    )
    reconcile_source(kube, commit)
    assert settled(kube, 2, "Flux to upgrade every release to 2 replicas") == every_model(["superseded", "deployed"])

    reconcile_source(kube, remote.revert_and_push())
    assert settled(kube, 1, "Flux to roll every release back to 1 replica") == every_model(
        ["superseded", "superseded", "deployed"]
    )
    assert kube.events(ENV.namespace, "FailedCreate") == []
    print(
        f"\nflux: installed in {installed_at:.0f} s, commit + revert reconciled in "
        f"{time.monotonic() - started - installed_at:.0f} s",
        flush=True,
    )


def test_a_commit_to_one_models_values_changes_only_that_model(kube: Kube, remote: Remote):
    changed, other = RELEASES[-1], RELEASES[0]
    settled(kube, 1, "every HelmRelease Ready with 1 ready replica")
    version = expected_version(kube, changed)
    template = {r.model: deployment(kube, r)["spec"]["template"] for r in RELEASES}
    path = f"environments/{ENV.name}/{changed.model}.yaml"

    def applied(commit: str, pinned: str) -> None:
        """Flux has acted on ``commit`` for every model: ``changed`` pins ``pinned``, ``other`` never moved."""
        reconcile_source(kube, commit)
        wait_for(
            f"every HelmRelease to reconcile {commit[:12]}",
            lambda: all(reconciled(kube, r, commit) for r in RELEASES),
            timeout=240,
            detail=lambda: flux_status(kube),
        )
        assert expected_version(kube, changed) == pinned
        assert expected_version(kube, other) == version
        assert deployment(kube, other)["spec"]["template"] == template[other.model], (
            f"a commit to {path} changed {other.model}'s pods"
        )

    applied(remote.commit_and_push(path, f'version: "{version}"', 'version: "e2e"', f"dev: {changed.model} e2e"), "e2e")
    assert deployment(kube, changed)["spec"]["template"] != template[changed.model], "the commit rolled the model"
    applied(remote.revert_and_push(), version)
    assert deployment(kube, changed)["spec"]["template"] == template[changed.model], "the revert restored its pods"
