"""README's "bring your own model", followed as written: the model explains itself and its drift gauge is quiet
on training-like traffic and loud on a shifted column of each kind (number, string, one with gaps)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from model_server.transport.app import create_app

from tests.conftest import ROOT

from .conftest import make_settings

pytestmark = pytest.mark.slow


def _readme_blocks() -> tuple[str, list[str]]:
    """The example's Python file and the shell lines that train and package it."""
    text = (ROOT / "README.md").read_text()
    python = re.search(r"```python\n(# my_model\.py.*?)```", text, re.S)
    shell = re.search(r"```sh\n(\.venv/bin/python my_model\.py\n.*?)```", text, re.S)
    assert python, "README's bring-your-own-model Python block has moved"
    assert shell, "README's bring-your-own-model commands have moved"
    lines = shell.group(1).replace("\\\n", " ").splitlines()
    return python.group(1), [line for line in lines if line.startswith((".venv/bin/python", "scripts/package-model"))]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The README's commands, run in a scratch directory (paths to the checkout's venv and scripts)."""
    workdir = tmp_path_factory.mktemp("readme")
    code, commands = _readme_blocks()
    (workdir / "my_model.py").write_text(code)
    assert [c.split()[0] for c in commands] == [".venv/bin/python", "scripts/package-model"]
    for command in commands:
        command = command.replace(".venv/bin/python", sys.executable).replace("scripts/", f"{ROOT}/scripts/")
        done = subprocess.run(command, shell=True, cwd=workdir, capture_output=True, text=True, check=False)  # noqa: S602
        assert done.returncode == 0, done.stderr

    return workdir


def _client(packaged):
    return create_app(make_settings(packaged / "artifacts" / "male")).test_client()


def _send(client, rows: pd.DataFrame) -> dict[str, float]:
    for start in range(0, len(rows), 50):
        chunk = rows.iloc[start : start + 50].astype(object).where(rows.iloc[start : start + 50].notna(), None)
        answer = client.post("/v1/models/male:predict", json={"instances": chunk.to_dict("records")})
        assert answer.status_code == 200, answer.get_json()
    text = client.get("/metrics").get_data(as_text=True)
    return {m[0]: float(m[1]) for m in re.findall(r'model_server_feature_drift\{column="([^"]+)"\} (\S+)', text)}


def _training(packaged) -> pd.DataFrame:
    return pd.read_csv(packaged / "training.csv")


def test_the_readme_model_explains_a_row_with_a_gap(packaged):
    client = _client(packaged)
    row = {"island": "Dream", "bill_length_mm": 50.1, "flipper_length_mm": None, "year": 2008}
    answer = client.post("/v1/models/male:explain", json={"instances": [row]})
    assert answer.status_code == 200, answer.get_json()
    explanation = answer.get_json()["explanations"][0]
    assert explanation["explains"] == "decision_function: the log-odds of class True"
    total = explanation["baseline"] + sum(explanation["contributions"].values())
    assert total == pytest.approx(explanation["value"], abs=1e-6)


SHIFTS = {
    "number": ("bill_length_mm", lambda frame: frame.assign(bill_length_mm=frame["bill_length_mm"] + 15)),
    "string": ("island", lambda frame: frame.assign(island="Torgersen")),
    "with gaps": ("flipper_length_mm", lambda frame: frame.assign(flipper_length_mm=np.nan)),
}


@pytest.mark.parametrize("kind", list(SHIFTS))
def test_training_like_traffic_is_quiet_and_a_shifted_column_is_not(packaged, kind):
    training = _training(packaged)
    rng = np.random.default_rng(len(kind))
    calm = training.iloc[rng.integers(0, len(training), 1000)]
    client = _client(packaged)
    scores = _send(client, calm)
    assert set(scores) == set(training.columns)
    assert max(scores.values()) < 0.1, scores
    column, shift = SHIFTS[kind]
    moved = _send(_client(packaged), shift(calm))
    assert moved[column] > 0.25, moved
