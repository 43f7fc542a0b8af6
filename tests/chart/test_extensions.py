"""Extension points and the values added for multi-model GitOps: each renders where it should, nowhere else."""

import pytest

from tests.kube import CHART, by_kind, one, template

SHA = "ab" * 32


def pod_spec(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def test_model_pin_and_server_outputs_reach_the_configmap():
    data = one(
        template(
            sets=(
                "model.version=v3",
                f"model.sha256={SHA}",
                "server.defaultOutputs={predict,predict_proba}",
                "server.trustedTypes={pkg.mod.A,pkg.mod.B}",
            )
        ),
        "ConfigMap",
    )["data"]
    assert data["MODEL_SERVER_EXPECTED_VERSION"] == "v3"
    assert data["MODEL_SERVER_EXPECTED_SHA256"] == SHA
    assert data["MODEL_SERVER_DEFAULT_OUTPUTS"] == "predict,predict_proba"
    assert data["MODEL_SERVER_TRUSTED_TYPES"] == "pkg.mod.A,pkg.mod.B"
    defaults = one(template(), "ConfigMap")["data"]
    assert (defaults["MODEL_SERVER_EXPECTED_VERSION"], defaults["MODEL_SERVER_EXPECTED_SHA256"]) == ("", "")
    assert (defaults["MODEL_SERVER_DEFAULT_OUTPUTS"], defaults["MODEL_SERVER_TRUSTED_TYPES"]) == ("predict", "")


@pytest.mark.parametrize(
    ("repository", "registry", "expected"),
    [
        ("ghcr.io/org/model-server", "mirror.example.com:5000", "mirror.example.com:5000/org/model-server"),
        ("localhost/model-server", "mirror.example.com/cache", "mirror.example.com/cache/model-server"),
        ("org/model-server", "mirror.example.com", "mirror.example.com/org/model-server"),
        ("ghcr.io/org/model-server", "", "ghcr.io/org/model-server"),
    ],
)
def test_global_image_registry_replaces_the_registry_of_every_image(repository, registry, expected):
    docs = template(sets=(f"image.repository={repository}", f"global.imageRegistry={registry}", "image.tag=t1"))
    assert pod_spec(docs)["containers"][0]["image"] == f"{expected}:t1"
    assert one(docs, "Pod")["spec"]["containers"][0]["image"] == f"{expected}:t1"


def test_pull_secrets_merge_global_first_each_once_on_every_pod():
    docs = template("chart/ci/pvc-values.yaml")
    expected = [{"name": "mirror-cred"}, {"name": "regcred"}]
    assert pod_spec(docs)["imagePullSecrets"] == expected
    assert "imagePullSecrets" not in pod_spec(template())


def test_common_labels_and_annotations_reach_every_object_but_no_selector():
    docs = template("chart/ci/pvc-values.yaml")
    assert len(docs) >= 12
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "ml-platform", doc["kind"]
        assert doc["metadata"]["annotations"]["example.com/owner"] == "ml-platform", doc["kind"]
    pod = one(docs, "Deployment")["spec"]["template"]["metadata"]
    assert pod["labels"]["team"] == "ml-platform"
    assert "team" not in one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert "team" not in one(docs, "Service")["spec"]["selector"]
    # An object's own annotations win over and sit beside the common ones.
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["annotations"]
    assert claim["helm.sh/resource-policy"] == "keep"


def test_deployment_annotations_are_on_the_deployment_only():
    docs = template("chart/ci/existing-claim-values.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["annotations"] == {"example.com/cost-center": "42"}
    assert "example.com/cost-center" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert "annotations" not in one(template(), "Deployment")["metadata"]


def test_a_retained_claim_is_kept_by_helm_flux_and_argocd():
    annotations = one(template(sets=("model.mode=pvc", "model.pvc.size=1Gi")), "PersistentVolumeClaim")["metadata"][
        "annotations"
    ]
    assert annotations == {
        "helm.sh/resource-policy": "keep",
        "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",
    }


def test_extra_containers_are_templated_and_get_the_restricted_security_context():
    docs = template("chart/ci/existing-claim-values.yaml")
    spec = pod_spec(docs)
    shipper = next(c for c in spec["containers"] if c["name"] == "log-shipper")
    assert shipper["image"] == f"ghcr.io/model-server-gitops/model-server-log-shipper:1.0@sha256:{'4' * 64}"
    assert shipper["args"] == ["--source=/tmp", "--release=rel"]
    assert "runAsUser" not in shipper["securityContext"], "its own securityContext is kept as written"
    init = spec["initContainers"]
    assert [c["name"] for c in init] == ["warm-cache"]
    assert init[0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert init[0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_extra_init_containers_run_after_the_model_fetch():
    docs = template(
        "chart/ci/emptydir-fetch-values.yaml",
        sets=("extraInitContainers[0].name=after", "extraInitContainers[0].image=busybox"),
    )
    assert [c["name"] for c in pod_spec(docs)["initContainers"]] == ["fetch-model", "after"]


def test_rollout_on_hashes_the_named_configmaps_and_secrets_into_the_pod():
    annotations = lambda docs: one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert "checksum/referenced" not in annotations(template())
    one_map = annotations(template(sets=("rolloutOn.configMaps={ca}",)))["checksum/referenced"]
    assert len(one_map) == 64
    assert annotations(template(sets=("rolloutOn.configMaps={ca}",)))["checksum/referenced"] == one_map
    assert (
        annotations(template(sets=("rolloutOn.configMaps={ca}", "rolloutOn.secrets={keys}")))["checksum/referenced"]
        != one_map
    )


def test_extra_objects_render_maps_and_templated_strings():
    docs = template("chart/ci/existing-claim-values.yaml")
    names = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    assert names["rel-shipper-config"]["data"] == {"target": "https://logs.example.com"}
    assert names["rel-notes"]["data"] == {"model": "penguins-prod"}


def server_policy(docs: list[dict]) -> dict:
    """The NetworkPolicy of the server's pods (the other one is the test Pod's)."""
    (policy,) = [d for d in by_kind(docs, "NetworkPolicy") if not d["metadata"]["name"].endswith("-test")]
    return policy


def test_network_policy_admits_the_gateway_the_scraper_the_test_pod_and_extra_rules():
    docs = template("chart/ci/existing-claim-values.yaml")
    policy = server_policy(docs)["spec"]
    sources = policy["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}} in sources
    test_pod = one(docs, "Pod")["metadata"]["labels"]
    admitted = [s["podSelector"]["matchLabels"] for s in sources if set(s) == {"podSelector"}]
    assert any(all(test_pod.get(k) == v for k, v in selector.items()) for selector in admitted)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    # DNS narrowed to kube-dns, then extraEgress: the API server (auth.jwks.url) and the sidecar's sink.
    assert policy["egress"][0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert [rule["to"] for rule in policy["egress"][1:]] == [
        [{"ipBlock": {"cidr": "10.96.0.1/32"}}],
        [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
    ]
    extra = server_policy(template("chart/ci/pvc-values.yaml"))["spec"]
    # Callers reach the serving port; the scraper only the health port, where /metrics is; then extraIngress.
    callers, scraper, extra_rule = extra["ingress"]
    assert callers["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
    assert scraper == {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
        "ports": [{"port": "health", "protocol": "TCP"}],
    }
    assert all("monitoring" not in str(source) for source in callers["from"])
    assert extra_rule["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    assert extra["policyTypes"] == ["Ingress", "Egress"]
    # DNS, the artifact host (its block, the https port), then extraEgress.
    assert [rule["ports"][0]["port"] for rule in extra["egress"]] == [53, 443, 4317]
    assert extra["egress"][1]["to"] == [{"ipBlock": {"cidr": "198.51.100.0/24"}}]


def test_the_test_pod_is_selected_by_its_own_policy_and_no_service_pdb_or_server_policy():
    docs = template("chart/ci/pvc-values.yaml")
    labels = one(docs, "Pod")["metadata"]["labels"]
    selectors = [
        one(docs, "Service")["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        server_policy(docs)["spec"]["podSelector"]["matchLabels"],
        one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert not all(labels.get(k) == v for k, v in selector.items()), selector
    (own,) = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "rel-model-server-test"]
    assert all(labels.get(k) == v for k, v in own["spec"]["podSelector"]["matchLabels"].items())


def test_http_route_matches_filters_and_timeouts():
    rule = one(template("chart/ci/existing-claim-values.yaml"), "HTTPRoute")["spec"]["rules"][0]
    assert rule["matches"][0] == {"path": {"type": "PathPrefix", "value": "/v2/models/penguins"}}
    assert rule["matches"][1]["method"] == "GET"
    assert rule["filters"][0]["type"] == "RequestHeaderModifier"
    assert rule["timeouts"] == {"request": "30s", "backendRequest": "25s"}
    plain = one(template(sets=("httpRoute.enabled=true", "httpRoute.parentRefs[0].name=gw")), "HTTPRoute")["spec"][
        "rules"
    ][0]
    assert plain["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert "filters" not in plain
    assert "timeouts" not in plain


def default_scheme(monitor: dict) -> str:
    return monitor["spec"]["endpoints"][0]["scheme"]


def test_service_monitor_namespace_job_label_honor_labels_and_tls():
    monitor = one(template("chart/ci/pvc-values.yaml"), "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ns"]}
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    # With the server's TLS the scrape is https, verified with the CA in the TLS Secret for the Service's
    # name, and carries the metrics token; an operator's own tlsConfig wins.
    tls = one(template("chart/ci/existing-claim-values.yaml"), "ServiceMonitor")["spec"]["endpoints"][0]
    name = "a-very-long-full-name-override-that-goes-past-the-sixty-three-c"
    assert tls["scheme"] == "https"
    assert tls["tlsConfig"] == {"serverName": f"{name}.ns.svc", "ca": {"secret": {"name": name, "key": "ca.crt"}}}
    assert tls["authorization"] == {"type": "Bearer", "credentials": {"name": "prometheus-model-token", "key": "token"}}
    own = one(template("chart/ci/pvc-values.yaml"), "ServiceMonitor")["spec"]["endpoints"][0]
    assert own["tlsConfig"]["serverName"] == "model.example.com"
    assert default_scheme(one(template(sets=("serviceMonitor.enabled=true",)), "ServiceMonitor")) == "http"
    default = one(template(sets=("serviceMonitor.enabled=true",)), "ServiceMonitor")
    assert default["metadata"]["namespace"] == "ns"
    assert "jobLabel" not in default["spec"]
    assert default["spec"]["endpoints"][0]["honorLabels"] is False


def test_values_file_comments_document_every_key():
    # helm-docs reads `# --` comments; a key without one shows up undocumented in chart/README.md.
    readme = (CHART / "README.md").read_text()
    for key in (
        "global.imageRegistry",
        "global.imagePullSecrets",
        "commonLabels",
        "commonAnnotations",
        "deploymentAnnotations",
        "extraContainers",
        "extraInitContainers",
        "extraObjects",
        "rolloutOn.configMaps",
        "rolloutOn.secrets",
        "networkPolicy.extraIngress",
        "networkPolicy.extraEgress",
        "networkPolicy.gatewayNamespace",
        "httpRoute.matches",
        "httpRoute.filters",
        "httpRoute.timeouts",
        "serviceMonitor.namespace",
        "serviceMonitor.jobLabel",
        "serviceMonitor.honorLabels",
        "serviceMonitor.tlsConfig",
        "server.defaultOutputs",
        "server.trustedTypes",
        "model.version",
        "model.sha256",
        "prometheusRule.enabled",
        "grafanaDashboard.enabled",
    ):
        line = next((ln for ln in readme.splitlines() if ln.startswith(f"| {key} |")), None)
        assert line, f"{key} missing from chart/README.md"
        assert line.rstrip(" |").split("|")[-1].strip(), f"{key} has no description"
