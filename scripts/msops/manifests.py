"""Checks that the Argo CD and Flux manifests say what environments.yaml declares, and name only real paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .environments import Declaration, Environment, Release
from .tools import ROOT

ARGOCD_DIR = Path("environments/argocd")
APPLICATIONSET = ARGOCD_DIR / "applicationset.yaml"
FLUX_DIR = Path("environments/flux")
# kustomize's own files: build instructions, not Kubernetes objects (kubeconform and kubectl skip them).
KUSTOMIZE_FILES = ("kustomization.yaml", "kustomizeconfig.yaml")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def _find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def _compare(problems: list[str], where: str, actual: Any, expected: Any) -> None:
    if actual != expected:
        problems.append(f"{where} is {actual!r}; environments.yaml says {expected!r}")


def _all_docs(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(directory.rglob("*.yaml"))
        if path.name not in KUSTOMIZE_FILES
        for doc in _docs(path)
    ]


def object_files(root: Path = ROOT) -> list[Path]:
    """Every Argo CD and Flux manifest that holds Kubernetes objects (for kubeconform and dry-runs)."""
    return [
        path
        for directory in (root / ARGOCD_DIR, root / FLUX_DIR)
        for path in sorted(directory.rglob("*.yaml"))
        if path.name not in KUSTOMIZE_FILES
    ]


def argocd_elements(appset: dict[str, Any]) -> list[dict[str, Any]]:
    """The environment elements of the ApplicationSet's first (list) generator inside its matrix."""
    elements = []
    for generator in appset["spec"].get("generators", []):
        for child in generator.get("matrix", {}).get("generators", []):
            elements += child.get("list", {}).get("elements", [])
    return elements


def values_key(file: str) -> str:
    """The key of a values file in a Flux values ConfigMap: environments/staging/x.yaml -> staging.x.yaml."""
    return file.removeprefix("environments/").replace("/", ".")


def flux_chart_file(env: Environment) -> Path:
    """The OCIRepository that pins a pinned environment's chart for Flux."""
    return FLUX_DIR / env.name / "chart.yaml"


def flux_values_files(decl: Declaration, release: Release) -> list[str]:
    """What a git-sourced Flux HelmRelease must list: unlike `helm -f` (and Argo CD), Flux's valuesFiles
    replace the chart's values.yaml instead of layering over it, so the chart defaults come first."""
    return [f"{decl.chart}/values.yaml", *release.values_files]


def check_argocd(decl: Declaration, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    docs = [doc for _, doc in _all_docs(root / ARGOCD_DIR)]
    appsets = _find(docs, "ApplicationSet")
    if len(appsets) != 1:
        return [f"{ARGOCD_DIR} must hold exactly one ApplicationSet, found {len(appsets)}"]
    spec = appsets[0]["spec"]
    if spec.get("syncPolicy", {}).get("preserveResourcesOnDeletion") is not True:
        problems.append("ApplicationSet must set syncPolicy.preserveResourcesOnDeletion: true")
    if {"jsonPointers": ["/spec/syncPolicy"]} not in spec.get("ignoreApplicationDifferences", []):
        problems.append("ApplicationSet must ignore Application differences at /spec/syncPolicy")
    if spec["template"]["metadata"].get("finalizers"):
        problems.append("ApplicationSet template must not set finalizers (they cascade-delete the models)")
    # The sources live in the templatePatch (Go template): its fixed parts must name the declared ones.
    patch = spec.get("templatePatch", "")
    host = decl.chart_registry.removeprefix("oci://")
    release_template = decl.release_pattern.replace("{model}", "{{ .model }}")
    for revision in re.findall(r"targetRevision: ([^\s\"{]+)", patch):
        _compare(problems, "ApplicationSet templatePatch targetRevision", revision, decl.revision)
    for what, text in (
        ("repoURL", f"repoURL: {decl.repo_url}"),
        ("chart path", f"path: {decl.chart}"),
        ("chart registry", f"repoURL: {host}"),
        ("chart name", f"chart: {decl.chart_name}"),
        ("releaseName", f'releaseName: "{release_template}"'),
        ("values source", "ref: values"),
    ):
        if text not in patch:
            problems.append(f"ApplicationSet templatePatch {what}: no '{text}' (environments.yaml declares it)")
    elements = {e.get("name"): e for e in argocd_elements(appsets[0])}
    _compare(problems, "ApplicationSet environments", sorted(elements), sorted(decl.environments))
    for name, env in decl.environments.items():
        element = elements.get(name, {})
        where = f"ApplicationSet element '{name}'"
        _compare(problems, f"{where} namespace", element.get("namespace"), env.namespace)
        _compare(problems, f"{where} cluster", element.get("cluster"), env.cluster)
        _compare(problems, f"{where} sync", element.get("sync"), env.sync)
        _compare(problems, f"{where} chartVersion", element.get("chartVersion"), env.chart_version or "")
        models = {m.get("model"): m for m in element.get("models", [])}
        _compare(problems, f"{where} models", sorted(models), sorted(r.model for r in env.releases))
        for release in env.releases:
            actual = models.get(release.model, {}).get("valuesFiles")
            _compare(problems, f"{where} model '{release.model}' valuesFiles", actual, list(release.values_files))
    for project in _find(docs, "AppProject"):
        for repo in (decl.repo_url, host):
            if repo not in project["spec"].get("sourceRepos", []):
                problems.append(f"AppProject {project['metadata']['name']} does not allow {repo}")
        allowed = {(d.get("server"), d.get("namespace")) for d in project["spec"].get("destinations", [])}
        for env in decl.environments.values():
            if (env.cluster, env.namespace) not in allowed:
                problems.append(f"AppProject does not allow destination {env.cluster} / {env.namespace}")
    if not _find(docs, "AppProject"):
        problems.append(f"{ARGOCD_DIR} holds no AppProject")
    return problems


def _kustomize_values(root: Path, env: Environment) -> tuple[dict[str, str], list[str]]:
    """The values ConfigMap kustomization.yaml generates for ``env`` (key -> repository path), and its resources."""
    path = root / FLUX_DIR / env.name / "kustomization.yaml"
    if not path.is_file():
        return {}, []
    data = yaml.safe_load(path.read_text()) or {}
    generated = {}
    for generator in data.get("configMapGenerator", []):
        for item in generator.get("files", []):
            key, _, file = item.partition("=")
            target = (path.parent / file).resolve()
            base = root.resolve()
            generated[key] = str(target.relative_to(base)) if target.is_relative_to(base) else str(target)
    return generated, data.get("resources", [])


def check_flux(decl: Declaration, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    docs = _all_docs(root / FLUX_DIR)
    repos = [doc for _, doc in docs if doc.get("kind") == "GitRepository"]
    if len(repos) != 1:
        return [f"{FLUX_DIR} must hold exactly one GitRepository, found {len(repos)}"]
    repo = repos[0]
    _compare(problems, "GitRepository url", repo["spec"].get("url"), decl.repo_url)
    _compare(problems, "GitRepository ref.branch", repo["spec"].get("ref", {}).get("branch"), decl.revision)
    in_env: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, doc in docs:
        if path.parent.parent == root / FLUX_DIR:
            in_env.setdefault(path.parent.name, []).append((path, doc))
    _compare(
        problems,
        "Flux environments",
        sorted(n for n in in_env if n not in ("source", "clusters")),
        sorted(decl.environments),
    )
    for name, env in decl.environments.items():
        found = in_env.get(name, [])
        releases = {doc["spec"].get("releaseName"): doc for _, doc in found if doc.get("kind") == "HelmRelease"}
        _compare(
            problems, f"Flux HelmReleases in {FLUX_DIR}/{name}", sorted(releases), sorted(r.name for r in env.releases)
        )
        oci = [doc for _, doc in found if doc.get("kind") == "OCIRepository"]
        generated, resources = _kustomize_values(root, env)
        if env.chart_version is not None:
            if len(oci) != 1:
                problems.append(f"{flux_chart_file(env)} must hold the one OCIRepository of {name}'s chart")
                continue
            where = f"Flux OCIRepository of {name}"
            _compare(problems, f"{where} url", oci[0]["spec"].get("url"), f"{decl.chart_registry}/{decl.chart_name}")
            _compare(problems, f"{where} ref.tag", oci[0]["spec"].get("ref", {}).get("tag"), env.chart_version)
            if oci[0]["spec"].get("verify", {}).get("provider") != "cosign":
                problems.append(f"{where} does not verify the chart's cosign signature (spec.verify)")
            listed = sorted(p.name for p, _ in found)
            _compare(problems, f"{FLUX_DIR}/{name}/kustomization.yaml resources", sorted(resources), listed)
        for release in env.releases:
            spec = releases.get(release.name, {}).get("spec")
            if spec is None:
                continue
            where = f"Flux HelmRelease '{release.name}' in {name}"
            _compare(problems, f"{where} targetNamespace", spec.get("targetNamespace"), env.namespace)
            if not any(check.get("kind") == "Rollout" for check in spec.get("healthCheckExprs", [])):
                problems.append(
                    f"{where} has no healthCheckExprs entry for Rollout: with rollout.enabled, Helm 4's wait "
                    "cannot read a Rollout, and the upgrade would time out and be rolled back (docs/rollout.md)"
                )
            if env.chart_version is None:
                chart = spec.get("chart", {}).get("spec", {})
                _compare(problems, f"{where} chart", chart.get("chart"), f"./{decl.chart}")
                _compare(
                    problems, f"{where} sourceRef", chart.get("sourceRef", {}).get("name"), repo["metadata"]["name"]
                )
                _compare(problems, f"{where} valuesFiles", chart.get("valuesFiles"), flux_values_files(decl, release))
                continue
            ref = spec.get("chartRef", {})
            _compare(
                problems,
                f"{where} chartRef",
                (ref.get("kind"), ref.get("name")),
                (
                    "OCIRepository",
                    oci[0]["metadata"]["name"],
                ),
            )
            keys = [item.get("valuesKey") for item in spec.get("valuesFrom", [])]
            _compare(problems, f"{where} valuesFrom", keys, [values_key(f) for f in release.values_files])
            for key in keys:
                expected = next((f for f in release.values_files if values_key(f) == key), None)
                if expected and generated.get(key) != expected:
                    problems.append(
                        f"{FLUX_DIR}/{name}/kustomization.yaml: {key} is generated from "
                        f"{generated.get(key)!r}, not {expected!r}"
                    )
    cluster_paths = {
        doc["spec"]["path"] for path, doc in docs if doc.get("kind") == "Kustomization" and "clusters" in path.parts
    }
    for name in decl.environments:
        if f"./{FLUX_DIR}/{name}" not in cluster_paths:
            problems.append(f"no Flux Kustomization under {FLUX_DIR}/clusters applies ./{FLUX_DIR}/{name}")
    return problems


def referenced_paths(root: Path = ROOT) -> list[tuple[str, Path]]:
    """Every repository path an Argo CD or Flux manifest names, with the manifest that names it."""
    found: list[tuple[str, Path]] = []
    for path, doc in _all_docs(root / ARGOCD_DIR):
        if doc.get("kind") != "ApplicationSet":
            continue
        where = str(path.relative_to(root))
        for element in argocd_elements(doc):
            for model in element.get("models", []):
                # The templatePatch writes each as $values/<file>, relative to the repository root.
                found.extend((where, root / values_file) for values_file in model.get("valuesFiles", []))
    for path, doc in _all_docs(root / FLUX_DIR):
        where = str(path.relative_to(root))
        if doc.get("kind") == "HelmRelease" and "chart" in doc["spec"]:
            chart = doc["spec"]["chart"]["spec"]
            found.append((where, root / chart["chart"]))
            found.extend((where, root / values_file) for values_file in chart.get("valuesFiles", []))
        elif doc.get("kind") == "Kustomization":
            found.append((where, root / doc["spec"]["path"]))
    for kustomization in sorted((root / FLUX_DIR).rglob("kustomization.yaml")):
        data = yaml.safe_load(kustomization.read_text()) or {}
        where = str(kustomization.relative_to(root))
        found.extend((where, kustomization.parent / r) for r in data.get("resources", []))
        found.extend((where, kustomization.parent / c) for c in data.get("configurations", []))
        for generator in data.get("configMapGenerator", []):
            found.extend(
                (where, (kustomization.parent / item.partition("=")[2]).resolve()) for item in generator["files"]
            )
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
