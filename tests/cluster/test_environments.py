"""Every model release of every environment in environments.yaml, installed with Helm into a real API server.

Release names, namespace, chart version and values files come from the declaration, exactly as
Argo CD and Flux get them. Each namespace enforces the restricted Pod Security Standard, so a pod the chart renders that
the admission controller refuses shows up as a FailedCreate event and a Deployment that never
becomes Available.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from msops import environments, manifests, render, values

from tests.cluster.conftest import ROLLOUT_UPGRADE, Kube, read_only_claim, wait_for
from tests.kube import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DECL = environments.load()
ENVS = list(DECL.environments.values())
# Every (environment, release): one Helm release per model.
RELEASES = [(env, release) for env in ENVS for release in env.releases]
CHART_DEFAULTS = yaml.safe_load((ROOT / DECL.chart / "values.yaml").read_text())


def release_id(item: tuple) -> str:
    return f"{item[0].name}-{item[1].model}"


@functools.cache
def effective_values(env: environments.Environment, release: environments.Release | None = None) -> dict:
    """Chart defaults with the release's values files over them (the first release's when none is named)."""
    return values.coalesce(CHART_DEFAULTS, values.release_values(release or env.releases[0]))


def expected_replicas(env: environments.Environment) -> int:
    """The Deployment's replicas once settled."""
    merged = effective_values(env)
    if merged["rollout"]["enabled"]:
        # The Argo Rollout runs the pods and the Deployment only holds their template (0 replicas). This cluster
        # runs no Rollouts controller (kwok runs no pod a canary could be judged on): the Rollout's pods, its
        # canary and the judgement are proved on the real node (test_real_node_environments.py).
        return 0
    # With the HPA on, the chart leaves replicas to it and the HPA raises them to minReplicas.
    return merged["autoscaling"]["minReplicas"] if merged["autoscaling"]["enabled"] else merged["replicaCount"]


def model_store(kube: Kube, env: environments.Environment) -> None:
    """The platform side of model.mode=existingClaim: a bound, read-only claim the release mounts."""
    model = effective_values(env)["model"]
    if model["mode"] != "existingClaim":
        return
    pv_name = f"{env.namespace}-{model['existingClaim']}"
    read_only_claim(kube, env.namespace, model["existingClaim"], pv_name, f"/srv/model-store/{env.name}")


def helm_args(
    env: environments.Environment, release: environments.Release, chart: Path, namespace: str | None = None
) -> list[str]:
    """Release, chart, namespace and values files exactly as the declaration gives them."""
    args = [release.name, str(chart), "--namespace", namespace or env.namespace]
    for file in release.values_files:
        args += ["--values", str(ROOT / file)]
    return args


def deployment(kube: Kube, env: environments.Environment, release: environments.Release) -> dict:
    names = kube.kubectl(
        "get", "deployment", "-n", env.namespace, "-l", f"app.kubernetes.io/instance={release.name}", "-o", "name"
    ).split()
    assert len(names) == 1, f"expected one Deployment of release {release.name}, got {names}"
    return kube.json("get", names[0], "-n", env.namespace)


def wait_rolled_out(kube: Kube, env: environments.Environment, release: environments.Release, replicas: int) -> dict:
    def done() -> dict | None:
        dep = deployment(kube, env, release)
        status = dep.get("status", {})
        available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", []))
        settled = status.get("observedGeneration") == dep["metadata"]["generation"]
        # (a count of 0 is left out of the status)
        counts = (status.get("updatedReplicas", 0), status.get("readyReplicas", 0), status.get("replicas", 0))
        return dep if available and settled and counts == (replicas, replicas, replicas) else None

    return wait_for(
        f"{env.name}/{release.model} Deployment Available with {replicas} updated, ready replicas", done, timeout=180
    )


def replica_sets(kube: Kube, env: environments.Environment, dep: dict) -> dict[str, dict]:
    """Revision -> ReplicaSet owned by the Deployment."""
    owned = {}
    for rs in kube.json("get", "replicaset", "-n", env.namespace)["items"]:
        if any(ref["uid"] == dep["metadata"]["uid"] for ref in rs["metadata"].get("ownerReferences", [])):
            owned[rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]] = rs
    return owned


@pytest.fixture(scope="module")
def installed(kube: Kube) -> dict[str, dict]:
    """Every model of every environment installed once (helm install --wait), from the chart version the
    environment pins; the tests below inspect and then roll each."""
    deployments = {}
    for env in ENVS:
        kube.restricted_namespace(env.namespace)
        model_store(kube, env)
        with render.chart_dir(DECL, env) as chart:
            for release in env.releases:
                kube.helm("install", *helm_args(env, release, chart), "--wait", "--timeout", "4m")
                deployments[release_id((env, release))] = wait_rolled_out(kube, env, release, expected_replicas(env))
    return deployments


@pytest.mark.parametrize(("env", "release"), RELEASES, ids=[release_id(item) for item in RELEASES])
def test_install_is_available_admitted_and_accepted(
    kube: Kube, installed: dict, env: environments.Environment, release: environments.Release
):
    dep = installed[release_id((env, release))]
    assert dep["status"].get("readyReplicas", 0) == expected_replicas(env)
    assert kube.events(env.namespace, "FailedCreate") == [], "Pod Security (or quota) rejected a pod"
    pods = kube.json("get", "pods", "-n", env.namespace, "-l", f"app.kubernetes.io/instance={release.name}")
    assert all(pod["spec"].get("nodeName") for pod in pods["items"]), "every pod is scheduled onto a kwok node"
    # Everything Helm rendered exists in the API server, custom resources (ServiceMonitor) included.
    manifest = kube.helm("get", "manifest", release.name, "-n", env.namespace).stdout
    kinds = set()
    for doc in (d for d in yaml.safe_load_all(manifest) if d):
        kube.kubectl(
            "get",
            f"{doc['kind']}.{doc['apiVersion'].split('/')[0]}" if "/" in doc["apiVersion"] else doc["kind"],
            doc["metadata"]["name"],
            "-n",
            env.namespace,
        )
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    merged = effective_values(env, release)
    if merged["serviceMonitor"]["enabled"]:
        assert "ServiceMonitor" in kinds
    if merged["prometheusRule"]["enabled"]:
        assert "PrometheusRule" in kinds
    if merged["autoscaling"]["enabled"]:
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    if merged["rollout"]["enabled"]:
        assert {"Rollout", "AnalysisTemplate"} <= kinds
        rollout = kube.json("get", "rollouts.argoproj.io", "-n", env.namespace, "-l",
                            f"app.kubernetes.io/instance={release.name}")["items"]  # fmt: skip
        assert [item["spec"]["workloadRef"]["name"] for item in rollout] == [dep["metadata"]["name"]]
    config = next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ConfigMap" and "PORT" in d["data"])
    assert config["data"]["MODEL_SERVER_EXPECTED_VERSION"] == merged["model"]["version"]
    # The image pins a baked artifact (no sha256: each build has another); the model store's by sha256.
    baked = merged["model"]["mode"] == "image"
    assert config["data"]["MODEL_SERVER_EXPECTED_SHA256"] == ("" if baked else merged["model"]["sha256"])
    assert baked or len(config["data"]["MODEL_SERVER_EXPECTED_SHA256"]) == 64


@pytest.mark.parametrize(("env", "release"), RELEASES, ids=[release_id(item) for item in RELEASES])
def test_the_helm_test_pod_is_admitted(
    kube: Kube, installed: dict, env: environments.Environment, release: environments.Release
):
    """kwok cannot run the smoke test, so `helm test` proves nothing here; admission is what can be proved.

    The test Pod's own command runs against a real server in tests/image (container tests)."""
    rendered = render.render(DECL, env, release)
    pod = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod["metadata"]["name"] += "-admission"
    created = kube.apply(pod, "-n", env.namespace)
    assert "created" in created
    scheduled = wait_for(
        "the test Pod to be scheduled",
        lambda: kube.json("get", "pod", pod["metadata"]["name"], "-n", env.namespace)["spec"].get("nodeName"),
    )
    assert scheduled.startswith("kwok-node-")
    kube.kubectl("delete", "pod", pod["metadata"]["name"], "-n", env.namespace, "--wait=false")


@pytest.mark.parametrize("env", ENVS, ids=lambda env: env.name)
def test_upgrade_rolls_a_new_replicaset_and_rollback_restores_it(
    kube: Kube, installed: dict, env: environments.Environment
):
    # One model per environment is rolled; the other must not move (its own release).
    release, other = env.releases[0], env.releases[-1]
    untouched = deployment(kube, env, other)["metadata"]["generation"]
    replicas = expected_replicas(env)
    before = wait_rolled_out(kube, env, release, replicas)
    first_rs = replica_sets(kube, env, before)[before["metadata"]["annotations"]["deployment.kubernetes.io/revision"]]
    first_hash = first_rs["metadata"]["labels"]["pod-template-hash"]

    with render.chart_dir(DECL, env) as chart:
        kube.helm("upgrade", *helm_args(env, release, chart), *ROLLOUT_UPGRADE)
    upgraded = wait_rolled_out(kube, env, release, replicas)
    assert upgraded["spec"]["template"]["metadata"]["annotations"]["e2e/rollout"] == "upgrade"
    new_rs = replica_sets(kube, env, upgraded)[upgraded["metadata"]["annotations"]["deployment.kubernetes.io/revision"]]
    assert new_rs["metadata"]["labels"]["pod-template-hash"] != first_hash, "the upgrade rolled a new ReplicaSet"

    history = yaml.safe_load(kube.helm("history", release.name, "-n", env.namespace, "-o", "yaml").stdout)
    first_revision = min(entry["revision"] for entry in history)
    kube.helm("rollback", release.name, str(first_revision), "-n", env.namespace, "--wait", "--timeout", "4m")
    restored = wait_rolled_out(kube, env, release, replicas)
    assert "e2e/rollout" not in (restored["spec"]["template"]["metadata"].get("annotations") or {})
    current = replica_sets(kube, env, restored)[
        restored["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
    ]
    assert current["metadata"]["labels"]["pod-template-hash"] == first_hash, (
        "rollback brought back the first ReplicaSet"
    )
    assert kube.events(env.namespace, "FailedCreate") == []
    if other != release:
        assert deployment(kube, env, other)["metadata"]["generation"] == untouched


@pytest.mark.parametrize(("env", "release"), RELEASES, ids=[release_id(item) for item in RELEASES])
def test_rendered_output_passes_server_side_dry_run(
    kube: Kube, installed: dict, env: environments.Environment, release: environments.Release
):
    rendered = render.render(DECL, env, release)
    out = kube.kubectl("apply", "--dry-run=server", "-n", env.namespace, "-f", "-", input_text=rendered)
    assert "(server dry run)" in out


def test_gitops_manifests_pass_server_side_dry_run(kube: Kube):
    """The Argo CD and Flux manifests of every environment, against the real CRDs."""
    for namespace in ("argocd", "flux-system"):
        kube.kubectl("create", "namespace", namespace, check=False)
    # kustomization.yaml and kustomizeconfig.yaml are kustomize's build instructions, not objects.
    files = manifests.object_files(ROOT)
    assert files
    for path in files:
        out = kube.kubectl("apply", "--dry-run=server", "-f", str(path))
        assert "(server dry run)" in out, f"{path.relative_to(ROOT)}: {out}"


def test_helm4_installs_the_chart_with_an_http_route(kube: Kube, tmp_path: Path):
    """Helm 4 installs too; the Gateway API HTTPRoute and GRPCRoute (off in every environment) are accepted with
    their CRDs."""
    dev = DECL.get("dev")
    release = dev.releases[0]
    namespace = f"{dev.namespace}-helm4"
    kube.restricted_namespace(namespace)
    extra = tmp_path / "route.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "httpRoute": {
                    "enabled": True,
                    "parentRefs": [{"name": "public", "namespace": "gateway"}],
                    "hostnames": ["model.dev.example.com"],
                },
                # dev's NetworkPolicy admits the Gateway's proxies only when told where they run.
                "networkPolicy": {"gatewayNamespace": "gateway"},
            }
        )
    )
    kube.helm(
        "install",
        *helm_args(dev, release, ROOT / DECL.chart, namespace),
        "--values",
        str(extra),
        "--wait",
        "--timeout",
        "4m",
        binary="helm4",
    )
    routes = kube.json("get", "httproute", "-n", namespace)["items"]
    assert [r["spec"]["hostnames"] for r in routes] == [["model.dev.example.com"]]
    grpc_routes = kube.json("get", "grpcroute", "-n", namespace)["items"]
    assert [r["spec"]["hostnames"] for r in grpc_routes] == [["model.dev.example.com"]]
    assert kube.events(namespace, "FailedCreate") == []
    kube.helm("uninstall", release.name, "-n", namespace, "--wait", binary="helm4")
