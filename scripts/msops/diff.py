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
from .render import render
from .tools import ROOT


def unified(before: str, after: str, before_label: str, after_label: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), before_label, after_label))


def between_environments(first: str, second: str, root: Path = ROOT) -> str:
    decl = environments_module.load(root)
    a, b = decl.get(first), decl.get(second)
    return unified(render(decl, a, root), render(decl, b, root), f"{first} (rendered)", f"{second} (rendered)")


def against_ref(ref: str, env_name: str, root: Path = ROOT) -> str:
    """What merging the work tree would change in ``env_name``'s cluster, compared with ``ref``."""
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
        before = render(old_decl, old_decl.get(env_name), old_root) if env_name in old_decl.environments else ""
        after = render(new_decl, new_decl.get(env_name), root)
    return unified(before, after, f"{env_name} at {ref}", f"{env_name} in the work tree")
