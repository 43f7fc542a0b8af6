"""How much drift PSI sampling noise alone reads, by reference size: ``scripts/bench --drift-floor``.

Each trial draws a reference of R rows and a window of W rows from one distribution (training-like traffic:
no drift at all), bins the reference as the packager does (``drift.reference_of``) and scores the window as
``/metrics`` does (``drift.psi``). It also scores windows with one real shift, so that quieter bins are seen
to keep the signal. Compared in the same run: the fixed ten bins every reference had before (deciles from
however few rows), and the bins sized to the reference (``drift.bins_for``). Column kinds: a continuous
number, the same with 10 % missing, an integer with few values, a string with five categories.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
from model_server.core import drift
from model_server.core.signature import BYTES, FP64, Column

Draw = Callable[[np.random.Generator, int, float], np.ndarray]  # rng, rows, shift -> values


def _number(rng: np.random.Generator, rows: int, shift: float) -> np.ndarray:
    return (rng.normal(50 + 10 * shift, 10, rows)).astype(object)


def _number_with_gaps(rng: np.random.Generator, rows: int, shift: float) -> np.ndarray:
    values = _number(rng, rows, shift)
    values[rng.random(rows) < 0.1] = np.nan
    return values


def _small_integer(rng: np.random.Generator, rows: int, shift: float) -> np.ndarray:
    return rng.poisson(3 + 3 * shift, rows).astype(float).astype(object)


_PLANS = np.array(["basic", "plus", "pro", "family", "student"], dtype=object)


def _category(rng: np.random.Generator, rows: int, shift: float) -> np.ndarray:
    weights = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    if shift:  # a shifted mix: the two most common plans trade places, by the shift's share
        weights = weights + shift * np.array([-0.3, 0.3, 0, 0, 0])
    return rng.choice(_PLANS, rows, p=weights / weights.sum())


KINDS: dict[str, tuple[Draw, str]] = {
    "number": (_number, FP64),
    "number, 10 % missing": (_number_with_gaps, FP64),
    "integer 0-10": (_small_integer, FP64),
    "string, 5 values": (_category, BYTES),
}


def score(
    draw: Draw, datatype: str, rows: int, window: int, shift: float, bins: int | None, rng: np.random.Generator
) -> float:
    """PSI of one ``window``-row draw (moved by ``shift``) against a reference of ``rows`` rows."""
    column = Column("x", datatype, True, (), None)
    reference = drift.reference_of(column, draw(rng, rows, 0.0), bins=bins)
    watched = drift._watched(Column("x", datatype, True, (), None, distribution=reference))
    assert watched is not None
    counts = np.bincount(watched.bins(draw(rng, window, shift)), minlength=len(watched.reference))
    return drift.psi(counts, watched.reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench --drift-floor", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="50,500,5000", help="reference sizes, comma list")
    parser.add_argument("--window", type=int, default=drift.EXPECTED_WINDOW, help="rows in the scored window")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--shift", type=float, default=0.5, help="the shifted window: standard deviations (numbers)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(r) for r in args.rows.split(",")]
    except ValueError:
        parser.error(f"--rows must be a comma list of integers, not {args.rows!r}")
    if not all(10 <= r <= 1_000_000 for r in sizes) or not 100 <= args.window <= 1_000_000:
        parser.error("--rows must be 10..1000000 each and --window 100..1000000")
    if not 10 <= args.trials <= 10_000:
        parser.error("--trials must be 10..10000")
    rng = np.random.default_rng(0)
    print(
        f"PSI of a {args.window}-row window against a reference of R rows, {args.trials} trials each: "
        f"mean, 95th percentile, share of columns above the 0.25 alert; shifted: mean PSI of a window "
        f"moved by {args.shift} (standard deviations for numbers, share for the string)\n"
    )
    print("| column | R | bins | expected floor | no drift: mean | p95 | > 0.25 | shifted: mean |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, (draw, datatype) in KINDS.items():
        for rows in sizes:
            for label, bins in (("10 (fixed)", drift.MAX_BINS), (f"{drift.bins_for(rows)} (sized)", None)):
                calm = np.array([score(draw, datatype, rows, args.window, 0.0, bins, rng) for _ in range(args.trials)])
                shifted = [
                    score(draw, datatype, rows, args.window, args.shift, bins, rng) for _ in range(args.trials // 4)
                ]
                moved = np.array(shifted)
                expected = drift.noise_floor(bins or drift.bins_for(rows), rows, args.window)
                print(
                    f"| {kind} | {rows} | {label} | {expected:.3f} | {calm.mean():.3f} | "
                    f"{np.percentile(calm, 95):.3f} | {np.mean(calm > 0.25):.1%} | {moved.mean():.3f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
