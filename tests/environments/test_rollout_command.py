"""scripts/rollout: a canary's verdict read from the cluster, and the revert commit after an aborted one.

The cluster is a stand-in kubectl (a script answering the Rollout, AnalysisRun and Job-log reads with what
Argo Rollouts v1.10 writes); the real controller's objects are read by tests/cluster/test_real_node_rollout.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.environments.conftest import GIT, git, msops
from tests.environments.test_values_edits import SHA_C, pin_model

JUDGEMENT = """stable: version 2 on 2 pod(s): 812 requests, 0 errors (0.00%), p50 1.1 ms, p99 3.0 ms, 812 predicted rows
canary: version 3 on 1 pod(s): 401 requests, 0 errors (0.00%), p50 1.2 ms, p99 3.1 ms, 401 predicted rows
pass: error_ratio 0 (limit 0.01)
pass: p99_latency_seconds 0.0031 (limit 0.011)
FAIL: prediction_psi 1.87 (limit 0.2) over 10 bins, noise floor 0.033
verdict: the canary FAILED
"""


def fake_kubectl(tmp_path: Path, aborted: bool) -> Path:
    """A kubectl that answers what the status reads, for the prod diabetes release (outside the repository)."""
    tmp_path = tmp_path.parent / f"{tmp_path.name}-bin"
    tmp_path.mkdir(exist_ok=True)
    rollout = {
        "metadata": {"name": "model-server-diabetes", "uid": "r-1"},
        "spec": {"strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "60s"}},
                                                   {"analysis": {}}]}}},
        "status": {"phase": "Degraded" if aborted else "Paused", "message": "RolloutAborted: metric judgement failed"
                   if aborted else "", "abort": aborted, "currentStepIndex": 0 if aborted else 1},
    }  # fmt: skip
    run = {
        "metadata": {"name": "model-server-diabetes-5d8f-3-2", "creationTimestamp": "2026-12-06T02:00:00Z",
                     "ownerReferences": [{"uid": "r-1"}]},
        "status": {"phase": "Failed", "metricResults": [{"name": "judgement", "measurements": [
            {"phase": "Failed", "metadata": {"job-name": "judgement-job-1"}}]}]},
    }  # fmt: skip
    other = {"metadata": {"name": "someone-else", "creationTimestamp": "2026-12-06T03:00:00Z", "ownerReferences": []}}
    answers = {
        "rollouts.argoproj.io": json.dumps({"items": [rollout]}),
        "analysisruns.argoproj.io": json.dumps({"items": [run, other]}),
        "job/judgement-job-1": JUDGEMENT,
    }
    script = tmp_path / "kubectl"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nanswers = {answers!r}\nargs = sys.argv[1:]\n"
        "assert args[args.index('-n') + 1] == 'model-server-prod', args\n"
        "for key, text in answers.items():\n    if key in args:\n        print(text)\n        sys.exit(0)\n"
        "sys.exit('unexpected: ' + ' '.join(args))\n"
    )
    script.chmod(0o755)
    return script


def test_status_shows_the_phase_the_step_and_the_judgements_figures(repo, tmp_path):
    done = msops("rollout", "status", "--env", "prod", "--model", "diabetes", "--kubectl",
                 str(fake_kubectl(tmp_path, aborted=True)), root=repo)  # fmt: skip
    assert done.returncode == 1, done.stderr  # aborted: a failing status for scripts and CI
    assert "rollout model-server-prod/model-server-diabetes: Degraded (aborted): RolloutAborted" in done.stdout
    assert "latest judgement: AnalysisRun model-server-diabetes-5d8f-3-2: Failed" in done.stdout
    assert "FAIL: prediction_psi 1.87 (limit 0.2)" in done.stdout
    paused = msops("rollout", "status", "--env", "prod", "--model", "diabetes", "--kubectl",
                   str(fake_kubectl(tmp_path, aborted=False)), root=repo)  # fmt: skip
    assert paused.returncode == 0, paused.stderr
    assert "step: 1 of 3 (pause 60s)" in paused.stdout


def promoted(repo: Path) -> str:
    """prod's diabetes pin before a promotion that the canary then refuses; the promotion commits."""
    pin_model(repo, "staging", "diabetes", "3", SHA_C)
    subprocess.run([*GIT, "commit", "-qam", "staging runs diabetes 3"], cwd=repo, check=True)
    before = (repo / "environments/prod/diabetes.yaml").read_text()
    done = msops("promote", "--from", "staging", "--to", "prod", "--model", "diabetes", "--commit", root=repo)
    assert done.returncode == 0, done.stderr
    return before


def test_revert_after_an_aborted_canary_commits_the_pin_back_with_the_judgement(repo, tmp_path):
    before = promoted(repo)
    kubectl = str(fake_kubectl(tmp_path, aborted=True))
    done = msops(
        "rollout", "revert", "--env", "prod", "--model", "diabetes", "--commit", "--kubectl", kubectl, root=repo
    )
    assert done.returncode == 0, done.stderr
    assert (repo / "environments/prod/diabetes.yaml").read_text() == before
    assert yaml.safe_load(before)["model"]["version"] != "3"
    message = git(repo, "log", "-1", "--format=%B")
    assert message.startswith("Revert diabetes in prod: the canary was aborted ('Promote diabetes 3 from staging")
    assert "FAIL: prediction_psi 1.87 (limit 0.2)" in message
    assert git(repo, "status", "--porcelain") == ""


def test_revert_is_refused_while_the_canary_is_not_aborted_or_the_file_has_local_edits(repo, tmp_path):
    promoted(repo)
    pinned = (repo / "environments/prod/diabetes.yaml").read_text()
    running = str(fake_kubectl(tmp_path, aborted=False))
    done = msops("rollout", "revert", "--env", "prod", "--model", "diabetes", "--kubectl", running, root=repo)
    assert done.returncode != 0
    assert "the rollout is not aborted (Paused)" in done.stderr
    (repo / "environments/prod/diabetes.yaml").write_text(pinned + "# a local edit\n")
    aborted = str(fake_kubectl(tmp_path, aborted=True))
    done = msops("rollout", "revert", "--env", "prod", "--model", "diabetes", "--kubectl", aborted, root=repo)
    assert done.returncode != 0
    assert "environments/prod/diabetes.yaml has uncommitted changes" in done.stderr
    assert (repo / "environments/prod/diabetes.yaml").read_text() == pinned + "# a local edit\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "--env", "prod"), "--env goes with --model NAME"),
        (("status", "--namespace", "x"), "name the release"),
        (("revert", "--namespace", "x", "--release", "y"), "revert needs --env and --model"),
        (("status", "--env", "prod", "--model", "iris"), "prod serves no model 'iris'"),
    ],
)
def test_bad_arguments_are_refused_naming_what_is_wrong(repo, args, message):
    done = msops("rollout", *args, "--kubectl", "/bin/false", root=repo)
    assert done.returncode != 0
    assert message in done.stderr
