"""rollout.enabled: an Argo Rollouts canary over the Deployment's pods, each step judged by a Job running the
image's judge against the canary and stable Services (kubeconform, lint, Pod Security and the scorers run on
chart/ci/rollout-values.yaml with the other CI values files)."""

import argparse

import pytest

from tests.kube import by_kind, one, template, template_error

ROLLOUT = "chart/ci/rollout-values.yaml"


def judge_pod(docs: list[dict]) -> dict:
    job = one(docs, "AnalysisTemplate")["spec"]["metrics"][0]["provider"]["job"]
    return job["spec"]["template"]["spec"]


def test_off_by_default_the_deployment_runs_the_pods_alone():
    docs = template()
    assert by_kind(docs, "Rollout") == []
    assert by_kind(docs, "AnalysisTemplate") == []
    assert [s["metadata"]["name"] for s in by_kind(docs, "Service")] == ["rel-model-server"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


def test_the_rollout_runs_the_deployments_pods_step_by_step_with_a_judgement_after_each():
    docs = template(sets=("rollout.enabled=true", "replicaCount=4"))
    rollout = one(docs, "Rollout")
    assert rollout["spec"]["workloadRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rel-model-server",
        "scaleDown": "never",
    }
    assert rollout["spec"]["replicas"] == 4
    assert one(docs, "Deployment")["spec"]["replicas"] == 0  # the template holder runs no pod of its own
    canary = rollout["spec"]["strategy"]["canary"]
    assert (canary["canaryService"], canary["stableService"]) == ("rel-model-server-canary", "rel-model-server-stable")
    analysis = {"analysis": {"templates": [{"templateName": "rel-model-server-judgement"}]}}
    pause = {"pause": {"duration": "60s"}}
    assert canary["steps"] == [{"setWeight": 20}, pause, analysis, {"setWeight": 50}, pause, analysis]
    assert one(docs, "AnalysisTemplate")["metadata"]["name"] == "rel-model-server-judgement"


def test_the_canary_and_stable_services_select_the_release_and_stay_out_of_the_service_monitor():
    docs = template(sets=("rollout.enabled=true", "serviceMonitor.enabled=true"))
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert set(services) == {"rel-model-server", "rel-model-server-canary", "rel-model-server-stable"}
    for name in ("rel-model-server-canary", "rel-model-server-stable"):
        assert services[name]["spec"]["selector"] == services["rel-model-server"]["spec"]["selector"]
        assert services[name]["spec"]["ports"] == services["rel-model-server"]["spec"]["ports"]
        assert services[name]["metadata"]["labels"]["model-server.gitops/rollout-role"] == name.rsplit("-", 1)[1]
    selector = one(docs, "ServiceMonitor")["spec"]["selector"]
    assert selector["matchExpressions"] == [{"key": "model-server.gitops/rollout-role", "operator": "DoesNotExist"}]


def judge_arguments(args: list[str]) -> argparse.Namespace:
    """The rendered arguments, parsed by the judge's own command line: the chart and the image agree."""
    from model_server import judge

    return judge.parser().parse_args(args)


def test_the_judgement_job_calls_both_services_with_the_test_pods_credentials_and_the_values_thresholds():
    docs = template(ROLLOUT)
    pod = judge_pod(docs)
    container = pod["containers"][0]
    assert container["command"] == ["python3", "-m", "model_server.judge"]
    args = judge_arguments(container["args"])
    assert (args.canary, args.stable) == ("https://rel-model-server-canary:80", "https://rel-model-server-stable:80")
    assert (args.window, args.wait, args.min_requests, args.max_psi) == (90, 60, 200, 0.15)
    assert (args.ca_file, args.token_file) == ("/etc/model-server/ca/ca.crt", "/etc/model-server/token/token")
    assert pod["serviceAccountName"] == "rel-model-server-test"
    test_pod = one(docs, "Pod")["spec"]
    assert pod["volumes"] == test_pod["volumes"]
    assert container["volumeMounts"] == test_pod["containers"][0]["volumeMounts"]
    assert container["securityContext"] == test_pod["containers"][0]["securityContext"]
    # The server's policy admits the Job's pods, and the test Pod's policy (DNS and the server only) holds them.
    labels = one(docs, "AnalysisTemplate")["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["metadata"]
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    test_selector = policies["rel-model-server-test"]["spec"]["podSelector"]["matchLabels"]
    assert test_selector.items() <= labels["labels"].items()
    sources = [s for rule in policies["rel-model-server"]["spec"]["ingress"] for s in rule["from"]]
    assert {"podSelector": {"matchLabels": test_selector}} in sources


def test_the_certificate_names_the_canary_and_stable_services():
    import base64
    import subprocess

    secret = next(s for s in by_kind(template(ROLLOUT), "Secret") if "tls.crt" in s.get("data", {}))
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=base64.b64decode(secret["data"]["tls.crt"]),
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in ("rel-model-server", "rel-model-server-canary", "rel-model-server-stable"):
        assert f"DNS:{name}," in names or names.rstrip().endswith(f"DNS:{name}"), names


def test_the_autoscalers_aim_at_the_rollout():
    docs = template(ROLLOUT)
    rollout_ref = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "rel-model-server"}
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"] == rollout_ref
    assert one(docs, "VerticalPodAutoscaler")["spec"]["targetRef"] == rollout_ref
    assert "replicas" not in one(docs, "Rollout")["spec"]  # the HPA owns the count


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("verticalPodAutoscaler.enabled=true", "verticalPodAutoscaler.updateMode=Auto"),
            "verticalPodAutoscaler.updateMode=Auto with rollout.enabled",
        ),
        (("tests.enabled=false",), "rollout.enabled needs tests.enabled"),
    ],
)
def test_conflicts_are_refused_naming_the_values(sets, message):
    assert message in template_error("rollout.enabled=true", *sets)
    # the same values without the rollout render (positive control)
    template(sets=sets)


def test_each_revision_carries_its_own_settings_so_the_stable_version_never_reads_the_canarys():
    """With one shared ConfigMap a new revision rewrites it, and a stable pod started again mid-canary (the
    scale-back after an abort) would load the canary's model (seen on the real node)."""
    sets = ("rollout.enabled=true", "model.mode=existingClaim", "model.existingClaim=store", "env[0].name=EXTRA")
    v2 = template(sets=(*sets, "model.subPath=v2", "env[0].value=x"))
    container = one(v2, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container  # nothing read from the shared ConfigMap
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {**one(v2, "ConfigMap")["data"], "EXTRA": "x"}
    assert env["MODEL_SERVER_MODEL_DIR"] == "/mnt/models/v2"
    v3 = template(sets=(*sets, "model.subPath=v3", "env[0].value=x"))
    env3 = {i["name"]: i["value"] for i in one(v3, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env3["MODEL_SERVER_MODEL_DIR"] == "/mnt/models/v3"
    # without a rollout the pods read the ConfigMap, as before
    plain = one(template(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert plain["envFrom"] == [{"configMapRef": {"name": "rel-model-server"}}]
