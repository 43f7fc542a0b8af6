"""Rendered differences: between two environments, or for one environment between a git ref and the work tree."""

from __future__ import annotations

import difflib
import io
import subprocess
import tarfile
import tempfile
from pathlib import Path

from . import OpsError
from . import environments as environments_module
from .environments import Declaration, Environment
from .render import render
from .tools import ROOT


def unified(before: str, after: str, before_label: str, after_label: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), before_label, after_label))


def _rendered(decl: Declaration, env: Environment, model: str, root: Path, git_root: Path) -> str:
    """One model's release, or "" where the environment does not serve it."""
    if model not in {r.model for r in env.releases}:
        return ""
    return render(decl, env, env.release(model), root, git_root=git_root)


def _models(envs: list[Environment], models: list[str] | None) -> list[str]:
    served = list(dict.fromkeys(r.model for env in envs for r in env.releases))
    unknown = [m for m in models or [] if m not in served]
    if unknown:
        raise OpsError(f"no environment here serves {', '.join(unknown)} (served: {', '.join(served)})")
    return models or served


def between_environments(first: str, second: str, models: list[str] | None = None, root: Path = ROOT) -> str:
    """Per model, what ``second`` renders differently from ``first``."""
    decl = environments_module.load(root)
    a, b = decl.get(first), decl.get(second)
    return "".join(
        unified(
            _rendered(decl, a, model, root, root),
            _rendered(decl, b, model, root, root),
            f"{first}/{model} (rendered)",
            f"{second}/{model} (rendered)",
        )
        for model in _models([a, b], models)
    )


def against_ref(ref: str, env_name: str, models: list[str] | None = None, root: Path = ROOT) -> str:
    """What merging the work tree would change in ``env_name``'s cluster, compared with ``ref``, per model."""
    with tempfile.TemporaryDirectory(prefix="msops-diff-") as scratch:
        old_root = Path(scratch)
        try:
            archive = subprocess.run(
                ["git", "archive", "--format=tar", ref, "chart", "environments"],
                cwd=root,
                capture_output=True,
                check=True,
            ).stdout
        except subprocess.CalledProcessError as exc:
            raise OpsError(f"git archive {ref} failed: {exc.stderr.decode().strip()}") from None
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(old_root, filter="data")
        old_decl = environments_module.load(old_root)
        new_decl = environments_module.load(root)
        new_env = new_decl.get(env_name)
        old_env = old_decl.environments.get(env_name)
        envs = [new_env] + ([old_env] if old_env else [])
        return "".join(
            unified(
                _rendered(old_decl, old_env, model, old_root, root) if old_env else "",
                _rendered(new_decl, new_env, model, root, root),
                f"{env_name}/{model} at {ref}",
                f"{env_name}/{model} in the work tree",
            )
            for model in _models(envs, models)
        )
