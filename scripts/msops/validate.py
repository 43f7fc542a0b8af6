"""Validation of every environment and of the GitOps manifests: schema, render, kubeconform, agreement."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import OpsError, manifests, tools
from .environments import Declaration, Environment
from .render import render
from .tools import ROOT
from .values import schema_errors

DEFAULT_KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
PUBLIC_SCHEMA_LOCATIONS = (
    "default",
    "https://raw.githubusercontent.com/datreeio/CRDs-catalog/main/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json",
)


def mirror_locations(schema_dir: Path) -> tuple[str, ...]:
    """kubeconform locations for a local mirror laid out like ../shared/schemas."""
    if not (schema_dir / "kubernetes").is_dir() or not (schema_dir / "crds").is_dir():
        raise OpsError(f"schema directory {schema_dir} lacks kubernetes/ and crds/ (see shared/schemas/README.md)")
    core = "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    crds = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
    return (f"{schema_dir}/kubernetes/{core}", f"{schema_dir}/crds/{crds}")


def kubeconform(paths: list[Path], version: str, locations: tuple[str, ...]) -> str:
    """Run kubeconform -strict; return its summary line or raise OpsError with its findings."""
    args = [tools.find("kubeconform"), "-strict", "-summary", "-output", "text", "-kubernetes-version", version]
    for location in locations:
        args += ["-schema-location", location]
    output = tools.run([*args, *map(str, paths)])
    return output.strip().splitlines()[-1] if output.strip() else ""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.lines.append(f"ok    {line}")

    def fail(self, line: str) -> None:
        self.lines.append(f"FAIL  {line}")
        self.failures.append(line)


def validate(
    decl: Declaration,
    envs: list[Environment],
    versions: tuple[str, ...] = DEFAULT_KUBERNETES_VERSIONS,
    locations: tuple[str, ...] = PUBLIC_SCHEMA_LOCATIONS,
    root: Path = ROOT,
) -> Report:
    report = Report()
    problems = manifests.check_all(decl, root)
    for problem in problems:
        report.fail(f"gitops manifests: {problem}")
    if not problems:
        report.ok("Argo CD and Flux manifests agree with environments.yaml; every path they name exists")
    with tempfile.TemporaryDirectory(prefix="msops-validate-") as scratch:
        for env in envs:
            errors = schema_errors(decl, env, root)
            if errors:
                for error in errors:
                    report.fail(f"{env.name}: values schema: {error}")
                continue
            report.ok(f"{env.name}: values pass chart/values.schema.json")
            try:
                rendered = render(decl, env, root)
            except OpsError as exc:
                report.fail(f"{env.name}: {exc}")
                continue
            target = Path(scratch) / f"{env.name}.yaml"
            target.write_text(rendered)
            _kubeconform_each(report, f"{env.name}: rendered chart", [target], versions, locations)
        gitops_dirs = [root / manifests.ARGOCD_DIR, root / manifests.FLUX_DIR]
        _kubeconform_each(report, "Argo CD + Flux manifests", gitops_dirs, versions, locations)
    return report


def _kubeconform_each(
    report: Report, label: str, paths: list[Path], versions: tuple[str, ...], locations: tuple[str, ...]
) -> None:
    for version in versions:
        try:
            report.ok(f"{label}: kubeconform {version}: {kubeconform(paths, version, locations)}")
        except OpsError as exc:
            report.fail(f"{label}: kubeconform {version}: {exc}")
