"""The real node itself: a kubelet on containerd that runs pods, kube-proxy, cluster DNS, metrics, loopback."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from msops import gobuild, node

from tests.cluster.conftest import Kube, client_pod, run_client, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NODE_PROCESSES = {"containerd", "kubelet", "kube-proxy", "kube-router", "coredns", "metrics-server"}


def test_the_node_is_ready_on_containerd_with_the_pinned_kubelet(real_kube: Kube):
    nodes = real_kube.json("get", "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == [node.NAME], "only the real node, no kwok node"
    info = nodes[0]["status"]["nodeInfo"]
    assert info["kubeletVersion"] == gobuild.COMPONENTS["kubernetes-node"].version
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    addresses = {a["type"]: a["address"] for a in nodes[0]["status"]["addresses"]}
    assert addresses["InternalIP"] == node.NODE_IP
    ready = next(c for c in nodes[0]["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready


def test_status_lists_the_node_processes_running(real_kube: Kube):
    running = set(re.findall(r"^(\S+)\s+pid \d+\s+running$", real_kube.status(), re.M))
    assert running >= NODE_PROCESSES


def test_node_processes_listen_on_loopback_or_the_node_address_only(real_kube: Kube):
    pids = {int(pid) for pid in re.findall(r"pid (\d+)\s+running", real_kube.status())}
    sockets = subprocess.run(["ss", "-Hltunp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in sockets.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert any(f"{node.NODE_IP}:10250" in line for line in ours), "the kubelet serves on the node address"
    allowed = rf"\s(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]|{re.escape(node.NODE_IP)}):\d+\s"
    assert [line for line in ours if not re.search(allowed, line)] == []


def test_a_pod_resolves_services_through_cluster_dns_and_reaches_the_kubelet_metrics_api(
    real_kube: Kube, node_image: str
):
    real_kube.kubectl("create", "namespace", "e2e-dns", check=False)
    script = (
        "import json, socket\n"
        "print(json.dumps({n: socket.gethostbyname(n) for n in "
        "('kubernetes.default.svc.cluster.local', 'kube-dns.kube-system.svc.cluster.local')}))\n"
    )
    phase, logs = run_client(real_kube, client_pod("dns", "e2e-dns", node_image, script))
    assert phase == "Succeeded", logs
    answers = json.loads(logs.strip().splitlines()[-1])
    service_ip = real_kube.json("get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    assert answers == {
        "kubernetes.default.svc.cluster.local": service_ip,
        "kube-dns.kube-system.svc.cluster.local": node.DNS_IP,
    }
    # metrics-server reads the kubelet: the node's CPU is a real, non-zero measurement.
    usage = wait_for(
        "node metrics from metrics-server",
        lambda: (
            real_kube.run(
                [real_kube.kubectl_bin, "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{node.NAME}"], check=False
            ).stdout
        ),
        timeout=90,
    )
    assert json.loads(usage)["usage"]["cpu"] not in ("", "0")
    real_kube.kubectl("delete", "namespace", "e2e-dns", "--wait=false")
