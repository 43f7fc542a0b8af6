"""Checks that the Argo CD and Flux manifests say what environments.yaml declares, and name only real paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .environments import Declaration, Environment
from .tools import ROOT

ARGOCD_DIR = Path("environments/argocd")
FLUX_DIR = Path("environments/flux")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def _find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def _compare(problems: list[str], where: str, actual: Any, expected: Any) -> None:
    if actual != expected:
        problems.append(f"{where} is {actual!r}; environments.yaml says {expected!r}")


def _all_docs(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(directory.rglob("*.yaml")) for doc in _docs(path)]


def check_argocd(decl: Declaration, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    docs = [doc for _, doc in _all_docs(root / ARGOCD_DIR)]
    appsets = _find(docs, "ApplicationSet")
    if len(appsets) != 1:
        return [f"{ARGOCD_DIR} must hold exactly one ApplicationSet, found {len(appsets)}"]
    spec = appsets[0]["spec"]
    source = spec["template"]["spec"]["source"]
    _compare(problems, "ApplicationSet source.repoURL", source.get("repoURL"), decl.repo_url)
    _compare(problems, "ApplicationSet source.targetRevision", source.get("targetRevision"), decl.revision)
    _compare(problems, "ApplicationSet source.path", source.get("path"), decl.chart)
    _compare(
        problems, "ApplicationSet source.helm.releaseName", source.get("helm", {}).get("releaseName"), decl.release_name
    )
    elements = {e.get("name"): e for g in spec.get("generators", []) for e in g.get("list", {}).get("elements", [])}
    _compare(problems, "ApplicationSet environments", sorted(elements), sorted(decl.environments))
    for name, env in decl.environments.items():
        element = elements.get(name, {})
        where = f"ApplicationSet element '{name}'"
        _compare(problems, f"{where} namespace", element.get("namespace"), env.namespace)
        _compare(problems, f"{where} cluster", element.get("cluster"), env.cluster)
        _compare(problems, f"{where} sync", element.get("sync"), env.sync)
        _compare(problems, f"{where} valuesFiles", element.get("valuesFiles"), list(env.values_files))
    for project in _find(docs, "AppProject"):
        if decl.repo_url not in project["spec"].get("sourceRepos", []):
            problems.append(f"AppProject {project['metadata']['name']} does not allow {decl.repo_url}")
        allowed = {(d.get("server"), d.get("namespace")) for d in project["spec"].get("destinations", [])}
        for env in decl.environments.values():
            if (env.cluster, env.namespace) not in allowed:
                problems.append(f"AppProject does not allow destination {env.cluster} / {env.namespace}")
    if not _find(docs, "AppProject"):
        problems.append(f"{ARGOCD_DIR} holds no AppProject")
    return problems


def check_flux(decl: Declaration, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    docs = _all_docs(root / FLUX_DIR)
    repos = [doc for _, doc in docs if doc.get("kind") == "GitRepository"]
    if len(repos) != 1:
        return [f"{FLUX_DIR} must hold exactly one GitRepository, found {len(repos)}"]
    repo = repos[0]
    _compare(problems, "GitRepository url", repo["spec"].get("url"), decl.repo_url)
    _compare(problems, "GitRepository ref.branch", repo["spec"].get("ref", {}).get("branch"), decl.revision)
    releases = {
        path.parent.name: doc
        for path, doc in docs
        if doc.get("kind") == "HelmRelease" and path.parent.parent == root / FLUX_DIR
    }
    _compare(problems, "Flux HelmRelease environments", sorted(releases), sorted(decl.environments))
    for name, env in decl.environments.items():
        if name not in releases:
            continue
        spec = releases[name]["spec"]
        chart = spec["chart"]["spec"]
        where = f"Flux HelmRelease '{name}'"
        _compare(problems, f"{where} releaseName", spec.get("releaseName"), decl.release_name)
        _compare(problems, f"{where} targetNamespace", spec.get("targetNamespace"), env.namespace)
        _compare(problems, f"{where} chart", chart.get("chart"), f"./{decl.chart}")
        _compare(problems, f"{where} valuesFiles", chart.get("valuesFiles"), flux_values_files(decl, env))
        _compare(problems, f"{where} sourceRef", chart.get("sourceRef", {}).get("name"), repo["metadata"]["name"])
    cluster_paths = {
        doc["spec"]["path"] for path, doc in docs if doc.get("kind") == "Kustomization" and "clusters" in path.parts
    }
    for name in decl.environments:
        if f"./{FLUX_DIR}/{name}" not in cluster_paths:
            problems.append(f"no Flux Kustomization under {FLUX_DIR}/clusters applies ./{FLUX_DIR}/{name}")
    return problems


def flux_values_files(decl: Declaration, env: Environment) -> list[str]:
    """What a Flux HelmRelease must list: unlike `helm -f` (and Argo CD), Flux's valuesFiles replace
    the chart's values.yaml instead of layering over it, so the chart defaults come first."""
    return [f"{decl.chart}/values.yaml", *env.values_files]


def referenced_paths(root: Path = ROOT) -> list[tuple[str, Path]]:
    """Every repository path an Argo CD or Flux manifest names, with the manifest that names it."""
    found: list[tuple[str, Path]] = []
    for path, doc in _all_docs(root / ARGOCD_DIR):
        if doc.get("kind") != "ApplicationSet":
            continue
        chart_path = doc["spec"]["template"]["spec"]["source"]["path"]
        found.append((str(path.relative_to(root)), root / chart_path))
        for generator in doc["spec"].get("generators", []):
            for element in generator.get("list", {}).get("elements", []):
                for values_file in element.get("valuesFiles", []):
                    # The templatePatch writes each as ../<file>, relative to the chart path.
                    found.append((str(path.relative_to(root)), (root / chart_path / ".." / values_file).resolve()))
    for path, doc in _all_docs(root / FLUX_DIR):
        where = str(path.relative_to(root))
        if doc.get("kind") == "HelmRelease":
            chart = doc["spec"]["chart"]["spec"]
            found.append((where, root / chart["chart"]))
            found.extend((where, root / values_file) for values_file in chart.get("valuesFiles", []))
        elif doc.get("kind") == "Kustomization":
            found.append((where, root / doc["spec"]["path"]))
    return found


def check_paths(root: Path = ROOT) -> list[str]:
    base = root.resolve()
    return [
        f"{where} names {target.relative_to(base) if target.is_relative_to(base) else target}, which does not exist"
        for where, target in referenced_paths(root)
        if not target.exists()
    ]


def check_all(decl: Declaration, root: Path = ROOT) -> list[str]:
    return check_argocd(decl, root) + check_flux(decl, root) + check_paths(root)
