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
    assert decl.get("staging").pinned
    assert decl.get("prod").pinned


def test_every_environment_serves_both_models_one_release_each():
    decl = environments.load()
    for env in decl.environments.values():
        assert [(r.model, r.name) for r in env.releases] == [
            ("diabetes", "model-server-diabetes"),
            ("penguins", "model-server-penguins"),
        ]
        assert env.release("penguins").values_files == (
            "environments/models/penguins.yaml",
            f"environments/{env.name}/values.yaml",
            f"environments/{env.name}/penguins.yaml",
        )
        assert env.values_files == (f"environments/{env.name}/values.yaml",)


def test_dev_follows_the_chart_on_main_while_staging_and_prod_pin_a_published_version():
    decl = environments.load()
    assert decl.get("dev").chart_version is None
    assert decl.get("staging").chart_version == decl.get("prod").chart_version
    assert decl.chart_registry == "oci://ghcr.io/model-server-gitops/charts"


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
        (
            "environments/argocd/applicationset.yaml",
            'releaseName: "model-server-{{ .model }}"',
            'releaseName: "model-{{ .model }}"',
            "releaseName",
        ),
        (
            "environments/argocd/applicationset.yaml",
            "targetRevision: main",
            "targetRevision: develop",
            "targetRevision",
        ),
        (
            "environments/argocd/applicationset.yaml",
            "preserveResourcesOnDeletion: true",
            "preserveResourcesOnDeletion: false",
            "preserveResourcesOnDeletion",
        ),
        ("environments/argocd/applicationset.yaml", "- /spec/syncPolicy", "- /spec/source", "/spec/syncPolicy"),
        (
            "environments/argocd/applicationset.yaml",
            "- environments/prod/penguins.yaml",
            "- environments/prod/diabetes.yaml",
            "element 'prod' model 'penguins' valuesFiles",
        ),
        ("environments/argocd/applicationset.yaml", 'chartVersion: "0.4.0"', 'chartVersion: "0.3.0"', "chartVersion"),
        (
            "environments/flux/prod/diabetes.yaml",
            "targetNamespace: model-server-prod",
            "targetNamespace: prod",
            "'model-server-diabetes' in prod targetNamespace",
        ),
        (
            "environments/flux/dev/penguins.yaml",
            "- environments/dev/penguins.yaml",
            "- environments/dev/values-old.yaml",
            "in dev valuesFiles",
        ),
        (
            "environments/flux/prod/penguins.yaml",
            "kind: Rollout",
            "kind: Deployment",
            "healthCheckExprs entry for Rollout",
        ),
        ("environments/flux/staging/chart.yaml", 'tag: "0.4.0"', 'tag: "0.3.0"', "OCIRepository of staging ref.tag"),
        ("environments/flux/prod/chart.yaml", "provider: cosign", "provider: notation", "cosign signature"),
        (
            "environments/flux/staging/penguins.yaml",
            "valuesKey: staging.penguins.yaml",
            "valuesKey: staging.diabetes.yaml",
            "valuesFrom",
        ),
        (
            "environments/flux/prod/kustomization.yaml",
            "prod.penguins.yaml=../../prod/penguins.yaml",
            "prod.penguins.yaml=../../staging/penguins.yaml",
            "prod.penguins.yaml is generated from",
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
        (
            "environments/argocd/project.yaml",
            "- ghcr.io/model-server-gitops/charts",
            "- ghcr.io/someone-else/charts",
            "does not allow ghcr.io/model-server-gitops/charts",
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


# A declaration edit (old -> new) and what the refusal must say; one case a line, so it reads as a table.
# fmt: off
BAD_DECLARATIONS = [
    ("name: staging\n", "name: Staging\n", "is not a DNS label"),
    ("models: [diabetes, penguins]\n    # Prod", "models: [diabetes, iris]\n    # Prod", "iris.yaml does not exist"),
    ("sync: manual", "sync: sometimes", "sync must be automated or manual"),
    ("promotesTo: prod", "promotesTo: production", "unknown environment 'production'"),
    ("releaseName: model-server-{model}", "releaseName: ''", "releaseName must be a non-empty str"),
    ("releaseName: model-server-{model}", "releaseName: ms-{name}", "may only use"),
    ("chartVersion: 0.4.0\n    models: [diabetes, penguins]\n    # Prod", "models: [diabetes]\n    # Prod", "no chartV"),  # noqa: E501
    ("chartVersion: 0.4.0", "chartVersion: latest", "chartVersion must be a quoted semantic version"),
    ("registry: oci://ghcr.io", "registry: https://ghcr.io", "chart.registry must be an oci:// reference"),
]
# fmt: on


@pytest.mark.parametrize(("old", "new", "message"), BAD_DECLARATIONS)
def test_a_bad_declaration_is_refused_naming_the_field(repo, old, new, message):
    _edit(repo / "environments/environments.yaml", old, new)
    with pytest.raises(OpsError, match=message):
        environments.load(repo)
