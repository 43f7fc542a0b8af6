"""The e2e suite's git server: clones over smart HTTP on 127.0.0.1, refuses pushes."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "commit.gpgsign=false"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=work, check=True)
    (work / "values.yaml").write_text("replicaCount: 1\n")
    subprocess.run([*GIT, "add", "-A"], cwd=work, check=True)
    subprocess.run([*GIT, "commit", "-qm", "one"], cwd=work, check=True)
    repos = tmp_path / "repos"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repos / "app.git")], check=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "msops.gitserver", "--root", str(repos)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    try:
        line = server.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.removeprefix("listening on "), work
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_clone_fetch_and_refused_push(served, tmp_path: Path):
    url, work = served
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", f"{url}/app.git", str(clone)], check=True, timeout=60)
    assert (clone / "values.yaml").read_text() == "replicaCount: 1\n"
    # A commit pushed to the bare repository on disk is what the next fetch over HTTP sees.
    (work / "values.yaml").write_text("replicaCount: 2\n")
    subprocess.run([*GIT, "commit", "-qam", "two"], cwd=work, check=True)
    subprocess.run(["git", "push", "-q", str(tmp_path / "repos" / "app.git"), "main"], cwd=work, check=True)
    subprocess.run(["git", "pull", "-q"], cwd=clone, check=True, timeout=60)
    assert (clone / "values.yaml").read_text() == "replicaCount: 2\n"
    (clone / "values.yaml").write_text("replicaCount: 3\n")
    subprocess.run([*GIT, "commit", "-qam", "three"], cwd=clone, check=True)
    push = subprocess.run(
        ["git", "push", "-q", "origin", "main"], cwd=clone, capture_output=True, text=True, timeout=60
    )
    assert push.returncode != 0
    assert "403" in push.stderr


def test_unknown_repository_is_404(served):
    url, _ = served
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{url}/nope.git/info/refs?service=git-upload-pack", timeout=10)
    assert caught.value.code == 404
