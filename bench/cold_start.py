"""Cold start: process start to the first answered prediction, ours against naive, interleaved.

    scripts/bench --cold-start [--models linear,pipeline,forest,hgb] [--runs 5]

Each run starts every server once per model, in an order that rotates from run to run, and stops it
after its first prediction. `ours` serves an artifact packaged as scripts/package-model packages it
(the load-time proofs recorded in it, core/proof.py); `ours-proving` the same model saved without
them, so the server proves its compiled plan and its explanations at load, as it does for an artifact
packaged by another build; `naive` is the tutorial server (bench/naive.py) on the same artifact.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.__main__ import MODELS, Model, _ours
from bench.harness import ROOT, Server, choose


def _servers(model: Model, unproved: Path, scratch: Path, workers: int) -> list[Server]:
    args = argparse.Namespace(workers=workers)
    proving = Model(model.kind, model.name, unproved, model.joblib_file)
    naive = Server(
        "naive",
        [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync", "bench.naive:app"],
        {"MODEL_SERVER_MODEL_DIR": str(model.directory)},
        ROOT,
        0,
        model=model.name,
        kind=model.kind,
    )
    candidates = {
        "ours": _ours("ours", args, model, scratch, {}),
        "ours-proving": _ours("ours-proving", args, proving, scratch, {}),
        "naive": naive,
    }
    return choose(candidates, list(candidates))  # each on a free port, one OpenMP thread per worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --cold-start", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    kinds = [k for k in args.models.split(",") if k]
    unknown = [k for k in kinds if k not in MODELS]
    if unknown or args.runs < 1:
        parser.error(f"unknown model(s) {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    from model_server import train
    from model_server.core import artifact

    rows = []
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        scratch = Path(tmp)
        for kind in kinds:
            name, options = MODELS[kind]
            fitted, metadata = train.train(name=name, **options)
            artifact.save(fitted, metadata, scratch / f"{kind}-proved", prove=True)
            artifact.save(fitted, metadata, scratch / f"{kind}-unproved")
            model = Model(kind, name, scratch / f"{kind}-proved", scratch / f"{kind}.joblib")
            times: dict[str, list[float]] = {}
            for run in range(args.runs):
                servers = _servers(model, scratch / f"{kind}-unproved", scratch, args.workers)
                turn = run % len(servers)
                for server in servers[turn:] + servers[:turn]:
                    try:
                        server.start(scratch)
                    finally:
                        server.stop()
                    times.setdefault(server.name, []).append(server.cold_start)
            naive = statistics.median(times["naive"])
            for server_name, seconds in times.items():
                median = statistics.median(seconds)
                rows.append(
                    f"| {kind} | {server_name} | {median:.2f} ({min(seconds):.2f}–{max(seconds):.2f}) | "
                    f"{median / naive:.2f}× |"
                )
    print(f"cold start, process start to first prediction, {args.runs} interleaved starts each, {args.workers} workers")
    print("\n| model | server | cold start s, median (min–max) | × naive |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
