"""scripts/bench end to end, in one short round: the table, the explanation and drift costs, cold starts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from bench.harness import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
]


def test_one_short_round_reports_every_figure():
    shapes = "v1-1,v1-100,v2-1,explain-1"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--rounds", "1", "--duration", "1", "--servers", "ours,ours-no-drift,naive",
         "--shapes", shapes],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    out = run.stdout
    for shape in shapes.split(","):
        for server in ("ours", "ours-no-drift"):
            assert re.search(rf"^\| {shape} \| {server} \| \d+ \|", out, re.MULTILINE), (shape, server, out)
    assert re.search(r"^\| v1-1 \| naive \| \d+ \| 1\.00× \|", out, re.MULTILINE), out
    assert re.search(r"linear: one row's prediction with contributions and baseline costs \d+ µs", out), out
    drift = re.search(r"drift accounting, measured in-process, costs ([\d.]+) µs per 1-row request .* and "
                      r"([\d.]+) µs per 100-row request", out)  # fmt: skip
    assert drift, out
    assert 0 < float(drift.group(1)) < 1000, out
    assert 0 < float(drift.group(2)) < 1000, out
    assert re.search(r"^\| linear \| ours \| [\d.]+ \| \d+ / \d+ / \d+ \|", out, re.MULTILINE), out
