"""render, validate and diff over the real environments (the offline schema mirror when present)."""

import os
import subprocess
import sys

import pytest
import yaml
from msops import environments, validate
from msops.diff import against_ref, between_environments
from msops.render import render

from tests.kube import ROOT, schema_dir


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_render_uses_the_declared_release_namespace_and_values(name):
    decl = environments.load()
    env = decl.get(name)
    docs = [d for d in yaml.safe_load_all(render(decl, env)) if d]
    assert docs
    for doc in docs:
        assert doc["metadata"]["namespace"] == env.namespace
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == decl.release_name
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    expected = yaml.safe_load((ROOT / env.values_files[0]).read_text())["image"]
    assert image.endswith(expected.get("digest") or expected["tag"])


def test_environments_differ_where_real_environments_differ():
    decl = environments.load()
    kinds = {
        name: {d["kind"] for d in yaml.safe_load_all(render(decl, decl.get(name))) if d} for name in decl.environments
    }
    assert "HorizontalPodAutoscaler" not in kinds["dev"]
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress", "ServiceMonitor"} <= kinds[
        "staging"
    ]
    assert kinds["prod"] == kinds["staging"]


def test_validate_passes_for_every_environment():
    decl = environments.load()
    mirror = schema_dir()
    locations = validate.mirror_locations(mirror) if mirror else validate.PUBLIC_SCHEMA_LOCATIONS
    report = validate.validate(decl, decl.select(None), locations=locations)
    assert report.failures == [], "\n".join(report.lines)
    assert sum("kubeconform" in line for line in report.lines) == 2 * (len(decl.environments) + 1)


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
    )
    assert any("staging: values schema: autoscaling.maxReplicas" in f for f in report.failures), report.lines


def test_diff_between_environments_shows_what_differs():
    text = between_environments("dev", "staging")
    assert "+kind: HorizontalPodAutoscaler" in text
    assert text.startswith("--- dev (rendered)")


def test_diff_against_a_ref_shows_a_pending_change(repo):
    path = repo / "environments/dev/values.yaml"
    path.write_text(path.read_text().replace("replicaCount: 1", "replicaCount: 3"))
    text = against_ref("HEAD", "dev", repo)
    assert "-  replicas: 1" in text
    assert "+  replicas: 3" in text
    assert against_ref("HEAD", "staging", repo) == ""


def test_scripts_render_writes_one_file_per_environment(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    subprocess.run(
        [sys.executable, "-m", "msops", "render", "--output-dir", str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.yaml", "prod.yaml", "staging.yaml"]
    one = subprocess.run(
        [sys.executable, "-m", "msops", "render", "--env", "prod"], env=env, check=True, capture_output=True, text=True
    )
    assert one.stdout.startswith("# ---- environment: prod")
    bad = subprocess.run(
        [sys.executable, "-m", "msops", "render", "--env", "qa"], env=env, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "unknown environment 'qa'" in bad.stderr
