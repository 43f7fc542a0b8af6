"""Validation of every environment and of the GitOps manifests: schema, render, kubeconform, agreement,
and the third-party scorers (kube-score, checkov) over every environment and chart/ci values file."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import OpsError, manifests, scorers, tools
from .environments import Declaration, Environment
from .render import render
from .tools import ROOT
from .values import release_problems

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
    models: list[str] | None = None,
    scored_by: tuple[str, ...] = scorers.TOOLS,
) -> Report:
    """Every check, each line in the report; ``scored_by`` names the scorers to run (none: skip them)."""
    report = Report()
    renderings: list[scorers.Rendering] = []
    problems = manifests.check_all(decl, root)
    for problem in problems:
        report.fail(f"gitops manifests: {problem}")
    if not problems:
        report.ok("Argo CD and Flux manifests agree with environments.yaml; every path they name exists")
    with tempfile.TemporaryDirectory(prefix="msops-validate-") as scratch:
        for env in envs:
            for release in env.select(models):
                where = f"{env.name}/{release.model}"
                try:
                    errors = release_problems(decl, env, release, root)
                    rendered = "" if errors else render(decl, env, release, root)
                except OpsError as exc:
                    report.fail(f"{where}: {exc}")
                    continue
                for error in errors:
                    report.fail(f"{where}: values: {error}")
                if errors:
                    continue
                chart = f"chart {env.chart_version}" if env.chart_version else f"chart from {decl.revision}"
                report.ok(f"{where}: values pass the schema of the {chart}, pins complete")
                target = Path(scratch) / f"{env.name}-{release.model}.yaml"
                target.write_text(rendered)
                _kubeconform_each(report, f"{where}: rendered chart", [target], versions, locations)
                renderings.append(scorers.Rendering(where, rendered))
        gitops = manifests.object_files(root)
        _kubeconform_each(report, "Argo CD + Flux manifests", gitops, versions, locations)
    if scored_by:
        try:
            renderings += chart_values_renderings(decl, root)
        except OpsError as exc:
            report.fail(f"{decl.chart}/ci: {exc}")
        # An ignore only a filtered run leaves out is not unused: judge those on complete runs only.
        complete = models is None and {env.name for env in envs} == set(decl.environments)
        add_scores(report, renderings, scored_by, root, complete)
    return report


def chart_values_renderings(decl: Declaration, root: Path = ROOT) -> list[scorers.Rendering]:
    """The work tree's chart with each chart/ci/*-values.yaml, each as its own release in its own namespace
    (so no scorer can match one file's NetworkPolicy or PodDisruptionBudget to another's pods)."""
    chart = root / decl.chart
    renderings = []
    for values in sorted((chart / "ci").glob("*-values.yaml")):
        name = "ci-" + values.name.removesuffix("-values.yaml")
        args = ["template", name, str(chart), "--namespace", name, "--values", str(values)]
        renderings.append(scorers.Rendering(str(values.relative_to(root)), tools.run([tools.find("helm"), *args])))
    return renderings


def add_scores(
    report: Report, renderings: list[scorers.Rendering], scored_by: tuple[str, ...], root: Path, complete: bool
) -> None:
    """The scorers' verdict in the report: a line per rendering and tool, a failure per unexcused finding
    (naming the rendering, the object, the container and the check) and per ignore that excuses nothing."""
    try:
        results = scorers.score(renderings, scored_by, root, complete)
    except OpsError as exc:
        report.fail(f"scorers: {exc}")
        return
    for result in results:
        for rendering in renderings:
            unjustified = [f for f in result.unjustified if f.where == rendering.where]
            for finding in unjustified:
                report.fail(f"{finding} (fix it, or excuse it with a reason in scorers/{result.tool}.yaml)")
            if not unjustified:
                report.ok(f"{rendering.where}: {result.summary(rendering.where)}")
        for ignore in result.unused:
            report.fail(f"scorers/{result.tool}.yaml: {ignore.describe()} excuses no finding any more: delete it")


def chart_change_without_bump(base: str, root: Path = ROOT, chart: str = "chart") -> str | None:
    """What `ct lint` checks: a change under chart/ since ``base`` needs a new Chart.yaml version, or
    the pinned environments never get it (chart.yml publishes only new versions). None when fine."""
    try:
        changed = subprocess.run(
            ["git", "diff", "--quiet", base, "--", chart], cwd=root, capture_output=True, check=False
        ).returncode
        before = subprocess.run(
            ["git", "show", f"{base}:{chart}/Chart.yaml"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise OpsError(f"cannot compare {chart}/ with {base}: {exc}") from None
    if changed == 0:
        return None
    old, new = yaml.safe_load(before)["version"], yaml.safe_load((root / chart / "Chart.yaml").read_text())["version"]
    if old == new:
        return f"{chart}/ changed since {base} but {chart}/Chart.yaml still says version {new}: bump it"
    return None


def _kubeconform_each(
    report: Report, label: str, paths: list[Path], versions: tuple[str, ...], locations: tuple[str, ...]
) -> None:
    for version in versions:
        try:
            report.ok(f"{label}: kubeconform {version}: {kubeconform(paths, version, locations)}")
        except OpsError as exc:
            report.fail(f"{label}: kubeconform {version}: {exc}")
