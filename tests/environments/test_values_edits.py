"""promote and set-image: comment-preserving, validated, atomic, and refusing bad input with the file untouched."""

import os
import subprocess
import sys

import pytest
import yaml
from msops import OpsError, environments, manifests, values

from tests.kube import ROOT

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


SHA_C = "c" * 64


def read(repo, env, file="values"):
    return (repo / f"environments/{env}/{file}.yaml").read_text()


def snapshot(repo):
    return {p: p.read_text() for p in sorted((repo / "environments").rglob("*.yaml"))}


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    assert len(before.splitlines()) <= len(after.splitlines()) + 1
    return [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=False) if a != b]


def test_set_image_changes_only_the_image_and_keeps_comments(repo):
    decl = environments.load(repo)
    before = read(repo, "dev")
    diff = values.set_image(decl, decl.get("dev"), "0.2.0", DIGEST_A, repo)
    after = read(repo, "dev")
    assert '+  tag: "0.2.0"' in diff
    assert f"+  digest: {DIGEST_A}" in diff
    assert [line for line in after.splitlines() if line.lstrip().startswith("#")] == [
        line for line in before.splitlines() if line.lstrip().startswith("#")
    ]
    parsed_before, parsed_after = yaml.safe_load(before), yaml.safe_load(after)
    parsed_after["image"] = parsed_before["image"]
    assert parsed_after == parsed_before
    # The digest line sits inside the image block, above the next block's comment.
    lines = after.splitlines()
    assert lines[lines.index(f"  digest: {DIGEST_A}") - 1] == '  tag: "0.2.0"'


def test_set_image_without_digest_removes_a_stale_one(repo):
    decl = environments.load(repo)
    original = read(repo, "dev")
    values.set_image(decl, decl.get("dev"), "0.2.0", DIGEST_A, repo)
    values.set_image(decl, decl.get("dev"), "0.1.0", None, repo)
    assert read(repo, "dev") == original


def test_promote_image_copies_tag_and_digest_and_nothing_else(repo):
    decl = environments.load(repo)
    values.set_image(decl, decl.get("dev"), "0.3.0", DIGEST_B, repo)
    before = read(repo, "staging")
    diff = values.promote_image(decl, decl.get("dev"), decl.get("staging"), repo)
    after = read(repo, "staging")
    assert changed_lines(before, after) == [
        ('  tag: "0.1.0"', '  tag: "0.3.0"'),
        (f"  digest: {yaml.safe_load(before)['image']['digest']}", f"  digest: {DIGEST_B}"),
    ]
    content = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert len(content) == 4


def bump_dev_model(repo, model, version, sha):
    path = repo / f"environments/dev/{model}.yaml"
    text = path.read_text().replace('version: "1"', f'version: "{version}"')
    path.write_text(text.replace(yaml.safe_load(text)["model"]["sha256"], sha))


def test_promote_model_moves_one_models_version_sha_and_store_path_only(repo):
    decl = environments.load(repo)
    bump_dev_model(repo, "penguins", "2", SHA_C)
    before = snapshot(repo)
    diff = values.promote_model(decl, decl.get("dev"), decl.get("staging"), "penguins", repo)
    after = snapshot(repo)
    changed = [p.relative_to(repo).as_posix() for p in before if before[p] != after[p]]
    assert changed == ["environments/staging/penguins.yaml"]
    pinned = yaml.safe_load(read(repo, "staging", "penguins"))["model"]
    assert pinned == {"version": "2", "sha256": SHA_C, "subPath": "penguins/2"}
    assert changed_lines(before[repo / "environments/staging/penguins.yaml"], read(repo, "staging", "penguins")) == [
        ('  version: "1"', '  version: "2"'),
        (f"  sha256: {'9e6b1e55' * 8}", f"  sha256: {SHA_C}"),
        ("  subPath: penguins/1", "  subPath: penguins/2"),
    ]
    assert "+  subPath: penguins/2" in diff
    # The comments above the keys survive.
    assert "# Promoted from dev with" in read(repo, "staging", "penguins")


def test_promote_chart_pins_the_version_in_the_declaration_argocd_and_flux_together(repo):
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    chart_yaml = repo / "chart/Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.2.0", "version: 0.3.0"))
    subprocess.run([*git, "commit", "-qam", "chart 0.3.0"], cwd=repo, check=True)
    decl = environments.load(repo)
    before = snapshot(repo)
    diff = values.promote_chart(decl, decl.get("dev"), decl.get("staging"), repo)
    after = snapshot(repo)
    changed = sorted(p.relative_to(repo).as_posix() for p in before if before[p] != after[p])
    assert changed == [
        "environments/argocd/applicationset.yaml",
        "environments/environments.yaml",
        "environments/flux/staging/chart.yaml",
    ]
    content = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert len(content) == 6, diff
    decl = environments.load(repo)
    assert decl.get("staging").chart_version == "0.3.0"
    assert decl.get("prod").chart_version == "0.2.0"
    assert manifests.check_all(decl, repo) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, r: values.set_image(d, d.get("dev"), "bad tag", None, r), "not a valid image tag"),
        (lambda d, r: values.set_image(d, d.get("dev"), "1.0", "sha256:xyz", r), "is not a digest"),
        (lambda d, r: values.set_image(d, d.get("staging"), "1.0", None, r), "staging requires an image digest"),
        (lambda d, r: values.promote_image(d, d.get("dev"), d.get("prod"), r), "promotes to staging, not prod"),
        (lambda d, r: values.promote_image(d, d.get("dev"), d.get("dev"), r), "same environment"),
        (lambda d, r: values.promote_image(d, d.get("dev"), d.get("staging"), r), "requires an image digest"),
        (lambda d, r: values.promote_model(d, d.get("dev"), d.get("staging"), "iris", r), "serves no model 'iris'"),
        (lambda d, r: values.promote_model(d, d.get("staging"), d.get("dev"), "penguins", r), "promotes to prod"),
        (lambda d, r: values.promote_chart(d, d.get("staging"), d.get("dev"), r), "promotes to prod, not dev"),
        (lambda d, r: d.get("qa"), "unknown environment 'qa'"),
    ],
)
def test_bad_input_is_refused_and_files_stay_untouched(repo, call, message):
    decl = environments.load(repo)
    before = snapshot(repo)
    with pytest.raises(OpsError, match=message):
        call(decl, repo)
    assert snapshot(repo) == before
    assert not [p for p in (repo / "environments").rglob(".*") if p.is_file()], "temp file left behind"


def test_a_model_without_a_sha256_cannot_be_promoted_into_a_pinned_environment(repo):
    decl = environments.load(repo)
    path = repo / "environments/dev/diabetes.yaml"
    text = path.read_text()
    path.write_text(text.replace(yaml.safe_load(text)["model"]["sha256"], '""'))
    before = snapshot(repo)
    with pytest.raises(OpsError, match=r"staging requires model\.sha256 for diabetes"):
        values.promote_model(decl, decl.get("dev"), decl.get("staging"), "diabetes", repo)
    assert snapshot(repo) == before


def test_validate_catches_a_store_path_that_names_another_version(repo):
    path = repo / "environments/prod/penguins.yaml"
    path.write_text(path.read_text().replace('version: "1"', 'version: "2"'))
    decl = environments.load(repo)
    problems = values.pin_errors(decl, decl.get("prod"), decl.get("prod").release("penguins"), repo)
    assert problems == [
        "environments/prod/penguins.yaml: model.subPath is 'penguins/1', but version 2 of penguins is at "
        "'penguins/2' in the model store"
    ]


def test_an_edit_the_chart_schema_rejects_is_refused(repo):
    decl = environments.load(repo)
    path = repo / "environments/dev/values.yaml"
    path.write_text(path.read_text().replace("replicaCount: 1", "replicaCount: -3"))
    snapshot = path.read_text()
    with pytest.raises(OpsError, match="dev/diabetes: replicaCount"):
        values.set_image(decl, decl.get("dev"), "0.9.0", None, repo)
    assert path.read_text() == snapshot


def test_a_values_file_that_is_not_yaml_is_refused(repo):
    decl = environments.load(repo)
    path = repo / "environments/dev/values.yaml"
    path.write_text(path.read_text() + "\nreplicaCount: 2\n")
    snapshot = path.read_text()
    with pytest.raises(OpsError, match="is not valid YAML"):
        values.set_image(decl, decl.get("dev"), "0.9.0", None, repo)
    assert path.read_text() == snapshot


def test_dry_run_writes_nothing(repo):
    decl = environments.load(repo)
    before = read(repo, "dev")
    assert "0.5.0" in values.set_image(decl, decl.get("dev"), "0.5.0", None, repo, dry_run=True)
    assert read(repo, "dev") == before


def test_cli_promote_commits_when_asked(repo):
    decl = environments.load(repo)
    values.set_image(decl, decl.get("dev"), "0.4.0", DIGEST_A, repo)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-qam", "dev at 0.4.0"], cwd=repo, check=True)
    env = {
        **os.environ,
        "MSOPS_ROOT": str(repo),
        "PYTHONPATH": str(ROOT / "scripts"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    run = subprocess.run(
        [sys.executable, "-m", "msops", "promote", "--from", "dev", "--to", "staging", "--image", "--commit"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert '+  tag: "0.4.0"' in run.stdout
    log = subprocess.run(
        ["git", "log", "-1", "--format=%s"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert log.strip() == "Promote image 0.4.0 from dev to staging"
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout
        == ""
    )


def test_cli_failure_is_one_line_and_exit_1(repo):
    env = {**os.environ, "MSOPS_ROOT": str(repo), "PYTHONPATH": str(ROOT / "scripts")}
    run = subprocess.run(
        [sys.executable, "-m", "msops", "set-image", "--env", "prod", "--tag", "x", "--digest", "sha256:nope"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "set-image: 'sha256:nope' is not a digest: expected sha256: followed by 64 lowercase hex digits"
    ]


def test_cli_promotes_one_model_and_commits_only_its_file(repo):
    bump_dev_model(repo, "diabetes", "7", SHA_C)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-qam", "dev: diabetes 7"], cwd=repo, check=True)
    env = {
        **os.environ,
        "MSOPS_ROOT": str(repo),
        "PYTHONPATH": str(ROOT / "scripts"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    argv = [sys.executable, "-m", "msops", "promote", "--from", "dev", "--to", "staging", "--model", "diabetes"]
    run = subprocess.run([*argv, "--commit"], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    show = subprocess.run(
        ["git", "show", "--stat", "--format=%s", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert show.splitlines()[0] == "Promote diabetes 7 from dev to staging"
    assert "environments/staging/diabetes.yaml" in show
    assert "penguins" not in show
    both = subprocess.run([*argv, "--image"], env=env, capture_output=True, text=True, check=False)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
