"""Render a release exactly as Argo CD and Flux would: same chart version, release name, namespace, values files."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from . import OpsError, tools
from .environments import Declaration, Environment, Release
from .tools import ROOT


def chart_version(chart_dir: Path) -> str:
    return str(yaml.safe_load((chart_dir / "Chart.yaml").read_text())["version"])


def _git(args: list[str], git_root: Path) -> bytes:
    try:
        return subprocess.run(["git", *args], cwd=git_root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        raise OpsError(f"git {' '.join(args[:2])} failed: {detail}") from None


def publishing_commit(decl: Declaration, version: str, git_root: Path) -> str:
    """The commit that set Chart.yaml's version to ``version``: chart.yml published the chart from it."""
    chart_yaml = f"{decl.chart}/Chart.yaml"
    log = _git(["log", "--format=%H", "-G^version:", "--", chart_yaml], git_root).decode().split()
    for commit in log:
        text = _git(["show", f"{commit}:{chart_yaml}"], git_root)
        if str(yaml.safe_load(text).get("version")) == version:
            return commit
    raise OpsError(f"chart version {version} was never in {chart_yaml} (git history of {git_root}): not published")


@contextlib.contextmanager
def chart_dir(decl: Declaration, env: Environment, root: Path = ROOT, git_root: Path | None = None) -> Iterator[Path]:
    """The chart an environment installs: the work tree's, or the pinned version as git published it."""
    local = root / decl.chart
    if env.chart_version is None or env.chart_version == chart_version(local):
        yield local
        return
    commit = publishing_commit(decl, env.chart_version, git_root or root)
    with tempfile.TemporaryDirectory(prefix=f"msops-chart-{env.chart_version}-") as scratch:
        archive = _git(["archive", "--format=tar", commit, decl.chart], git_root or root)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(scratch, filter="data")
        yield Path(scratch) / decl.chart


def helm_template_args(
    decl: Declaration,
    env: Environment,
    release: Release,
    chart: Path,
    root: Path = ROOT,
    replace: Mapping[str, Path] | None = None,
) -> list[str]:
    """Arguments after ``helm``; ``replace`` swaps a declared values file for another path (a candidate edit)."""
    args = ["template", release.name, str(chart), "--namespace", env.namespace]
    for file in release.values_files:
        args += ["--values", str((replace or {}).get(file, root / file))]
    return args


def render(
    decl: Declaration,
    env: Environment,
    release: Release,
    root: Path = ROOT,
    replace: Mapping[str, Path] | None = None,
    git_root: Path | None = None,
) -> str:
    """The manifests of one release, as one multi-document YAML string."""
    with chart_dir(decl, env, root, git_root) as chart:
        return tools.run([tools.find("helm"), *helm_template_args(decl, env, release, chart, root, replace)])


def write(
    decl: Declaration, envs: list[Environment], out_dir: Path, root: Path = ROOT, models: list[str] | None = None
) -> list[Path]:
    """Render each release to ``out_dir/<env>-<model>.yaml`` (each file replaced atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for env in envs:
        for release in env.select(models):
            target = out_dir / f"{env.name}-{release.model}.yaml"
            temp = target.with_name(f".{target.name}.tmp")
            temp.write_text(render(decl, env, release, root))
            temp.replace(target)
            written.append(target)
    return written
