"""Assertions over the parsed, rendered objects: defaults and every toggle."""

import shutil

import pytest
import yaml

from tests.kube import CHART, HELMS, by_kind, helm, one, template

CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]

DIGEST = "sha256:" + "c" * 64


def container(docs, name="server"):
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == name)


@pytest.fixture(scope="module")
def defaults():
    return template()


@pytest.mark.parametrize("binary", HELMS)
def test_defaults_render_the_same_with_helm_3_and_4(binary, defaults):
    assert template(binary=binary) == defaults


def test_default_objects(defaults):
    assert sorted(doc["kind"] for doc in defaults) == ["ConfigMap", "Deployment", "Pod", "Service", "ServiceAccount"]


def test_deployment_defaults(defaults):
    deployment = one(defaults, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["revisionHistoryLimit"] == 5
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    selector = spec["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": "rel"}
    pod = spec["template"]
    assert pod["metadata"]["annotations"]["checksum/config"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30
    server = container(defaults)
    assert server["image"] == "ghcr.io/model-server-gitops/model-server:0.1.0"
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    # Probes go to the health port, which the main port's connection cap and queue never touch.
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "health", "scheme": "HTTP"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "health", "scheme": "HTTP"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "health", "scheme": "HTTP"}
    assert {"name": "health", "containerPort": 8082, "protocol": "TCP"} in server["ports"]
    assert one(defaults, "ConfigMap")["data"]["MODEL_SERVER_HEALTH_PORT"] == "8082"
    assert server["resources"]["requests"] == {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "64Mi"}
    assert server["resources"]["limits"] == {"cpu": "2", "memory": "512Mi", "ephemeral-storage": "256Mi"}
    assert {"name": "tmp", "mountPath": "/tmp"} in server["volumeMounts"]


def test_security_defaults(defaults):
    pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    security = container(defaults)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_labels_and_selector_never_carry_a_version(defaults):
    for doc in defaults:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == ("model-server-test" if doc["kind"] == "Pod" else "model-server")
        assert labels["helm.sh/chart"] == f"model-server-{CHART_VERSION}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert "app.kubernetes.io/version" not in one(defaults, "Deployment")["spec"]["selector"]["matchLabels"]
    assert "app.kubernetes.io/version" not in one(defaults, "Service")["spec"]["selector"]
    assert "helm.sh/chart" not in one(defaults, "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_a_new_chart_version_alone_does_not_roll_the_pods(defaults, tmp_path):
    """Flux builds dev's chart from git as <version>+<commit>: a commit that changes nothing in the pod
    (another model's values, another environment) must not restart every model."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    chart_yaml = copy / "Chart.yaml"
    chart_yaml.write_text(
        chart_yaml.read_text().replace(f"version: {CHART_VERSION}", f"version: {CHART_VERSION}+0a1b2c")
    )
    docs = [d for d in yaml.safe_load_all(helm("template", "rel", str(copy), "--namespace", "ns").stdout) if d]
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == f"model-server-{CHART_VERSION}_0a1b2c"
    assert deployment["spec"]["template"] == one(defaults, "Deployment")["spec"]["template"]


def test_port_is_parameterized_end_to_end():
    docs = template(
        sets=(
            "containerPort=9090", "healthPort=9091", "service.port=8081", "service.portName=api",
            "grpc.containerPort=9092", "grpc.servicePort=9093",
        )
    )  # fmt: skip
    server = container(docs)
    assert server["ports"] == [
        {"name": "http", "containerPort": 9090, "protocol": "TCP"},
        {"name": "health", "containerPort": 9091, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 9092, "protocol": "TCP"},
    ]
    assert server["readinessProbe"]["httpGet"]["port"] == "health"
    assert one(docs, "ConfigMap")["data"]["PORT"] == "9090"
    assert one(docs, "ConfigMap")["data"]["MODEL_SERVER_HEALTH_PORT"] == "9091"
    api, grpc, health = one(docs, "Service")["spec"]["ports"]
    assert (api["name"], api["port"], api["targetPort"]) == ("api", 8081, "http")
    assert (grpc["name"], grpc["port"], grpc["targetPort"]) == ("grpc", 9093, "grpc")
    assert one(docs, "ConfigMap")["data"]["MODEL_SERVER_GRPC_PORT"] == "9092"
    assert (health["name"], health["port"], health["targetPort"]) == ("health", 9091, "health")
    assert "8081" in one(docs, "Pod")["spec"]["containers"][0]["args"][0]


@pytest.mark.parametrize("sets", [("healthPort=0",), ("server.workerClass=sync",)], ids=["off", "sync workers"])
def test_without_a_health_port_probes_and_scrapes_use_the_serving_port(sets):
    # A sync or gthread worker busy with a request answers no port, so the server refuses a health port
    # for them: the chart then renders none.
    docs = template(sets=(*sets, "serviceMonitor.enabled=true"))
    server = container(docs)
    assert [port["name"] for port in server["ports"]] == ["http", "grpc"]
    assert server["livenessProbe"]["httpGet"]["port"] == "http"
    assert one(docs, "ConfigMap")["data"]["MODEL_SERVER_HEALTH_PORT"] == "0"
    assert [port["name"] for port in one(docs, "Service")["spec"]["ports"]] == ["http", "grpc"]
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http"


def test_server_settings_reach_the_configmap_and_roll_pods():
    base = template()
    changed = template(sets=("server.workers=4", "server.logLevel=debug"))
    data = one(changed, "ConfigMap")["data"]
    assert data["MODEL_SERVER_WORKERS"] == "4"
    assert data["MODEL_SERVER_LOG_LEVEL"] == "debug"
    assert data["MODEL_SERVER_MODEL_DIR"] == "/models/default"
    checksum = lambda docs: one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
    assert checksum(base) != checksum(changed)
    # Only the settings count: labels and annotations on the ConfigMap roll nothing.
    assert checksum(template(sets=("commonAnnotations.team=ml", "image.tag=9.9.9"))) == checksum(base)


def test_digest_wins_over_tag():
    docs = template(sets=("image.tag=1.2.3", f"image.digest={DIGEST}"))
    assert container(docs)["image"] == f"ghcr.io/model-server-gitops/model-server@{DIGEST}"
    assert one(docs, "Deployment")["metadata"]["labels"]["app.kubernetes.io/version"] == "1.2.3"


def test_pvc_mode_creates_a_retained_claim():
    docs = template(
        sets=("model.mode=pvc", "model.pvc.size=2Gi", "model.subPath=m/1", "model.pvc.storageClassName=fast")
    )
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "rel-model-server-model"}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in container(docs)["volumeMounts"]
    assert one(docs, "ConfigMap")["data"]["MODEL_SERVER_MODEL_DIR"] == "/mnt/models/m/1"
    assert "helm.sh/resource-policy" not in str(
        template(sets=("model.mode=pvc", "model.pvc.size=1Gi", "model.pvc.retain=false"))
    )


def test_existing_claim_mode_mounts_it_without_creating_one():
    docs = template(sets=("model.mode=existingClaim", "model.existingClaim=models"))
    assert not by_kind(docs, "PersistentVolumeClaim")
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models"}} in volumes


def test_fetch_init_container_verifies_the_download():
    docs = template(
        sets=(
            "model.mode=emptyDir",
            "model.fetch.enabled=true",
            "model.fetch.url=https://x/m.tgz",
            f"model.fetch.sha256={'d' * 64}",
        )
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"] == ["python3", "-m", "model_server.fetch"]
    assert f"--sha256={'d' * 64}" in init["args"]
    assert "--dest=/mnt/models" in init["args"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": False} in container(docs)["volumeMounts"]


def test_autoscaling_replaces_replicas():
    docs = template(sets=("autoscaling.enabled=true", "autoscaling.targetMemoryUtilizationPercentage=75"))
    assert "replicas" not in one(docs, "Deployment")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]


def test_vpa_recommends_only_by_default():
    vpa = one(template(sets=("verticalPodAutoscaler.enabled=true",)), "VerticalPodAutoscaler")
    assert vpa["spec"]["updatePolicy"]["updateMode"] == "Off"


def test_pdb_uses_max_unavailable_unless_min_available_is_chosen():
    assert (
        one(template(sets=("podDisruptionBudget.enabled=true",)), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    )
    pdb = one(
        template(
            sets=(
                "podDisruptionBudget.enabled=true",
                "podDisruptionBudget.minAvailable=2",
                "podDisruptionBudget.maxUnavailable=null",
            )
        ),
        "PodDisruptionBudget",
    )
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]


def test_network_policy_denies_everything_but_listed_sources():
    docs = template("chart/ci/pvc-values.yaml")
    (policy,) = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "rel-model-server"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rule = policy["spec"]["ingress"][0]
    # Callers reach REST and the gRPC binding alike; nothing else.
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
    namespaces = [
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for s in rule["from"]
        if "namespaceSelector" in s
    ]
    # The scraper (monitoring) has a rule of its own, for the health port only (test_extensions.py).
    assert namespaces == ["frontend", "ingress-nginx"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}} in rule["from"]
    denied = one(template(sets=("networkPolicy.enabled=true", "tests.enabled=false")), "NetworkPolicy")
    assert denied["spec"]["ingress"] == []


def test_ingress_and_httproute_point_at_the_service():
    ingress = one(template("chart/ci/pvc-values.yaml"), "Ingress")
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {"name": "rel-model-server", "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    route = one(template("chart/ci/existing-claim-values.yaml"), "HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway"}]
    assert [m["path"]["value"] for m in route["spec"]["rules"][0]["matches"]] == ["/v2/models/penguins", "/v2/health"]
    prefixes = one(
        template(
            sets=("httpRoute.enabled=true", "httpRoute.parentRefs[0].name=gw", "httpRoute.pathPrefixes={/v1,/v2}")
        ),
        "HTTPRoute",
    )
    assert [m["path"]["value"] for m in prefixes["spec"]["rules"][0]["matches"]] == ["/v1", "/v2"]


def test_service_monitor_scrapes_metrics():
    monitor = one(
        template(sets=("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")), "ServiceMonitor"
    )
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_names_are_truncated_to_63_characters():
    docs = template("chart/ci/existing-claim-values.yaml")
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63
        assert not doc["metadata"]["name"].endswith("-")


def test_scheduling_values_pass_through_and_spread_gets_selector_labels():
    pod = one(template("chart/ci/existing-claim-values.yaml"), "Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "high"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "model-server"


def test_service_account_can_be_external_and_token_stays_off():
    docs = template(sets=("serviceAccount.create=false",))
    assert not by_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_helm_test_pod_checks_the_service_and_runs_as_argocd_post_sync(defaults):
    pod = one(defaults, "Pod")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert annotations["argocd.argoproj.io/hook"] == "PostSync"
    smoke = pod["spec"]["containers"][0]
    assert smoke["command"] == ["python3", "-m", "model_server.smoke"]
    assert smoke["args"] == [
        "--url=http://rel-model-server:80",
        "--grpc=rel-model-server:8081",
        "--expect-from=/models/default",
    ]
    # Without gRPC the test checks REST alone.
    rest_only = one(template(sets=("grpc.enabled=false",)), "Pod")["spec"]["containers"][0]["args"]
    assert rest_only == ["--url=http://rel-model-server:80", "--expect-from=/models/default"]
    assert not by_kind(template(sets=("tests.enabled=false",)), "Pod")


def test_configmap_sets_every_server_setting(defaults):
    # The chart and model_server/config.py must not drift: each setting is reachable from values.
    from model_server.config import FIELDS

    data = one(defaults, "ConfigMap")["data"]
    expected = {field.env for name, field in FIELDS.items() if name != "metrics_dir"}
    assert expected <= set(data), sorted(expected - set(data))
    assert data["MODEL_SERVER_WORKER_CLASS"] == "gevent"


def test_grpc_is_served_on_a_named_port_through_the_service_by_default(defaults):
    server = container(defaults)
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in server["ports"]
    assert one(defaults, "ConfigMap")["data"]["MODEL_SERVER_GRPC_PORT"] == "8081"
    service = one(defaults, "Service")["spec"]["ports"]
    assert {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"} in service
    off = template(sets=("grpc.enabled=false",))
    assert one(off, "ConfigMap")["data"]["MODEL_SERVER_GRPC_PORT"] == "0"
    assert "grpc" not in [port["name"] for port in one(off, "Service")["spec"]["ports"]]
    assert "grpc" not in [port["name"] for port in container(off)["ports"]]


def test_grpc_probes_call_the_health_service_by_name():
    server = container(template(sets=("grpc.probes=true",)))
    assert server["startupProbe"]["grpc"] == {"port": 8081, "service": "liveness"}
    assert server["livenessProbe"]["grpc"] == {"port": 8081, "service": "liveness"}
    assert server["readinessProbe"]["grpc"] == {"port": 8081, "service": "readiness"}
    assert "httpGet" not in server["readinessProbe"]


def test_a_grpcroute_joins_the_httproute_on_the_same_gateway():
    docs = template("chart/ci/existing-claim-values.yaml")
    route, http = one(docs, "GRPCRoute"), one(docs, "HTTPRoute")
    assert route["spec"]["parentRefs"] == http["spec"]["parentRefs"]
    assert route["spec"]["rules"][0]["matches"] == [
        {"method": {"type": "Exact", "service": "inference.GRPCInferenceService"}}
    ]
    service = http["spec"]["rules"][0]["backendRefs"][0]["name"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": service, "port": 8081}]
    assert by_kind(template("chart/ci/existing-claim-values.yaml", sets=("grpc.enabled=false",)), "GRPCRoute") == []
