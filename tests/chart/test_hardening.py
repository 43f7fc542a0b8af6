"""What the third-party scorers asked of the chart: egress policies, spread over nodes, ephemeral storage."""

import pytest

from tests.kube import by_kind, one, template

DNS = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
FETCH = ("model.mode=emptyDir", "model.fetch.enabled=true", "model.fetch.sha256=" + "a" * 64)


def policies(*sets: str) -> dict[str, dict]:
    """Each NetworkPolicy's spec, by name."""
    docs = template(sets=("networkPolicy.enabled=true", *sets))
    return {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "NetworkPolicy")}


def test_the_server_reaches_only_dns_by_default():
    server = policies()["rel-model-server"]
    assert server["policyTypes"] == ["Ingress", "Egress"]
    assert server["egress"] == [DNS]


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://models.example.com/m.tar.gz", 443),
        ("http://models.internal/m.tar.gz", 80),
        ("http://models.internal:8081/m.tar.gz", 8081),
        ("https://[2001:db8::1]:8443/m.tar.gz", 8443),
    ],
)
def test_the_fetch_init_container_reaches_the_port_of_its_url(url, port):
    server = policies(*FETCH, f"model.fetch.url={url}")["rel-model-server"]
    assert server["egress"] == [DNS, {"ports": [{"port": port, "protocol": "TCP"}]}]


def test_fetch_peers_and_ports_can_be_narrowed():
    server = policies(
        *FETCH,
        "model.fetch.url=http://store.models.svc/m.tar.gz",
        "networkPolicy.egress.fetchTo[0].ipBlock.cidr=10.20.0.0/16",
        "networkPolicy.egress.fetchPorts[0].port=8080",
        "networkPolicy.egress.fetchPorts[0].protocol=TCP",
        "networkPolicy.egress.dnsTo[0].namespaceSelector.matchLabels.team=dns",
    )["rel-model-server"]
    dns, fetch = server["egress"]
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"team": "dns"}}}]
    assert fetch == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 8080, "protocol": "TCP"}]}


def test_extra_egress_is_added_to_dns_and_the_fetch_host():
    extra = "networkPolicy.extraEgress[0].ports[0].port=4317"
    assert policies(extra)["rel-model-server"]["egress"] == [DNS, {"ports": [{"port": 4317}]}]


def test_egress_filtering_off_leaves_egress_to_extra_egress_alone():
    off = "networkPolicy.egress.enabled=false"
    assert policies(off)["rel-model-server"]["policyTypes"] == ["Ingress"]
    assert "egress" not in policies(off)["rel-model-server"]
    only = policies(off, "networkPolicy.extraEgress[0].ports[0].port=443")["rel-model-server"]
    assert only["policyTypes"] == ["Ingress", "Egress"]
    assert only["egress"] == [{"ports": [{"port": 443}]}]
    assert policies(off)["rel-model-server-test"]["policyTypes"] == ["Ingress"]


def test_the_test_pod_admits_nothing_and_reaches_dns_and_the_server_ports():
    test = policies("containerPort=9000", "grpc.containerPort=9001")["rel-model-server-test"]
    assert test["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "rel",
        "app.kubernetes.io/component": "test",
    }
    assert test["policyTypes"] == ["Ingress", "Egress"]
    assert test["ingress"] == []
    server_pods = {"matchLabels": {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": "rel"}}
    # The Service's ports are 80 and 8081, but the policy sees the connection after the Service forwarded it:
    # the smoke check calls REST and gRPC (before gRPC was admitted here, the helm test failed on it).
    ports = [{"port": 9000, "protocol": "TCP"}, {"port": 9001, "protocol": "TCP"}]
    assert test["egress"] == [DNS, {"to": [{"podSelector": server_pods}], "ports": ports}]
    rest_only = policies("containerPort=9000", "grpc.enabled=false")["rel-model-server-test"]
    assert rest_only["egress"][1]["ports"] == [{"port": 9000, "protocol": "TCP"}]
    assert "rel-model-server-test" not in policies("tests.enabled=false")


def affinity(*sets: str, values: tuple[str, ...] = ()) -> dict | None:
    spec = one(template(*values, sets=sets), "Deployment")["spec"]["template"]["spec"]
    return spec.get("affinity")


def test_replicas_prefer_different_nodes_by_default():
    (term,) = affinity()["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {
            "matchLabels": {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": "rel"}
        },
    }


def test_hard_anti_affinity_requires_different_nodes_and_affinity_replaces_the_preset():
    (term,) = affinity("podAntiAffinityPreset=hard")["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert affinity("podAntiAffinityPreset=") is None
    own = affinity(values=("chart/ci/existing-claim-values.yaml",))
    assert own["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100
    assert own["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "labelSelector"
    ] == {"matchLabels": {"app.kubernetes.io/name": "model-server"}}, "the values' own affinity, not the preset"


def test_every_container_requests_and_limits_ephemeral_storage_and_cpu():
    docs = template(sets=(*FETCH, "model.fetch.url=https://models.example.com/m.tar.gz"))
    pods = [one(docs, "Deployment")["spec"]["template"]["spec"], one(docs, "Pod")["spec"]]
    containers = [c for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]
    assert [c["name"] for c in containers] == ["fetch-model", "server", "smoke"]
    for c in containers:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory", "ephemeral-storage"} <= set(c["resources"][kind]), (c["name"], kind)
