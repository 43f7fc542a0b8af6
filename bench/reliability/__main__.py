"""scripts/reliability: run the scenarios (all, or --only NAME) and print or --write the Markdown report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.harness import stop_servers_on_sigterm
from bench.reliability import artifacts, connections, inputs, load, signals
from bench.reliability.lab import Lab, Result


@dataclass(frozen=True)
class Scenario:
    full: Callable[[Lab], Result]  # what scripts/reliability runs and docs/reliability.md reports
    quick: Callable[[Lab], Result]  # --quick, and the slow tests' length

    @classmethod
    def fixed(cls, run: Callable[[Lab], Result]) -> Scenario:
        """A scenario whose length is its nature (a set of trials, a corpus): quick is the full run."""
        return cls(run, run)


# The one registry: every scenario's name, its full run and its quick one.
SCENARIOS: dict[str, Scenario] = {
    "sustained": Scenario(load.sustained, lambda lab: load.sustained(lab, seconds=15)),
    "overload": Scenario(load.overload, lambda lab: load.overload(lab, seconds=8)),
    "sigterm": Scenario.fixed(signals.sigterm_under_load),
    "sigkill": Scenario.fixed(signals.sigkill_worker_under_load),
    "slow-clients": Scenario.fixed(connections.slow_clients),
    "stuck-headers": Scenario(
        connections.stuck_headers, lambda lab: connections.stuck_headers(lab, connections=300, hold=20)
    ),
    "overload-16x": Scenario(load.overload_16x, lambda lab: load.overload_16x(lab, seconds=8)),
    "connection-cap": Scenario(connections.connection_cap, lambda lab: connections.connection_cap(lab, seconds=6)),
    "slow-bodies": Scenario(connections.slow_bodies, lambda lab: connections.slow_bodies(lab, seconds=10)),
    "worker-exits": Scenario(signals.worker_exits, lambda lab: signals.worker_exits(lab, trials=3)),
    "sigterm-keepalive": Scenario(
        signals.sigterm_keepalive_trials, lambda lab: signals.sigterm_keepalive_trials(lab, trials=3)
    ),
    **{
        f"artifact-{fault.replace(' ', '-')}": Scenario.fixed(partial(artifacts.artifact_fault, fault=fault))
        for fault in artifacts.FAULTS
    },
    "hostile-corpus": Scenario.fixed(inputs.hostile_corpus),
    "schemathesis": Scenario(inputs.schemathesis_run, lambda lab: inputs.schemathesis_run(lab, examples=100)),
}


def main(argv: list[str] | None = None) -> int:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(prog="reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="scenario name (repeatable); default: all")
    parser.add_argument("--write", type=Path, help="write the Markdown report here (e.g. docs/reliability.md)")
    parser.add_argument("--quick", action="store_true", help="the shorter runs the slow tests use")
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = []
    for name in names:
        lab = Lab()
        try:
            print(f"reliability: {name} ...", file=sys.stderr)
            scenario = SCENARIOS[name]
            results.append((scenario.quick if args.quick else scenario.full)(lab))
        finally:
            lab.close()
        print(f"reliability: {name}: {'PASS' if results[-1].passed else 'FAIL'}", file=sys.stderr)
    command = (
        "scripts/reliability" + (" --quick" if args.quick else "") + "".join(f" --only {n}" for n in args.only or [])
    )
    report = render(results, command)
    print(report)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        temp = args.write.with_name(f".{args.write.name}.tmp")
        temp.write_text(report)
        temp.replace(args.write)
    return 0 if all(r.passed for r in results) else 1


def render(results: list[Result], command: str) -> str:
    lines = [
        "| scenario | verdict | figures |",
        "|---|---|---|",
    ]
    for result in results:
        figures = "; ".join(f"{key}: {value}" for key, value in result.figures.items())
        lines.append(f"| {result.name} | {'pass' if result.passed else '**FAIL**'} | {figures} |")
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(
        [f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} (2 cores, 127.0.0.1 only).", "", *lines, "", *notes]
    )


if __name__ == "__main__":
    sys.exit(main())
