import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kube import ROOT


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch git repository holding copies of chart/ and environments/, committed once."""
    for part in ("chart", "environments"):
        shutil.copytree(ROOT / part, tmp_path / part)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=tmp_path, check=True)
    return tmp_path
