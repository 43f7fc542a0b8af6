"""The GitOps loop on the real node: a commit that changes a model's version reaches running pods.

A git server on 127.0.0.1 serves this checkout's chart/ and environments/; Flux applies the project's
own GitRepository and dev's HelmRelease of one model, with `helm test` enabled as in the repository:
on this node the test Pod really runs, so a release whose test failed would be remediated (rolled
back) instead of deployed. One change to the applied copies: the GitRepository URL. The repository's
first commit after the checkout's state points dev at the image built from this tree, imported into
the node (what CI's set-image commit does with a pushed image).

Then the commit under test: a new image whose artifact for the model is version 2, and the model's
version pin raised to 2, as a release of a retrained model does. The pods that Flux rolls must all
answer, through the Service, with version 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.cluster.conftest import (
    CLUSTER,
    REACHABLE,
    Kube,
    client_pod,
    run_client,
    start_stream,
    stop_stream,
    wait_for,
    wait_pods_gone,
)
from tests.cluster.test_gitops_flux import DECL, FLUX, Remote, condition, flux_status, reconcile_source
from tests.kube import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ENV = DECL.get("dev")
RELEASE = ENV.releases[0]
HELM_RELEASE = yaml.safe_load((FLUX / ENV.name / f"{RELEASE.model}.yaml").read_text())
ENV_VALUES = f"environments/{ENV.name}/values.yaml"
MODEL_VALUES = ENV.model_file(RELEASE.model)


@dataclass
class Loop:
    remote: Remote
    image: str  # the image the repository's dev values name now
    next_image: str  # the same image with version 2 of the model's artifact


def yaml_edit(remote: Remote, path: str, change: dict) -> None:
    """Set dotted keys in one of the test repository's values files."""
    file = remote.work / path
    data = yaml.safe_load(file.read_text()) or {}
    for key, value in change.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    file.write_text(yaml.safe_dump(data, sort_keys=False))


def commit(remote: Remote, message: str) -> str:
    remote.git("commit", "-qam", message)
    remote.git("push", "-q", "origin", DECL.revision)
    return remote.git("rev-parse", "HEAD")


def image_with_version(kube: Kube, image: str, directory: str, version: str, scratch: Path) -> str:
    """``image`` with the artifact in ``directory`` retrained as ``version``, imported into the node."""
    artifact = scratch / "artifact"
    train = [str(ROOT / "scripts" / "train"), "--demo", RELEASE.model, "--version", version, "--output", str(artifact)]
    done = subprocess.run(train, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    name = subprocess.run(["buildah", "from", "--quiet", image], capture_output=True, text=True, check=True)
    container = name.stdout.strip()
    target = f"{image}-{RELEASE.model}-v{version}"
    try:
        mount = subprocess.run(["buildah", "mount", container], capture_output=True, text=True, check=True)
        inside = Path(mount.stdout.strip()) / directory.lstrip("/")
        shutil.rmtree(inside)
        shutil.copytree(artifact, inside)
        for item in [inside, *inside.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        subprocess.run(["buildah", "commit", "--quiet", container, target], capture_output=True, check=True)
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    kube.run([str(CLUSTER), "load-image", target])
    return target


@pytest.fixture(scope="module")
def loop(real_kube: Kube, node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    base = tmp_path_factory.mktemp("real-gitops")
    remote = Remote(base)
    repository, tag = node_image.rsplit(":", 1)
    # By tag, with dev's digest cleared: CI's set-image writes a pushed image's digest, and an image imported
    # into this node has no registry digest to write (the digest would win over the tag and name nothing here).
    yaml_edit(
        remote,
        ENV_VALUES,
        {"image.repository": repository, "image.tag": tag, "image.digest": "", "image.pullPolicy": "Never"},
    )
    commit(remote, f"Deploy image {node_image} to {ENV.name}")
    model = yaml.safe_load((ROOT / MODEL_VALUES).read_text())["model"]
    next_image = image_with_version(real_kube, node_image, model["imageDirectory"], "2", base)
    real_kube.restricted_namespace(ENV.namespace)
    source = yaml.safe_load((FLUX / "source" / "gitrepository.yaml").read_text())
    source["spec"]["url"] = remote.url
    assert HELM_RELEASE["spec"]["test"]["enable"] is True, "helm test gates every Flux release"
    real_kube.kubectl("create", "namespace", "flux-system", check=False)
    real_kube.apply([source, HELM_RELEASE])
    try:
        yield Loop(remote, node_image, next_image)
    finally:
        real_kube.kubectl(
            "delete",
            "-f",
            "-",
            "--wait=true",
            "--timeout=180s",
            input_text=yaml.safe_dump_all([HELM_RELEASE, source]),
            check=False,
        )
        remote.stop()


def settled(kube: Kube, what: str, revision: str) -> list[str]:
    """The HelmRelease Ready at ``revision`` with every pod of the release updated and ready; Helm's history."""

    def done() -> bool:
        hr = kube.json("get", "helmrelease", HELM_RELEASE["metadata"]["name"], "-n", "flux-system")
        acted = revision[:12] in hr.get("status", {}).get("lastAttemptedRevision", "")
        selector = f"app.kubernetes.io/instance={RELEASE.name}"
        deps = kube.json("get", "deployment", "-n", ENV.namespace, "-l", selector)["items"]
        status = deps[0].get("status", {}) if deps else {}
        rolled = status.get("replicas") == status.get("updatedReplicas") == status.get("readyReplicas") is not None
        return acted and condition(hr, "Ready").get("status") == "True" and rolled

    wait_for(what, done, timeout=420, interval=3, detail=lambda: flux_status(kube))
    entries = yaml.safe_load(kube.helm("history", RELEASE.name, "-n", ENV.namespace, "-o", "yaml").stdout)
    return [entry["status"] for entry in entries]


VERSIONS = """
import json, urllib.request
def get(path):
    request = urllib.request.Request({url!r} + path, headers={{"Connection": "close"}})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)
wait_reachable({url!r})  # dev's NetworkPolicy admits this new pod once the controller has its address
seen = {{}}
for _ in range(20):
    name = get("/v1/models")["models"][0]
    for version in get("/v2/models/" + name).get("versions", []):
        seen[version] = seen.get(version, 0) + 1
print(json.dumps(seen))
"""


def service_url(kube: Kube) -> str:
    """The release's Service by DNS name."""
    svc = kube.json("get", "service", "-n", ENV.namespace, "-l", f"app.kubernetes.io/instance={RELEASE.name}")
    service = svc["items"][0]
    return (
        f"http://{service['metadata']['name']}.{ENV.namespace}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    )


def served_versions(kube: Kube, image: str) -> set[str]:
    """The versions the release's pods answer with, asked 20 times through the Service by DNS name."""
    url = service_url(kube)
    phase, logs = run_client(kube, client_pod("versions", ENV.namespace, image, REACHABLE + VERSIONS.format(url=url)))
    assert phase == "Succeeded", logs
    return set(json.loads(logs.strip().splitlines()[-1]))


def test_a_commit_changing_the_model_version_reaches_the_pods(real_kube: Kube, loop: Loop):
    remote = loop.remote
    assert settled(real_kube, "Flux to install the release, helm test included", remote.git("rev-parse", "HEAD")) == [
        "deployed"
    ]
    assert served_versions(real_kube, loop.image) == {"1"}

    # A client streams real predictions on keep-alive connections through the Service from before the
    # commit until the new version serves alone: the GitOps rollout must not fail one of them.
    selector = f"app.kubernetes.io/instance={RELEASE.name},app.kubernetes.io/component!=test"
    before = {
        p["metadata"]["name"] for p in real_kube.json("get", "pods", "-n", ENV.namespace, "-l", selector)["items"]
    }
    client = start_stream(real_kube, "flux-client", ENV.namespace, loop.image, service_url(real_kube), connections=4)
    tag = loop.next_image.rsplit(":", 1)[1]
    yaml_edit(remote, ENV_VALUES, {"image.tag": tag})
    yaml_edit(remote, MODEL_VALUES, {"model.version": "2"})
    release = commit(remote, f"{ENV.name}: {RELEASE.model} version 2 (image {tag})")
    reconcile_source(real_kube, release)
    # Upgraded and tested, not remediated: a failed helm test would have rolled back to revision 1.
    assert settled(real_kube, "Flux to upgrade to model version 2", release) == ["superseded", "deployed"]
    wait_pods_gone(real_kube, ENV.namespace, before)
    time.sleep(3)
    streamed = stop_stream(real_kube, client)
    print(f"flux client: {json.dumps({k: v for k, v in streamed.items() if k != 'failures'})}")
    assert streamed["failed"] == 0, streamed
    assert set(streamed["versions"]) == {"1", "2"}, streamed
    # Version 1 answered first, version 2 last: the client saw the rollout from one side to the other.
    assert streamed["versions"]["1"]["first_s"] < streamed["versions"]["2"]["first_s"], streamed
    assert streamed["versions"]["2"]["last_s"] >= streamed["versions"]["1"]["last_s"], streamed
    assert served_versions(real_kube, loop.image) == {"2"}
    hr = real_kube.json("get", "helmrelease", HELM_RELEASE["metadata"]["name"], "-n", "flux-system")
    tested = condition(hr, "TestSuccess")
    assert tested.get("status") == "True", hr["status"]
    assert real_kube.events(ENV.namespace, "FailedCreate") == []
