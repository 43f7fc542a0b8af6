"""The local control plane itself: the pinned versions, RBAC and Pod Security on, loopback only."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from msops import gobuild

from tests.cluster.conftest import Kube

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

COMPONENTS = {
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
    "source-controller",
    "helm-controller",
}


def test_status_lists_every_component_running(kube: Kube):
    status = kube.status()
    running = set(re.findall(r"^(\S+)\s+pid \d+\s+running$", status, re.M))
    assert running >= COMPONENTS, status
    assert re.search(r"^kube-apiserver /readyz\s+ok$", status, re.M), status


def test_every_process_listens_on_loopback_only(kube: Kube):
    pids = {int(pid) for pid in re.findall(r"pid (\d+)\s+running", kube.status())}
    sockets = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in sockets.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert ours, "the cluster's processes listen somewhere"
    exposed = [line for line in ours if not re.search(r"\s(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]):\d+\s", line)]
    assert exposed == []


def test_api_server_is_the_pinned_release_with_rbac_and_pod_security(kube: Kube):
    version = json.loads(kube.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == gobuild.COMPONENTS["kubernetes"].version
    # RBAC: a namespace's default service account may not read secrets.
    can = kube.run(
        [kube.kubectl_bin, "auth", "can-i", "list", "secrets", "--as", "system:serviceaccount:default:default"],
        check=False,
    )
    assert can.stdout.strip() == "no"
    # Pod Security admission: a privileged pod is refused in a restricted namespace.
    kube.restricted_namespace("e2e-pss")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": "e2e-pss"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    refused = kube.run([kube.kubectl_bin, "apply", "-f", "-"], input_text=json.dumps(pod), check=False)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr
    kube.kubectl("delete", "namespace", "e2e-pss", "--wait=false")


def test_nodes_are_kwok_nodes_across_three_zones(kube: Kube):
    nodes = kube.json("get", "nodes")["items"]
    assert len(nodes) == 3
    assert {n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes} == {"zone-a", "zone-b", "zone-c"}
    assert all(c["status"] == "True" for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready")
