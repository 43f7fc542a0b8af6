"""What the compiled plans save, in-process: ``scripts/bench --compiled``.

For each model, one runner on the compiled plan (core/compiled.py) and one on scikit-learn's own path
(``compiled_paths=False``, what ``MODEL_SERVER_COMPILED=false`` serves), both with the server's scikit-learn
settings, timed on the same batches in interleaved rounds (best round each). This is the model call alone:
no HTTP, parsing or encoding, which `scripts/bench` measures end to end.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from model_server import package
from model_server.core.model import configure_scikit_learn
from model_server.core.runner import ModelRunner


def _models() -> dict[str, Callable[[], tuple[Any, pd.DataFrame]]]:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestRegressor

    frame, target = load_diabetes(return_X_y=True, as_frame=True)
    return {
        "gb-regressor": lambda: (GradientBoostingRegressor(n_estimators=100, random_state=0).fit(frame, target), frame),
        "gb-classifier": lambda: (
            GradientBoostingClassifier(n_estimators=100, random_state=0).fit(frame, target > 140),
            frame,
        ),
        "forest": lambda: (RandomForestRegressor(n_estimators=100, random_state=0).fit(frame, target), frame),
    }


def measure(model: Any, frame: pd.DataFrame, rows: int, rounds: int, calls: int) -> dict[str, Any]:
    signature, _ = package.signature_of(model, frame.head(50))
    runners = {
        "compiled": ModelRunner(model, signature),
        "scikit-learn": ModelRunner(model, signature, compiled_paths=False),
    }
    output = "predict_proba" if hasattr(model, "classes_") else "predict"
    batch = package.batch_of(frame.head(rows), signature)
    answers = {name: runner.run(batch, (output,))[output] for name, runner in runners.items()}
    if not np.allclose(answers["compiled"], answers["scikit-learn"], rtol=1e-12, atol=0):
        raise SystemExit(f"compiled and scikit-learn answers differ for {type(model).__name__}")
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, runner in runners.items():
            started = time.perf_counter()
            for _ in range(calls):
                runner.run(batch, (output,))
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - started) / calls * 1e6)
    return {"output": output, "path": runners["compiled"].description.path, **best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench --compiled", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(_models()), help="comma list of " + ", ".join(_models()))
    parser.add_argument("--rows", default="1,100", help="batch sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    args = parser.parse_args(argv)
    available = _models()
    unknown = sorted(set(args.models.split(",")) - set(available))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    configure_scikit_learn()
    print(f"{'model':14s} {'rows':>4s}  {'compiled µs':>12s}  {'scikit-learn µs':>15s}  {'speed-up':>8s}  path")
    for name in args.models.split(","):
        model, frame = available[name]()
        for rows in (int(r) for r in args.rows.split(",")):
            got = measure(model, frame, rows, args.rounds, args.calls)
            speedup = got["scikit-learn"] / got["compiled"]
            times = f"{got['compiled']:12.1f}  {got['scikit-learn']:15.1f}  {speedup:7.1f}x"
            print(f"{name:14s} {rows:4d}  {times}  {got['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
