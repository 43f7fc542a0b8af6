"""render, validate and diff over the real environments (the offline schema mirror when present)."""

import pytest
import yaml
from msops import OpsError, environments, validate
from msops.diff import against_ref, between_environments
from msops.render import render

from tests.environments.conftest import chart_version, msops, publish_chart
from tests.kube import ROOT, schema_dir


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_render_uses_the_declared_release_namespace_and_values(name):
    decl = environments.load()
    env = decl.get(name)
    for release in env.releases:
        docs = [d for d in yaml.safe_load_all(render(decl, env, release)) if d]
        assert docs
        for doc in docs:
            assert doc["metadata"]["namespace"] == env.namespace
            assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        expected = yaml.safe_load((ROOT / env.values_files[0]).read_text())["image"]
        assert image.endswith(expected.get("digest") or expected["tag"])
        pinned = yaml.safe_load((ROOT / release.values_files[-1]).read_text())["model"]
        config = next(d for d in docs if d["kind"] == "ConfigMap" and "MODEL_SERVER_MODEL_DIR" in d.get("data", {}))
        assert config["data"]["MODEL_SERVER_EXPECTED_VERSION"] == pinned["version"]
        assert config["data"]["MODEL_SERVER_EXPECTED_SHA256"] == pinned["sha256"]
        assert config["data"]["MODEL_SERVER_MODEL_NAME"] == release.model


def test_dev_serves_from_the_image_staging_and_prod_from_the_model_store():
    decl = environments.load()
    dirs = {}
    for env in decl.environments.values():
        for release in env.releases:
            docs = yaml.safe_load_all(render(decl, env, release))
            config = next(d for d in docs if d and d["kind"] == "ConfigMap" and "MODEL_SERVER_MODEL_DIR" in d["data"])
            dirs[env.name, release.model] = config["data"]["MODEL_SERVER_MODEL_DIR"]
    assert dirs["dev", "penguins"] == "/models/penguins"
    assert dirs["dev", "diabetes"] == "/models/diabetes"
    assert dirs["staging", "penguins"] == "/mnt/models/penguins/1"
    assert dirs["prod", "diabetes"] == "/mnt/models/diabetes/1"


def test_environments_differ_where_real_environments_differ():
    decl = environments.load()
    kinds = {
        name: {
            d["kind"] for r in decl.get(name).releases for d in yaml.safe_load_all(render(decl, decl.get(name), r)) if d
        }
        for name in decl.environments
    }
    assert "HorizontalPodAutoscaler" not in kinds["dev"]
    assert {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds["staging"]
    assert kinds["prod"] == kinds["staging"]


def test_validate_passes_for_every_environment():
    decl = environments.load()
    mirror = schema_dir()
    locations = validate.mirror_locations(mirror) if mirror else validate.PUBLIC_SCHEMA_LOCATIONS
    report = validate.validate(decl, decl.select(None), locations=locations)
    assert report.failures == [], "\n".join(report.lines)
    releases = sum(len(env.releases) for env in decl.environments.values())
    assert sum("kubeconform" in line for line in report.lines) == 2 * (releases + 1)
    # Both scorers judged every release and every chart/ci values file, and excused nothing stale.
    scored = releases + len(list((ROOT / "chart" / "ci").glob("*-values.yaml")))
    assert sum(": kube-score: 0 finding(s)" in line for line in report.lines) == scored
    assert sum(": checkov: 0 finding(s)" in line for line in report.lines) == scored


def test_validate_reports_a_bad_values_file(repo):
    path = repo / "environments/staging/values.yaml"
    path.write_text(path.read_text().replace("maxReplicas: 4", "maxReplicas: four"))
    decl = environments.load(repo)
    mirror = schema_dir()
    report = validate.validate(
        decl,
        [decl.get("staging")],
        locations=validate.mirror_locations(mirror) if mirror else validate.PUBLIC_SCHEMA_LOCATIONS,
        root=repo,
        scored_by=(),
    )
    assert any("staging/diabetes: values: autoscaling.maxReplicas" in f for f in report.failures), report.lines
    assert any("staging/penguins: values: autoscaling.maxReplicas" in f for f in report.failures), report.lines


def test_diff_between_environments_shows_what_differs_per_model():
    text = between_environments("dev", "staging")
    assert "+kind: HorizontalPodAutoscaler" in text
    assert text.startswith("--- dev/diabetes (rendered)")
    assert "--- dev/penguins (rendered)" in text
    only = between_environments("dev", "staging", ["penguins"])
    assert "dev/diabetes" not in only
    with pytest.raises(OpsError, match="no environment here serves iris"):
        between_environments("dev", "staging", ["iris"])


def test_diff_against_a_ref_shows_a_pending_change(repo):
    path = repo / "environments/dev/values.yaml"
    path.write_text(path.read_text().replace("replicaCount: 1", "replicaCount: 3"))
    text = against_ref("HEAD", "dev", root=repo)
    assert "-  replicas: 1" in text
    assert "+  replicas: 3" in text
    assert "--- dev/penguins at HEAD" in text
    assert against_ref("HEAD", "staging", root=repo) == ""


def test_a_pinned_environment_renders_the_chart_version_git_published(repo):
    """main has moved on to a newer chart; staging still renders (and diffs against) what it pins."""
    pinned = environments.load(repo).get("staging").chart_version
    publish_chart(repo, "9.0.0", change='NEW_IN_9: "1"')
    decl = environments.load(repo)
    staging, dev = decl.get("staging"), decl.get("dev")
    assert "NEW_IN_9" not in render(decl, staging, staging.release("diabetes"), repo)
    assert "NEW_IN_9" in render(decl, dev, dev.release("diabetes"), repo)
    assert "NEW_IN_9" in between_environments("staging", "dev", ["diabetes"], root=repo)
    (repo / "environments/environments.yaml").write_text(
        (repo / "environments/environments.yaml")
        .read_text()
        .replace(f"chartVersion: {pinned}", "chartVersion: 0.1.7", 1)
    )
    with pytest.raises(OpsError, match=r"chart version 0\.1\.7 was never in chart/Chart\.yaml"):
        render(decl := environments.load(repo), decl.get("staging"), decl.get("staging").release("diabetes"), repo)


def test_a_chart_change_without_a_version_bump_is_caught(repo):
    assert validate.chart_change_without_bump("HEAD", repo) is None
    values_yaml = repo / "chart/values.yaml"
    values_yaml.write_text(values_yaml.read_text().replace("replicaCount: 1", "replicaCount: 2"))
    version = chart_version(repo)
    assert f"still says version {version}: bump it" in validate.chart_change_without_bump("HEAD", repo)
    chart_yaml = repo / "chart/Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace(f"version: {version}", "version: 9.0.1"))
    assert validate.chart_change_without_bump("HEAD", repo) is None


def test_scripts_render_writes_one_file_per_environment(tmp_path):
    written = msops("render", "--output-dir", str(tmp_path))
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{e}-{m}.yaml" for e in ("dev", "prod", "staging") for m in ("diabetes", "penguins")
    ]
    one = msops("render", "--env", "prod", "--model", "penguins")
    assert one.stdout.startswith("# ---- environment: prod, model: penguins (release model-server-penguins")
    assert "model-server-diabetes" not in one.stdout
    bad = msops("render", "--env", "qa")
    assert bad.returncode == 1
    assert "unknown environment 'qa'" in bad.stderr
    bad = msops("render", "--model", "iris")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "render: dev serves no model 'iris' (it serves: diabetes, penguins)"
