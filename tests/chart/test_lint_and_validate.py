"""helm lint --strict, kubeconform -strict and the restricted Pod Security check, for every values file we ship."""

import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from msops import environments
from msops.validate import PUBLIC_SCHEMA_LOCATIONS, mirror_locations

from tests.kube import CHART, HELMS, KUBERNETES_VERSIONS, ROOT, helm, schema_dir, tool

CI_VALUES = sorted(str(p.relative_to(ROOT)) for p in (CHART / "ci").glob("*-values.yaml"))
# Each model release of each environment: its values files, in order (comma-joined).
ENV_VALUES = [",".join(r.values_files) for env in environments.load().environments.values() for r in env.releases]
ALL_VALUES = [None, *CI_VALUES, *ENV_VALUES]


def values_args(values: str | None) -> list[str]:
    return [arg for file in (values.split(",") if values else []) for arg in ("--values", str(ROOT / file))]


def locations() -> tuple[str, ...]:
    mirror = schema_dir()
    return mirror_locations(mirror) if mirror else PUBLIC_SCHEMA_LOCATIONS


def render_to(tmp_path: Path, values: str | None, binary: str = "helm") -> Path:
    args = ["template", "rel", str(CHART), "--namespace", "ns", *values_args(values)]
    out = tmp_path / "rendered.yaml"
    out.write_text(helm(*args, binary=binary).stdout)
    return out


def test_ci_matrix_turns_every_optional_feature_on():
    kinds = set()
    for values in CI_VALUES:
        docs = yaml.safe_load_all(helm("template", "rel", str(CHART), "--values", str(ROOT / values)).stdout)
        kinds |= {doc["kind"] for doc in docs if doc}
    assert kinds >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "VerticalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
        "HTTPRoute",
        "ServiceMonitor",
        "PrometheusRule",
        "Pod",
        "Rollout",
        "AnalysisTemplate",
    }


def test_chart_yaml_meets_the_chart_testing_rules():
    # What `ct lint` checks in Chart.yaml (its yamale schema), without needing ct itself.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name.replace("chart", "model-server")
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", chart["version"]), chart["version"]
    assert chart["description"]
    assert chart["type"] in ("application", "library")
    assert chart["maintainers"]
    assert all(m.get("name") for m in chart["maintainers"])
    assert chart["kubeVersion"].startswith(">=")
    assert all(url.startswith("https://") for url in chart.get("sources", []))


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize("values", ALL_VALUES, ids=lambda v: (v or "defaults").split(",")[-1])
def test_helm_lint_strict(binary, values):
    result = helm("lint", "--strict", str(CHART), *values_args(values), binary=binary, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout
    assert "[WARNING]" not in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", ALL_VALUES, ids=lambda v: (v or "defaults").split(",")[-1])
def test_rendered_output_passes_kubeconform_strict(tmp_path, values, version):
    rendered = render_to(tmp_path, values)
    args = [tool("kubeconform"), "-strict", "-summary", "-kubernetes-version", version]
    for location in locations():
        args += ["-schema-location", location]
    result = subprocess.run([*args, str(rendered)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Skipped: 0" in result.stdout, result.stdout


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize("values", ALL_VALUES, ids=lambda v: (v or "defaults").split(",")[-1])
def test_every_pod_meets_the_restricted_pod_security_standard(tmp_path, values, binary):
    # The Pod Security admission controller's own checks (tools/pss-check), on every workload.
    rendered = render_to(tmp_path, values, binary)
    result = subprocess.run(
        [tool("pss-check"), "-level", "restricted", str(rendered)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"[1-9]\d* workload\(s\) checked, 0 violate", result.stdout), result.stdout


def test_policy_check_catches_a_violation(tmp_path):
    result = helm(
        "template",
        "rel",
        str(CHART),
        "--set",
        "podSecurityContext.runAsNonRoot=false",
        "--set",
        "securityContext.runAsNonRoot=false",
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(result.stdout)
    check = subprocess.run([tool("pss-check"), str(bad)], capture_output=True, text=True, check=False)
    assert check.returncode == 1
    assert "runAsNonRoot" in check.stdout


@pytest.mark.parametrize("binary", HELMS)
def test_helm_package_version_matches_chart_yaml(tmp_path, binary):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    helm("package", str(CHART), "--destination", str(tmp_path), binary=binary)
    archive = tmp_path / f"{chart['name']}-{chart['version']}.tgz"
    assert archive.is_file(), list(tmp_path.iterdir())
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        packaged = yaml.safe_load(tar.extractfile(f"{chart['name']}/Chart.yaml").read())
    assert packaged["version"] == chart["version"]
    assert f"{chart['name']}/values.schema.json" in names
    assert not any("/ci/" in name for name in names)


def test_chart_readme_is_fresh(tmp_path):
    # helm-docs regenerates the values table from the `# --` comments; a stale README fails here.
    copy = tmp_path / "chart"
    subprocess.run(["cp", "-r", str(CHART), str(copy)], check=True)
    subprocess.run(
        [tool("helm-docs"), "--chart-search-root", str(copy), "--log-level", "error"], check=True, cwd=tmp_path
    )
    assert (copy / "README.md").read_text() == (CHART / "README.md").read_text(), (
        "chart/README.md is stale: run scripts/docs"
    )
