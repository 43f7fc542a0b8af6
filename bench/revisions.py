"""Which change made the request path cost what: one server per git revision, the same load, interleaved.

    scripts/bench --revisions REV[,REV...] [--shapes v1-1,v1-100,v2-1] [--rounds 3] [--duration 8]

Each revision is checked out into a worktree of its own and served by its own gunicorn.conf.py with its
own model_server (PYTHONPATH, which every revision's layout reads), 2 workers, default settings, the
linear model. Each serves the artifact this checkout trains; a revision that cannot read it (before
schema 2) trains its own with its own ``model_server.train``. wrk -t2 -c16, rounds interleaved (round,
revision, shape) so the machine's noise falls on every revision alike; server CPU per request is the
steadier figure on shared cores. The worktrees are removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from msops import local

from bench.harness import ROOT, Sample, Server, run_wrk

SHAPES = {"v1-1": ("v1", 1), "v1-100": ("v1", 100), "v2-1": ("v2", 1), "v2-100": ("v2", 100)}


def _server(rev: str, tree: Path, model: Path, scratch: Path) -> Server:
    env = {k: "" for k in os.environ if k.startswith("MODEL_SERVER_")}  # each revision's defaults
    env.update(local.model_server(0, scratch / f"metrics-{rev}", model, MODEL_SERVER_WORKERS="2").env)
    env["PYTHONPATH"] = str(tree / "image")
    return Server(rev, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], env, tree / "image", 0)


def _start(rev: str, tree: Path, artifact: Path, scratch: Path) -> Server:
    """The revision's server on the shared artifact, or on one it trains itself when it cannot read that."""
    for attempt in ("shared", "own"):
        model = artifact if attempt == "shared" else scratch / f"model-{rev}"
        if attempt == "own":
            subprocess.run(
                [sys.executable, "-m", "model_server.train", "--output", str(model)],
                cwd=tree / "image", env={**os.environ, "PYTHONPATH": str(tree / "image")},
                check=True, capture_output=True,
            )  # fmt: skip
        server = _server(rev, tree, model, scratch)
        server.port = local.free_port()
        server.env["PORT"] = str(server.port)
        try:
            server.start(scratch)
            return server
        except RuntimeError:
            server.stop()
            if attempt == "own":
                raise
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench --revisions", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("revisions", help="comma list of git revisions, oldest first (WORK: this checkout's tree)")
    parser.add_argument("--shapes", default="v1-1,v1-100,v2-1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    from model_server import train
    from model_server.core import artifact

    revisions = args.revisions.split(",")
    results: dict[tuple[str, str], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-revisions-") as scratch_name:
        scratch = Path(scratch_name)
        model, metadata = train.train()
        artifact.save(model, metadata, scratch / "model")
        trees: dict[str, Path] = {}
        servers: list[Server] = []
        try:
            for rev in revisions:
                if rev == "WORK":
                    trees[rev] = ROOT
                else:
                    trees[rev] = scratch / f"tree-{len(trees)}"
                    add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(trees[rev]), rev]
                    subprocess.run(add, check=True)
                print(f"bench: starting {rev}", file=sys.stderr)
                servers.append(_start(rev, trees[rev], scratch / "model", scratch))
            for server in servers:  # warm every worker
                for shape in shapes:
                    run_wrk(server, SHAPES[shape][0], SHAPES[shape][1], scratch, seconds=2)
            for round_number in range(1, args.rounds + 1):
                for server in servers:
                    for shape in shapes:
                        protocol, rows = SHAPES[shape]
                        sample = run_wrk(server, protocol, rows, scratch, seconds=args.duration)
                        results.setdefault((server.name, shape), []).append(sample)
                        print(f"bench: round {round_number} {server.name} {shape}: {sample.rps:.0f} req/s "
                              f"{sample.cpu_us:.0f} µs/req errors {sample.errors}", file=sys.stderr)  # fmt: skip
        finally:
            for server in servers:
                server.stop()
            for rev, tree in trees.items():
                if rev != "WORK":
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    base = revisions[0]
    lines = [
        f"wrk -t2 -c16 -d{args.duration}s, 2 workers, the linear model, {args.rounds} interleaved rounds: median",
        "",
        "| revision | " + " | ".join(f"{s} req/s | {s} µs/req" for s in shapes) + " |",
        "|---|" + "---|---|" * len(shapes),
    ]
    for rev in revisions:
        cells = []
        for shape in shapes:
            samples = results[(rev, shape)]
            rps, cpu = statistics.median(s.rps for s in samples), statistics.median(s.cpu_us for s in samples)
            first = statistics.median(s.cpu_us for s in results[(base, shape)])
            errors = sum(s.errors for s in samples)
            cells.append(
                f"{rps:.0f}{' (errors: ' + str(errors) + ')' if errors else ''} | {cpu:.0f} ({cpu / first:.2f}×)"
            )
        lines.append(f"| {rev} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0
