import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from msops import environments, render

from tests.kube import ROOT

WHO = {"NAME": "t", "EMAIL": "t@example.com"}
GIT = ["git", "-c", f"user.email={WHO['EMAIL']}", "-c", f"user.name={WHO['NAME']}"]


def chart_version(root: Path) -> str:
    return yaml.safe_load((root / "chart/Chart.yaml").read_text())["version"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch git repository holding copies of chart/ and environments/: first one commit per chart
    version a pinned environment installs (the chart as git published it), then this checkout's."""
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    decl = environments.load()
    for env in decl.environments.values():
        with render.chart_dir(decl, env) as chart:
            if chart == ROOT / decl.chart:
                continue
            shutil.rmtree(tmp_path / "chart", ignore_errors=True)
            shutil.copytree(chart, tmp_path / "chart")
        subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
        subprocess.run([*GIT, "commit", "-qm", f"chart {env.chart_version}", "--allow-empty"], cwd=tmp_path, check=True)
    shutil.rmtree(tmp_path / "chart", ignore_errors=True)
    for part in ("chart", "environments"):
        shutil.copytree(ROOT / part, tmp_path / part)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "base"], cwd=tmp_path, check=True)
    return tmp_path


def publish_chart(repo: Path, version: str, change: str = "") -> None:
    """Commit chart/ at ``version`` (with ``change`` added to the ConfigMap's data): main moves on."""
    chart_yaml = repo / "chart/Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace(f"version: {chart_version(repo)}\n", f"version: {version}\n"))
    if change:
        configmap = repo / "chart/templates/configmap.yaml"
        configmap.write_text(configmap.read_text().replace('HOST: "0.0.0.0"', f'HOST: "0.0.0.0"\n  {change}'))
    subprocess.run([*GIT, "commit", "-qam", f"chart {version}"], cwd=repo, check=True)


def msops(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m msops ARGS` against ``root`` (a scratch repository), committing as t; the result, never raising."""
    person = {f"GIT_{role}_{what}": value for role in ("AUTHOR", "COMMITTER") for what, value in WHO.items()}
    env = {**os.environ, "MSOPS_ROOT": str(root), **person}
    return subprocess.run([sys.executable, "-m", "msops", *args], env=env, capture_output=True, text=True, check=False)


def git(repo: Path, *args: str) -> str:
    """A git command's output in ``repo``."""
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
