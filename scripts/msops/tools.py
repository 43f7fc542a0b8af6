"""External tools (helm, kubeconform): found in .tools/bin first, run with clear failures."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import OpsError

# The repository the commands act on; MSOPS_ROOT points them at another checkout (tests use a scratch copy).
ROOT = Path(os.environ.get("MSOPS_ROOT") or Path(__file__).resolve().parents[2])
TOOLS_BIN = Path(__file__).resolve().parents[2] / ".tools" / "bin"


def find(name: str) -> str:
    """Path of the pinned tool ``name``; OpsError telling how to install it when absent."""
    local = TOOLS_BIN / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise OpsError(f"'{name}' not found: run scripts/tools.sh to install the pinned tools into .tools/bin")


def run(args: list[str], *, cwd: Path = ROOT, input_text: str | None = None) -> str:
    """Run a tool and return stdout; raise OpsError with the tool's own message on failure."""
    try:
        done = subprocess.run(args, cwd=cwd, input=input_text, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise OpsError(f"could not run {args[0]}: {exc}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise OpsError(f"{Path(args[0]).name} {args[1] if len(args) > 1 else ''} failed: {message}")
    return done.stdout
