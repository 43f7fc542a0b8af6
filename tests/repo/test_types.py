"""The server, the ops tools and the benchmarks type-check: mypy --strict as pyproject.toml's [tool.mypy] says."""

import subprocess
import sys

from tests.kube import ROOT


def test_model_server_msops_and_bench_pass_mypy_strict():
    # The venv's own mypy, with the stubs the dev lock pins; its cache (.mypy_cache) makes a rerun take a second.
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout, result.stdout
