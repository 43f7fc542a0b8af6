"""Render an environment exactly as Argo CD and Flux would: same chart, release name, namespace, values files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import tools
from .environments import Declaration, Environment
from .tools import ROOT


def helm_template_args(
    decl: Declaration, env: Environment, root: Path = ROOT, replace: Mapping[str, Path] | None = None
) -> list[str]:
    """Arguments after ``helm``; ``replace`` swaps a declared values file for another path (a candidate edit)."""
    args = ["template", decl.release_name, str(root / decl.chart), "--namespace", env.namespace]
    for file in env.values_files:
        args += ["--values", str((replace or {}).get(file, root / file))]
    return args


def render(
    decl: Declaration,
    env: Environment,
    root: Path = ROOT,
    replace: Mapping[str, Path] | None = None,
    helm: str = "helm",
) -> str:
    """The manifests of one environment, as one multi-document YAML string."""
    return tools.run([tools.find(helm), *helm_template_args(decl, env, root, replace)])


def write(decl: Declaration, envs: list[Environment], out_dir: Path, root: Path = ROOT) -> list[Path]:
    """Render each environment to ``out_dir/<env>.yaml`` (each file replaced atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for env in envs:
        target = out_dir / f"{env.name}.yaml"
        temp = target.with_name(f".{target.name}.tmp")
        temp.write_text(render(decl, env, root))
        temp.replace(target)
        written.append(target)
    return written
