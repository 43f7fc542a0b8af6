"""One source of truth: Argo CD, Flux and the scripts agree with environments.yaml."""

from pathlib import Path

import pytest
from msops import OpsError, environments, manifests

from tests.kube import ROOT


def test_declaration_lists_dev_staging_prod_in_promotion_order():
    decl = environments.load()
    assert list(decl.environments) == ["dev", "staging", "prod"]
    assert decl.get("dev").promotes_to == "staging"
    assert decl.get("staging").promotes_to == "prod"
    assert decl.get("prod").promotes_to is None
    assert decl.get("prod").sync == "manual"
    assert decl.get("staging").require_digest
    assert decl.get("prod").require_digest


def test_argocd_and_flux_agree_with_the_declaration():
    assert manifests.check_all(environments.load()) == []


def test_every_path_named_in_argocd_or_flux_exists():
    referenced = manifests.referenced_paths(ROOT)
    assert len(referenced) >= 10
    missing = [f"{where}: {target}" for where, target in referenced if not target.exists()]
    assert missing == []


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        (
            "environments/argocd/applicationset.yaml",
            "namespace: model-server-staging",
            "namespace: model-server-stg",
            "element 'staging' namespace",
        ),
        ("environments/argocd/applicationset.yaml", "releaseName: model-server", "releaseName: model", "releaseName"),
        (
            "environments/argocd/applicationset.yaml",
            "targetRevision: main",
            "targetRevision: develop",
            "targetRevision",
        ),
        (
            "environments/flux/prod/helmrelease.yaml",
            "targetNamespace: model-server-prod",
            "targetNamespace: prod",
            "'prod' targetNamespace",
        ),
        (
            "environments/flux/dev/helmrelease.yaml",
            "- environments/dev/values.yaml",
            "- environments/dev/values-old.yaml",
            "'dev' valuesFiles",
        ),
        ("environments/flux/source/gitrepository.yaml", "branch: main", "branch: master", "ref.branch"),
        (
            "environments/flux/clusters/staging/model-server.yaml",
            "path: ./environments/flux/staging",
            "path: ./environments/flux/stage",
            "applies ./environments/flux/staging",
        ),
        (
            "environments/argocd/project.yaml",
            "namespace: model-server-prod",
            "namespace: other",
            "does not allow destination",
        ),
    ],
)
def test_a_manifest_that_drifts_from_the_declaration_is_named(repo, file, old, new, complaint):
    _edit(repo / file, old, new)
    problems = manifests.check_all(environments.load(repo), repo)
    assert any(complaint in problem for problem in problems), problems


def test_a_manifest_naming_a_missing_file_is_caught(repo):
    (repo / "environments/flux/source").rename(repo / "environments/flux/sources")
    problems = manifests.check_paths(repo)
    assert any("environments/flux/source" in p and "does not exist" in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: staging\n", "name: Staging\n", "is not a DNS label"),
        ("- environments/prod/values.yaml", "- environments/prod/missing.yaml", "does not exist"),
        ("sync: manual", "sync: sometimes", "sync must be automated or manual"),
        ("promotesTo: prod", "promotesTo: production", "unknown environment 'production'"),
        ("releaseName: model-server", "releaseName: ''", "releaseName must be a non-empty str"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_field(repo, old, new, message):
    _edit(repo / "environments/environments.yaml", old, new)
    with pytest.raises(OpsError, match=message):
        environments.load(repo)
