"""The PrometheusRule and the Grafana dashboard: checked by promtool and against the metrics the server exports."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kube import ROOT, one, template, tool

# Named in the contract with the server and alerted on before every image exports them: the rules
# and panels stay silent (no series) until it does.
PROMISED = {"model_server_model_ready", "model_server_shed_requests_total", "model_server_feature_drift"}
# From Prometheus itself and kube-state-metrics.
PLATFORM = {"up", "kube_pod_container_status_restarts_total"}
SELECTOR = 'namespace="ns",service="rel-model-server"'


def exported_metrics() -> set[str]:
    """Series names image/model_server/metrics.py exports (a histogram exports _bucket, _count, _sum)."""
    source = (ROOT / "image" / "model_server" / "metrics.py").read_text()
    names = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"([a-z_:]+)\"", source):
        if kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "Counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        else:
            names.add(name)
    assert "model_server_requests_total" in names, "metrics.py no longer reads as expected"
    return names


def queried_metrics(expr: str) -> set[str]:
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def rules(*values: str, sets: tuple[str, ...] = ()) -> dict:
    return one(template(*values, sets=("prometheusRule.enabled=true", *sets)), "PrometheusRule")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, check=False)


def write_rule_file(path: Path, groups: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.mark.parametrize("values", [(), ("chart/ci/pvc-values.yaml",)], ids=["defaults", "ci"])
def test_promtool_accepts_the_rules(tmp_path, values):
    rule = rules(*values)
    result = promtool("check", "rules", str(write_rule_file(tmp_path / "rules.yaml", rule["spec"]["groups"])))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_cover_errors_latency_readiness_restarts_shedding_and_drift_with_runbooks():
    alerts = {r["alert"]: r for r in rules()["spec"]["groups"][0]["rules"]}
    assert set(alerts) >= {
        "ModelServerHighErrorRatio",
        "ModelServerLatencySLOFastBurn",
        "ModelServerLatencySLOSlowBurn",
        "ModelServerModelNotReady",
        "ModelServerModelLoadFailures",
        "ModelServerPodsRestarting",
        "ModelServerSheddingLoad",
        "ModelServerFeatureDrift",
        "ModelServerNotScraped",
    }
    allowed = exported_metrics() | PROMISED | PLATFORM
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"], name
        assert "Runbook:" in alert["annotations"]["description"], name
        assert queried_metrics(alert["expr"]) <= allowed, (name, queried_metrics(alert["expr"]) - allowed)
        if name != "ModelServerPodsRestarting":
            assert SELECTOR in alert["expr"], f"{name} must only see this release's series"


def test_thresholds_and_placement_follow_the_values():
    rule = rules("chart/ci/pvc-values.yaml")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    groups = {g["name"]: g["rules"] for g in rule["spec"]["groups"]}
    alerts = {r["alert"]: r for r in groups["rel-model-server.rules"]}
    assert alerts["ModelServerHighErrorRatio"]["expr"].strip().endswith("> 0.02")
    # A whole-second bucket is written "1.0" by the client and "1" by Prometheus 3: both match.
    assert 'le=~"1(\\\\.0)?"' in alerts["ModelServerLatencySLOFastBurn"]["expr"]
    assert "> 0.072" in alerts["ModelServerLatencySLOFastBurn"]["expr"]  # 14.4 x (1 - 0.995)
    assert alerts["ModelServerFeatureDrift"]["expr"].endswith("> 0.2")
    assert alerts["ModelServerPodsRestarting"]["expr"].endswith(">= 5")
    assert alerts["ModelServerModelNotReady"]["annotations"]["runbook_url"].endswith("#modelservermodelnotready")
    assert groups["rel-model-server.extra"] == [
        {
            "record": "model_server:requests:rate5m",
            "expr": "sum by (namespace, service) (rate(model_server_requests_total[5m]))",
        }
    ]
    assert "runbook_url" not in str(rules()), "no runbook links without runbookBaseUrl"


def test_alerts_fire_on_the_failures_they_describe(tmp_path):
    """promtool's rule unit tests: synthetic series in, the expected alerts out (annotations aside)."""
    groups = rules()["spec"]["groups"]
    for rule in groups[0]["rules"]:
        rule.pop("annotations", None)
    rule_file = write_rule_file(tmp_path / "rules.yaml", groups)
    infer = f'{SELECTOR},route="/v2/models/<model_name>/infer",method="POST"'
    health = f'{SELECTOR},route="/v2/health/ready",method="GET"'
    pod = f'{SELECTOR},pod="rel-model-server-5d9c7-abcde"'
    tests = {
        "rule_files": [rule_file.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'model_server_requests_total{{{infer},status="200"}}', "values": "0+90x40"},
                    {"series": f'model_server_requests_total{{{infer},status="500"}}', "values": "0+10x40"},
                    # Probes answered 503 while not ready do not count as client errors.
                    {"series": f'model_server_requests_total{{{health},status="503"}}', "values": "0+500x40"},
                    {"series": f"model_server_model_ready{{{pod}}}", "values": "0x40"},
                    {"series": f'model_server_feature_drift{{{SELECTOR},column="bill_length_mm"}}', "values": "0.4x60"},
                    {"series": f'model_server_feature_drift{{{SELECTOR},column="island"}}', "values": "0.1x60"},
                    {"series": f"model_server_shed_requests_total{{{pod}}}", "values": "0+30x40"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "25m",
                        "alertname": "ModelServerHighErrorRatio",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "ModelServerModelNotReady",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "namespace": "ns",
                                    "pod": "rel-model-server-5d9c7-abcde",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "45m",
                        "alertname": "ModelServerFeatureDrift",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ns",
                                    "service": "rel-model-server",
                                    "column": "bill_length_mm",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "ModelServerSheddingLoad",
                        "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                    },
                    # The series exist but no `up` does: the scrape itself is missing.
                    {
                        "eval_time": "25m",
                        "alertname": "ModelServerNotScraped",
                        "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                    },
                    {"eval_time": "5m", "alertname": "ModelServerHighErrorRatio", "exp_alerts": []},
                ],
            }
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [tool("promtool"), "test", "rules", test_file.name], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_configmap(*values: str) -> dict:
    return one(
        [d for d in template(*values, sets=("grafanaDashboard.enabled=true",)) if d["kind"] == "ConfigMap"][1:],
        "ConfigMap",
    )


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar():
    configmap = dashboard_configmap("chart/ci/pvc-values.yaml")
    assert configmap["metadata"]["name"] == "rel-model-server-dashboard"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["team"] == "ml-platform"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "Models"
    assert list(configmap["data"]) == ["rel-model-server.json"]


def panels_of(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_valid_grafana_json_on_this_release():
    dashboard = json.loads(dashboard_configmap()["data"]["rel-model-server.json"])
    assert dashboard["schemaVersion"] >= 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"] == "Model server: rel-model-server (ns)"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["namespace"]["current"]["value"] == "ns"
    assert variables["service"]["current"]["value"] == ["rel-model-server"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
    for panel in panels_of(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
    # Another release gets its own dashboard (no uid clash in Grafana).
    other = json.loads(
        one(
            [
                d
                for d in template(sets=("grafanaDashboard.enabled=true",), release="model-server-penguins")
                if d["kind"] == "ConfigMap"
            ][1:],
            "ConfigMap",
        )["data"]["model-server-penguins.json"]
    )
    assert other["uid"] != dashboard["uid"]


def test_dashboard_shows_rate_errors_latency_rows_models_and_drift_per_model():
    dashboard = json.loads(dashboard_configmap()["data"]["rel-model-server.json"])
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels_of(dashboard)}
    joined = " ".join(exprs.values())
    for needed in (
        "rate(model_server_requests_total",
        'status=~"5.."',
        "histogram_quantile(0.99",
        "histogram_quantile(0.5",
        "model_server_predicted_rows_total",
        "model_server_model_info",
        "model_server_model_ready",
        "model_server_feature_drift",
        "model_server_shed_requests_total",
    ):
        assert needed in joined, needed
    for panel in panels_of(dashboard):
        if panel["type"] == "timeseries":
            for target in panel["targets"]:
                assert "{{service}}" in target["legendFormat"], f"{panel['title']}: one line per model"
    allowed = exported_metrics() | PROMISED | PLATFORM
    assert queried_metrics(joined) <= allowed, queried_metrics(joined) - allowed


def test_promtool_parses_every_dashboard_query(tmp_path):
    # Each panel query, Grafana's variables filled in, as a recording rule: promtool parses them all.
    dashboard = json.loads(dashboard_configmap()["data"]["rel-model-server.json"])
    records = []
    for panel in panels_of(dashboard):
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", "2m")
                .replace("$namespace", "ns")
                .replace("$service", "rel-model-server")
            )
            assert "$" not in expr, expr
            records.append({"record": f"dashboard:panel{panel['id']}:{target['refId'].lower()}", "expr": expr})
    rule_file = write_rule_file(tmp_path / "dashboard.yaml", [{"name": "dashboard", "rules": records}])
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
