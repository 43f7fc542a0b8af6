"""The canary verdict: a new model version's recent outcomes against the stable version's, on live traffic.

    python -m model_server.judge --canary URL --stable URL [--window 300] [--wait 0]
        [--min-requests 100] [--max-error-margin 0.01] [--latency-factor 2] [--latency-slack-ms 5]
        [--max-psi 0.2] [--samples 8] [--json] [--ca-file CA] [--token-file TOKEN] [--cert-file C --key-file K]

What the chart's Argo Rollouts analysis runs, as a Job (the ``job`` provider): the comparison needs both
versions' figures, and a Job can fetch both with the release's own credentials, where a ``web`` metric reads
one URL and would need a serving pod to call its sibling Service. Each URL is a Service; every fetch of
``GET /v2/models/<name>/judgement`` opens a new connection, so ``--samples`` fetches reach the Service's
pods at random and each distinct pod (by host name) is counted once.

The canary passes when, over the window, both versions answered at least --min-requests predictions and:
- its error ratio (5xx) is at most the stable's plus --max-error-margin;
- its p50 and its p99 latency are each at most --latency-factor times the stable's, plus --latency-slack-ms
  (sub-millisecond latencies differ by noise alone);
- its prediction distribution is within --max-psi of the stable's: PSI over the stable's quantile bins for
  regressors (as many bins as both samples keep quiet, drift.bins_for), over the classes for classifiers.
Exit 0: passed; 1: failed, with every figure and each failed check named; 2: no verdict (unreachable, too
little traffic within --wait, bad arguments). Argo counts any non-zero exit as a failed measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import smoke
from .core import drift, outcomes

LEVELS = np.linspace(0, 1, 101)  # the levels of a judgement's percentiles (core/outcomes.py)


class NoVerdict(Exception):
    """The versions could not be compared: a Service unreachable, or too little traffic."""


@dataclass
class Side:
    """One version's figures merged over the pods its Service reached."""

    name: str
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, summary: dict[str, Any]) -> None:
        self.pods.setdefault(summary.get("host", "?"), summary)

    @property
    def versions(self) -> list[str]:
        return sorted({str(p["version"]) for p in self.pods.values()})

    @property
    def requests(self) -> int:
        return sum(int(p["requests"]) for p in self.pods.values())

    @property
    def errors(self) -> int:
        return sum(int(p["errors"]) for p in self.pods.values())

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def rows(self) -> int:
        return sum(int(p["predictions"]["rows"]) for p in self.pods.values())

    def latency(self, level: float) -> float:
        parts = [(p["requests"], p["latency_percentiles"]) for p in self.pods.values() if p["requests"]]
        return float(mixture_quantile(parts, level)) if parts else float("nan")

    def value_parts(self) -> list[tuple[int, list[float]]]:
        return [
            (p["predictions"]["rows"], p["predictions"]["percentiles"])
            for p in self.pods.values()
            if p["predictions"]["rows"]
        ]

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for pod in self.pods.values():
            for label, n in pod["predictions"].get("counts", {}).items():
                counts[label] = counts.get(label, 0) + int(n)
        return counts


def mixture_cdf(parts: list[tuple[int, list[float]]], x: np.ndarray) -> np.ndarray:
    """The share of all pods' values at or below ``x``: each pod's CDF (its percentiles, interpolated),
    weighted by its count."""
    total = sum(weight for weight, _ in parts)
    cdf = np.zeros(len(x))
    for weight, percentiles in parts:
        cdf += weight * np.interp(x, percentiles, LEVELS, left=0.0, right=1.0)
    return cdf / total


def mixture_quantile(parts: list[tuple[int, list[float]]], level: float) -> float:
    grid = np.unique(np.concatenate([np.asarray(p, dtype=np.float64) for _, p in parts]))
    if len(grid) == 1:
        return float(grid[0])
    return float(np.interp(level, mixture_cdf(parts, grid), grid))


def distribution_psi(stable: Side, canary: Side) -> tuple[float, int]:
    """PSI of the canary's predictions against the stable's, and the number of bins it was taken over."""
    kinds = {p["predictions"]["kind"] for side in (stable, canary) for p in side.pods.values()}
    if kinds == {"classes"}:
        stable_counts, canary_counts = stable.class_counts(), canary.class_counts()
        labels = sorted(set(stable_counts) | set(canary_counts))
        q = np.array([stable_counts.get(label, 0) for label in labels], dtype=np.float64)
        p = np.array([canary_counts.get(label, 0) for label in labels], dtype=np.float64)
        return drift.psi(p, q / q.sum()), len(labels)
    if kinds != {"percentiles"}:
        raise NoVerdict(f"the versions' predictions are not comparable (kinds {sorted(kinds)})")
    stable_parts, canary_parts = stable.value_parts(), canary.value_parts()
    bins = drift.bins_for(stable.rows, canary.rows)
    edges = np.unique([mixture_quantile(stable_parts, level) for level in np.linspace(0, 1, bins + 1)[1:-1]])
    bounds = np.concatenate([[-np.inf], edges, [np.inf]])

    def shares(parts: list[tuple[int, list[float]]]) -> np.ndarray:
        cdf = mixture_cdf(parts, bounds[1:-1])
        return np.diff(np.concatenate([[0.0], cdf, [1.0]]))

    return drift.psi(shares(canary_parts), shares(stable_parts)), len(bounds) - 1


@dataclass(frozen=True)
class Thresholds:
    min_requests: int = 100
    max_error_margin: float = 0.01
    latency_factor: float = 2.0
    latency_slack_s: float = 0.005
    max_psi: float = 0.2


def verdict(stable: Side, canary: Side, limits: Thresholds) -> dict[str, Any]:
    """Every figure, each check with its limit, and whether the canary passed."""
    for side in (stable, canary):
        if side.requests < limits.min_requests:
            raise NoVerdict(
                f"too little traffic to judge: the {side.name} answered {side.requests} predictions in the window "
                f"(at least {limits.min_requests} needed, --min-requests)"
            )
    psi, bins = distribution_psi(stable, canary)
    checks: dict[str, dict[str, Any]] = {
        "error_ratio": {
            "canary": canary.error_ratio,
            "limit": stable.error_ratio + limits.max_error_margin,
            "passed": canary.error_ratio <= stable.error_ratio + limits.max_error_margin,
        },
    }
    # The median and the tail: a canary slower on every request shows in p50 even when the stable's own p99 is
    # inflated by the canary taking the node's CPU (seen on the real node); p99 catches a slow slice.
    for name, level in (("p50_latency_seconds", 0.5), ("p99_latency_seconds", 0.99)):
        limit = limits.latency_factor * stable.latency(level) + limits.latency_slack_s
        checks[name] = {"canary": canary.latency(level), "limit": limit, "passed": canary.latency(level) <= limit}
    checks.update(
        {
            "prediction_psi": {
                "canary": psi,
                "limit": limits.max_psi,
                "bins": bins,
                "noise_floor": drift.noise_floor(bins, stable.rows, canary.rows),
                "passed": psi <= limits.max_psi,
            },
        }
    )
    return {
        "passed": all(check["passed"] for check in checks.values()),
        "checks": checks,
        **{
            side.name: {
                "versions": side.versions,
                "pods": sorted(side.pods),
                "requests": side.requests,
                "errors": side.errors,
                "error_ratio": side.error_ratio,
                "p50_latency_seconds": side.latency(0.5),
                "p99_latency_seconds": side.latency(0.99),
                "predicted_rows": side.rows,
            }
            for side in (stable, canary)
        },
    }


def gather(name: str, url: str, model: str | None, window: float, samples: int) -> Side:
    """The side's figures from up to ``samples`` fetches (new connections: the Service picks a pod each time)."""
    side = Side(name)
    base = url.rstrip("/")
    if model is None:
        served = smoke.call(f"{base}/v1/models").get("models") or []
        if len(served) != 1:
            raise NoVerdict(f"the {name} ({base}) serves {served}: name the model with --model")
        model = served[0]
    for _ in range(samples):
        side.add(smoke.call(f"{base}/v2/models/{model}/judgement?window={window:g}"))
    return side


def report(result: dict[str, Any]) -> str:
    lines = []
    for name in ("stable", "canary"):
        s = result[name]
        lines.append(
            f"{name}: version {','.join(s['versions'])} on {len(s['pods'])} pod(s): {s['requests']} requests, "
            f"{s['errors']} errors ({s['error_ratio']:.2%}), p50 {s['p50_latency_seconds'] * 1000:.1f} ms, "
            f"p99 {s['p99_latency_seconds'] * 1000:.1f} ms, {s['predicted_rows']} predicted rows"
        )
    for check, figures in result["checks"].items():
        extra = f" over {figures['bins']} bins, noise floor {figures['noise_floor']:.3f}" if "bins" in figures else ""
        lines.append(
            f"{'pass' if figures['passed'] else 'FAIL'}: {check} {figures['canary']:.4g} "
            f"(limit {figures['limit']:.4g}){extra}"
        )
    lines.append("verdict: " + ("the canary passed" if result["passed"] else "the canary FAILED"))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="judge", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--canary", required=True, help="base URL of the canary (new version) Service")
    parser.add_argument("--stable", required=True, help="base URL of the stable Service")
    parser.add_argument("--model", help="the model's name (default: the one the servers list)")
    parser.add_argument(
        "--window",
        type=_positive,
        default=outcomes.DEFAULT_WINDOW_S,
        help=f"seconds of recent traffic (default {outcomes.DEFAULT_WINDOW_S:g})",
    )
    parser.add_argument("--wait", type=_non_negative, default=0.0, help="seconds to wait for enough traffic")
    parser.add_argument("--samples", type=_count, default=8, help="fetches per Service, to reach its pods")
    parser.add_argument("--min-requests", type=_count, default=Thresholds.min_requests)
    parser.add_argument("--max-error-margin", type=_non_negative, default=Thresholds.max_error_margin)
    parser.add_argument("--latency-factor", type=_positive, default=Thresholds.latency_factor)
    parser.add_argument("--latency-slack-ms", type=_non_negative, default=Thresholds.latency_slack_s * 1000)
    parser.add_argument("--max-psi", type=_positive, default=Thresholds.max_psi)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    smoke.add_credential_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    smoke.CREDENTIALS = smoke.credentials_from(args)
    limits = Thresholds(
        args.min_requests, args.max_error_margin, args.latency_factor, args.latency_slack_ms / 1000, args.max_psi
    )
    deadline = time.monotonic() + args.wait
    while True:
        try:
            stable = gather("stable", args.stable, args.model, args.window, args.samples)
            canary = gather("canary", args.canary, args.model, args.window, args.samples)
            result = verdict(stable, canary, limits)
            break
        except (NoVerdict, smoke.SmokeFailure) as exc:
            if time.monotonic() >= deadline:
                print(f"judge: no verdict: {exc}", file=sys.stderr)
                return 2
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result["passed"] else 1


def _number(minimum: float, inclusive: bool, kind: type = float) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < minimum or (value == minimum and not inclusive) or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} must be {'at least' if inclusive else 'above'} {minimum}")
        return value

    return parse


_positive = _number(0, inclusive=False)
_non_negative = _number(0, inclusive=True)
_count = _number(1, inclusive=True, kind=int)


if __name__ == "__main__":
    sys.exit(main())
