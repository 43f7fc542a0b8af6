"""Repository-wide checks CI also runs: linters, workflow references, secrets, entry points."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kube import ROOT, tool

VENV_BIN = Path(sys.executable).parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ENTRY_POINTS = [
    "serve",
    "test",
    "bench",
    "build-image",
    "image-report",
    "reliability",
    "render",
    "validate",
    "promote",
    "set-image",
    "diff",
    "train",
    "docs",
    "lock",
    "tools.sh",
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_lint_and_format():
    for args in (("check", "."), ("format", "--check", ".")):
        result = run(str(VENV_BIN / "ruff"), *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes_on_the_dockerfile():
    result = run(str(VENV_BIN / "hadolint"), "image/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_strict():
    result = run(str(VENV_BIN / "yamllint"), "--strict", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_passes_on_every_workflow():
    assert {w.name for w in WORKFLOWS} >= {"ci.yml", "image.yml", "promote.yml", "chart.yml"}
    result = run(tool("actionlint"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_script_a_workflow_calls_exists_and_is_executable():
    called = set()
    for workflow in WORKFLOWS:
        called |= set(re.findall(r"(?<![\w./-])(scripts/[\w.-]+)(?![\w/])", workflow.read_text()))
    assert called, "workflows call no project scripts?"
    for script in sorted(called):
        path = ROOT / script
        assert path.is_file(), f"{script} is called by a workflow but does not exist"
        assert path.stat().st_mode & 0o111, f"{script} is not executable"


def test_workflows_set_minimal_permissions_and_concurrency():
    for workflow in WORKFLOWS:
        data = yaml.safe_load(workflow.read_text())
        assert data.get("permissions") == {"contents": "read"}, (
            f"{workflow.name}: top-level permissions must be read-only"
        )
        assert "concurrency" in data, f"{workflow.name}: no concurrency group"
        for name, job in data["jobs"].items():
            assert "timeout-minutes" in job, f"{workflow.name}:{name} has no timeout"


def header_comment(script: Path) -> str:
    """The comment block under a script's shebang, without its '# ' prefixes: what its --help prints."""
    comment = itertools.takewhile(lambda line: line.startswith("#"), script.read_text().splitlines()[1:])
    return "".join(re.sub(r"^# ?", "", line) + "\n" for line in comment)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_are_executable_and_answer_help(name):
    path = ROOT / "scripts" / name
    assert path.stat().st_mode & 0o111
    result = run(str(path), "--help")
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("usage: "):
        # argparse (msops and train): the usage names the command, the options follow.
        assert re.match(rf"usage: (msops )?{re.escape(name)} ", result.stdout), result.stdout
        assert "-h, --help" in result.stdout
    else:
        # A shell script's help is its opening comment: all of it, and no line of code after it.
        assert result.stdout == header_comment(path)


def test_no_secrets_in_the_repository():
    files = run("git", "ls-files").stdout.split()
    result = run(
        str(VENV_BIN / "detect-secrets"),
        "scan",
        *[f for f in files if not f.endswith((".txt", ".json")) or "requirements" not in f],
    )
    findings = yaml.safe_load(result.stdout)["results"]
    assert findings == {}, findings


def test_ci_run_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/test" in readme.split("\n## ")[0], "README must lead with scripts/test"
    assert re.search(r"^scripts/test\s*$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


def test_readme_configuration_table_matches_the_settings():
    from model_server.config import FIELDS, markdown_table

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- config:start -->\n", 1)[1].split("<!-- config:end -->", 1)[0]
    assert section.strip() == markdown_table(), "README.md configuration table is stale: run scripts/docs"
    assert all(f"`{field.env}`" in section for field in FIELDS.values())


def test_dockerignore_and_gitignore_keep_local_state_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    for entry in (".venv/", ".tools/", "artifacts/", ".venv-bench/"):
        assert entry in ignored
    assert "**/__pycache__" in (ROOT / "image" / ".dockerignore").read_text()
