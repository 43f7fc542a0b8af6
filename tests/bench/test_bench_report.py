"""scripts/bench end to end, in one short round: the table, the explanation and drift costs, cold starts; and
README's two benchmark commands as written (peers installed, then every server of both benchmarks answering),
so a server that cannot start in its own environment fails here rather than in someone's first run."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.harness import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("wrk", install="apt-get install wrk; scripts/test does it as root"),
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


SERVERS = ("ours", "ours-no-drift", "ours-no-keepalive", "naive", "kserve", "mlserver")
BATCHING_SERVERS = (
    "ours-batching", "ours-no-batching", "ours-sklearn-batching", "ours-sklearn-no-batching", "ours-ceiling",
    "mlserver-batching",
)  # fmt: skip


def test_every_server_of_both_benchmarks_answers_after_install_peers():
    bench = str(ROOT / "scripts" / "bench")
    shapes = "v1-1,pipeline-v2-1"
    run = subprocess.run(
        [bench, "--install-peers", "--rounds", "1", "--duration", "1", "--shapes", shapes],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "skipping" not in run.stderr, run.stderr[-3000:]
    for shape in shapes.split(","):
        for server in SERVERS:
            if shape == "v1-1" and server == "mlserver":  # MLServer has no V1 endpoint: its row says so
                assert f"| {shape} | mlserver | n/a (protocol not served)" in run.stdout, run.stdout
                continue
            row = re.search(rf"^\| {shape} \| {server} \| (\d+) \|.*\| (\d+) \| \d+ \|$", run.stdout, re.MULTILINE)
            assert row, (shape, server, run.stdout)
            assert int(row.group(1)) > 0, (shape, server, row.group(0))  # it answered...
            assert row.group(2) == "0", (shape, server, row.group(0))  # ...without an error
    batching = subprocess.run(
        [bench, "--batching", "--rounds", "1", "--duration", "1", "--concurrency", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert batching.returncode == 0, batching.stderr[-3000:]
    for server in BATCHING_SERVERS:
        assert re.search(rf"round 1 c=2 +{server} +\d+ req/s .* errors 0$", batching.stderr, re.MULTILINE), (
            server, batching.stderr[-3000:],
        )  # fmt: skip
