"""Helpers for tests that render the chart or environments: tool paths, helm template, kubeconform locations."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "chart"
TOOLS = ROOT / ".tools" / "bin"
HELMS = ("helm", "helm4")
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.is_file():
        raise RuntimeError(f"{path} missing: scripts/test installs it via scripts/tools.sh")
    return str(path)


def schema_dir() -> Path | None:
    """The offline schema mirror: MSOPS_SCHEMA_DIR, else ../shared/schemas when present; None means online."""
    configured = os.environ.get("MSOPS_SCHEMA_DIR")
    if configured:
        return Path(configured)
    shared = ROOT.parent / "shared" / "schemas"
    return shared if shared.is_dir() else None


def helm(*args: str, binary: str = "helm", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([tool(binary), *args], capture_output=True, text=True, check=check, cwd=ROOT)


def template(
    *values: str, sets: tuple[str, ...] = (), binary: str = "helm", release: str = "rel", namespace: str = "ns"
) -> list[dict]:
    """Render the chart and parse every document."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for file in values:
        args += ["--values", str(ROOT / file)]
    for item in sets:
        args += ["--set", item]
    result = helm(*args, binary=binary)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(
    *sets: str, values_text: str | None = None, tmp_path: Path | None = None, binary: str = "helm"
) -> str:
    """Render expecting failure; return helm's error text."""
    args = ["template", "rel", str(CHART)]
    for item in sets:
        args += ["--set", item]
    if values_text is not None:
        assert tmp_path is not None
        file = tmp_path / "values.yaml"
        file.write_text(values_text)
        args += ["--values", str(file)]
    result = helm(*args, binary=binary, check=False)
    assert result.returncode != 0, f"expected failure, rendered:\n{result.stdout[:500]}"
    return result.stderr


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
