"""promote and set-image: comment-preserving, validated, atomic, and refusing bad input with the file untouched."""

import hashlib
import json
import subprocess

import pytest
import yaml
from msops import OpsError, environments, manifests, values

from tests.environments.conftest import GIT, git, msops, publish_chart

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
SHA_C = "c" * 64


def read(repo, env, file="values"):
    return (repo / f"environments/{env}/{file}.yaml").read_text()


def snapshot(repo):
    return {p: p.read_text() for p in sorted((repo / "environments").rglob("*.yaml"))}


def drop_dev_digest(repo):
    """dev as it is before image.yml's first push: a tag, no digest (and no placeholder comment)."""
    path = repo / "environments/dev/values.yaml"
    text = path.read_text()
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith(("  digest:", "  # Placeholder"))]
    assert len(kept) == len(text.splitlines()) - 2, "dev's image block changed: update drop_dev_digest"
    path.write_text("".join(kept))


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    assert len(before.splitlines()) <= len(after.splitlines()) + 1
    return [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=False) if a != b]


def test_set_image_changes_only_the_image_and_keeps_comments(repo):
    drop_dev_digest(repo)
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
    drop_dev_digest(repo)
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


def pin_model(repo, env, model, version, sha=None):
    """Edit ``env``'s pin of ``model`` by hand, as a person (or an earlier promotion) would."""
    path = repo / f"environments/{env}/{model}.yaml"
    text = path.read_text()
    pinned = yaml.safe_load(text)["model"]
    text = text.replace(f'version: "{pinned["version"]}"', f'version: "{version}"')
    if "subPath" in pinned:
        text = text.replace(f"subPath: {pinned['subPath']}", f"subPath: {model}/{version}")
    if sha is not None:
        text = text.replace(f"sha256: {pinned['sha256'] or chr(34) * 2}", f"sha256: {sha}")
    path.write_text(text)


def released_artifact(directory, version, content=b"a model file"):
    """An artifact directory as scripts/train writes it and the ML release pipeline copies it to the store."""
    directory.mkdir(parents=True)
    (directory / "model.skops").write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    metadata = {"name": "any", "version": version, "model_file": "model.skops", "model_sha256": sha}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory, sha


def test_dev_pins_each_models_version_but_no_sha256_its_image_pins_the_artifact():
    decl = environments.load()
    for release in decl.get("dev").releases:
        merged = values.release_values(release)
        assert values.from_image(merged)
        model = merged["model"]
        assert model["version"]
        assert model["sha256"] == ""
        assert values.pin_errors(decl, decl.get("dev"), release) == []


def test_promote_model_from_dev_pins_the_released_artifacts_version_and_sha256(repo, tmp_path):
    decl = environments.load(repo)
    pin_model(repo, "dev", "penguins", "2")
    artifact, sha = released_artifact(tmp_path / "penguins-2", "2")
    before = snapshot(repo)
    diff = values.promote_model(decl, decl.get("dev"), decl.get("staging"), "penguins", repo, artifact=artifact)
    after = snapshot(repo)
    changed = [p.relative_to(repo).as_posix() for p in before if before[p] != after[p]]
    assert changed == ["environments/staging/penguins.yaml"]
    pinned = yaml.safe_load(read(repo, "staging", "penguins"))["model"]
    assert pinned == {"version": "2", "sha256": sha, "subPath": "penguins/2"}
    assert changed_lines(before[repo / "environments/staging/penguins.yaml"], read(repo, "staging", "penguins")) == [
        ('  version: "1"', '  version: "2"'),
        (f"  sha256: {'9e6b1e55' * 8}", f"  sha256: {sha}"),
        ("  subPath: penguins/1", "  subPath: penguins/2"),
    ]
    assert "+  subPath: penguins/2" in diff
    # The comments above the keys survive.
    assert "# Promoted from dev with" in read(repo, "staging", "penguins")


def test_promote_model_from_staging_to_prod_moves_version_sha_and_store_path_only(repo):
    decl = environments.load(repo)
    pin_model(repo, "staging", "diabetes", "3", SHA_C)
    before = snapshot(repo)
    values.promote_model(decl, decl.get("staging"), decl.get("prod"), "diabetes", repo)
    after = snapshot(repo)
    changed = [p.relative_to(repo).as_posix() for p in before if before[p] != after[p]]
    assert changed == ["environments/prod/diabetes.yaml"]
    assert yaml.safe_load(read(repo, "prod", "diabetes"))["model"] == {
        "version": "3",
        "sha256": SHA_C,
        "subPath": "diabetes/3",
    }


def test_promote_chart_pins_the_version_in_the_declaration_argocd_and_flux_together(repo):
    prod = environments.load(repo).get("prod").chart_version
    publish_chart(repo, "9.0.0")
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
    assert decl.get("staging").chart_version == "9.0.0"
    assert decl.get("prod").chart_version == prod
    assert manifests.check_all(decl, repo) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, r: values.set_image(d, d.get("dev"), "bad tag", None, r), "not a valid image tag"),
        (lambda d, r: values.set_image(d, d.get("dev"), "1.0", "sha256:xyz", r), "is not a digest"),
        (lambda d, r: values.set_image(d, d.get("staging"), "1.0", None, r), "staging requires an image digest"),
        (lambda d, r: values.promote_image(d, d.get("dev"), d.get("prod"), r), "promotes to staging, not prod"),
        (lambda d, r: values.promote_image(d, d.get("dev"), d.get("dev"), r), "same environment"),
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


def test_an_image_without_digest_is_not_promoted_to_a_pinned_environment(repo):
    drop_dev_digest(repo)
    decl = environments.load(repo)
    before = snapshot(repo)
    with pytest.raises(OpsError, match="requires an image digest"):
        values.promote_image(decl, decl.get("dev"), decl.get("staging"), repo)
    assert snapshot(repo) == before


def test_a_model_from_dev_is_not_promoted_into_the_model_store_without_its_artifact(repo):
    decl = environments.load(repo)
    before = snapshot(repo)
    with pytest.raises(OpsError) as refused:
        values.promote_model(decl, decl.get("dev"), decl.get("staging"), "diabetes", repo)
    assert str(refused.value) == (
        "dev pins no model.sha256 for diabetes (its image pins the artifact), but pinned staging reads it from "
        "the model store: pass --artifact DIR, the directory released to diabetes/1, to take version and sha256 "
        "from its metadata.json"
    )
    assert snapshot(repo) == before


def _write(directory, name, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "metadata.json").unlink(), r"--artifact .*: cannot read metadata.json \(No such file"),
        (lambda d: _write(d, "metadata.json", "{version: 1"), r"metadata.json is not valid JSON"),
        (lambda d: _write(d, "metadata.json", '{"version": "1"}'), r"model_sha256 None is not 64 lowercase hex"),
        (lambda d: _write(d, "model.skops", "tampered"), r"model.skops has sha256 [a-f0-9]{64}, but .* records"),
        (
            lambda d: _write(d, "metadata.json", json.dumps({"version": "2", "model_sha256": SHA_C})),
            r"records model.version 2, but dev pins 1 for penguins: promote the artifact dev runs",
        ),
    ],
)
def test_a_bad_artifact_is_refused_naming_the_problem(repo, tmp_path, damage, message):
    decl = environments.load(repo)
    artifact, _ = released_artifact(tmp_path / "artifact", "1")
    damage(artifact)
    before = snapshot(repo)
    with pytest.raises(OpsError, match=message):
        values.promote_model(decl, decl.get("dev"), decl.get("staging"), "penguins", repo, artifact=artifact)
    assert snapshot(repo) == before


def test_validate_requires_a_sha256_where_a_pinned_environment_reads_the_model_store(repo):
    path = repo / "environments/prod/penguins.yaml"
    path.write_text(path.read_text().replace(yaml.safe_load(path.read_text())["model"]["sha256"], '""'))
    decl = environments.load(repo)
    assert values.pin_errors(decl, decl.get("prod"), decl.get("prod").release("penguins"), repo) == [
        "prod requires model.sha256 for penguins: it reads the model store (pinned in environments.yaml)"
    ]


def test_validate_refuses_a_sha256_pin_on_an_artifact_baked_into_the_image(repo):
    path = repo / "environments/dev/penguins.yaml"
    path.write_text(path.read_text().replace('sha256: ""', f"sha256: {SHA_C}"))
    decl = environments.load(repo)
    problems = values.pin_errors(decl, decl.get("dev"), decl.get("dev").release("penguins"), repo)
    assert len(problems) == 1
    assert problems[0].startswith(
        "environments/dev/penguins.yaml: model.sha256 is set, but penguins is the artifact baked into the image"
    )
    assert problems[0].endswith("leave it empty: the image digest pins the artifact")
    # set-image validates dev too, so the pin cannot slip through with the next image either.
    with pytest.raises(OpsError, match=r"model\.sha256 is set, but penguins is the artifact baked"):
        values.set_image(decl, decl.get("dev"), "0.9.0", None, repo)


def test_validate_catches_a_store_path_that_names_another_version(repo):
    path = repo / "environments/prod/penguins.yaml"
    path.write_text(path.read_text().replace('version: "1"', 'version: "2"'))
    decl = environments.load(repo)
    problems = values.pin_errors(decl, decl.get("prod"), decl.get("prod").release("penguins"), repo)
    assert problems == [
        "environments/prod/penguins.yaml: model.subPath is 'penguins/1', but version 2 of penguins is at "
        "'penguins/2' in the model store"
    ]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text.replace("replicaCount: 1", "replicaCount: -3"), "dev/diabetes: replicaCount"),
        (lambda text: text + "\nreplicaCount: 2\n", "is not valid YAML"),
    ],
)
def test_an_edit_over_a_values_file_the_schema_or_yaml_rejects_is_refused(repo, damage, message):
    decl = environments.load(repo)
    path = repo / "environments/dev/values.yaml"
    path.write_text(damage(path.read_text()))
    snapshot = path.read_text()
    with pytest.raises(OpsError, match=message):
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
    subprocess.run([*GIT, "commit", "-qam", "dev at 0.4.0"], cwd=repo, check=True)
    run = msops("promote", "--from", "dev", "--to", "staging", "--image", "--commit", root=repo)
    assert run.returncode == 0, run.stderr
    assert '+  tag: "0.4.0"' in run.stdout
    assert git(repo, "log", "-1", "--format=%s").strip() == "Promote image 0.4.0 from dev to staging"
    assert git(repo, "status", "--porcelain") == ""


def test_cli_failure_is_one_line_and_exit_1(repo):
    run = msops("set-image", "--env", "prod", "--tag", "x", "--digest", "sha256:nope", root=repo)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "set-image: 'sha256:nope' is not a digest: expected sha256: followed by 64 lowercase hex digits"
    ]


def test_cli_promotes_one_model_and_commits_only_its_file(repo, tmp_path):
    pin_model(repo, "dev", "diabetes", "7")
    subprocess.run([*GIT, "commit", "-qam", "dev: diabetes 7"], cwd=repo, check=True)
    artifact, sha = released_artifact(tmp_path / "diabetes-7", "7")
    promote = ("promote", "--from", "dev", "--to", "staging")
    run = msops(*promote, "--model", "diabetes", "--artifact", str(artifact), "--commit", root=repo)
    assert run.returncode == 0, run.stderr
    assert f"+  sha256: {sha}" in run.stdout
    show = git(repo, "show", "--stat", "--format=%s", "HEAD")
    assert show.splitlines()[0] == "Promote diabetes 7 from dev to staging"
    assert "environments/staging/diabetes.yaml" in show
    assert "penguins" not in show
    both = msops(*promote, "--model", "diabetes", "--image", root=repo)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
    alone = msops(*promote, "--image", "--artifact", str(artifact), root=repo)
    assert alone.returncode == 1
    assert alone.stderr.strip().splitlines() == [
        "promote: --artifact goes with --model NAME: it gives that model's version and sha256"
    ]
