"""Supply chain: the runtime lock is audited for known vulnerabilities."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube import ROOT


@pytest.mark.slow
def test_pip_audit_finds_no_known_vulnerability_in_the_runtime_lock():
    audit = Path(sys.executable).parent / "pip-audit"
    lock = ROOT / "image" / "requirements.txt"
    args = [
        str(audit),
        "--strict",
        "--disable-pip",
        "--no-deps",
        "--requirement",
        str(lock),
        "--progress-spinner",
        "off",
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    output = result.stdout + result.stderr
    pinned = sum(1 for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#"))
    if output.count("could not be audited") >= pinned:
        # Builders that reach only the package index (not its JSON API or OSV) cannot look anything
        # up; GitHub CI (ci.yml) runs the same audit with --strict where the database is reachable.
        pytest.skip("vulnerability database unreachable from this machine: no package could be audited")
    assert result.returncode == 0, output
