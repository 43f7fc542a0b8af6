"""Adaptive batching, measured: a 200-tree random forest behind its preprocessing, 1-row V2 requests.

    scripts/bench --batching [--concurrency 1,2,4,8,16,32,64] [--rounds 3] [--duration 10] [--plot FILE.svg]

Servers, each with 2 workers: ours with batching as shipped (MODEL_SERVER_MAX_BATCH_SIZE=auto, which
the load-time measurement turns on for this model), ours with batching off (=1), and MLServer with
its adaptive batching on (max_batch_size 32, max_batch_time 5 ms). Every concurrency level is run
for every server in each round (interleaved); medians are printed, and the throughput and p99 against
concurrency are drawn to an SVG.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from msops import local

from bench.harness import ROOT, Sample, Server, choose, peer, run_wrk

TREES = 200
MLSERVER_BATCH = ("32", "0.005")


def _ours(
    name: str, directory: Path, scratch: Path, workers: int, batch_size: str | None, compiled: bool = True
) -> Server:
    settings = {"MODEL_SERVER_WORKERS": str(workers)}
    if batch_size is not None:
        settings["MODEL_SERVER_MAX_BATCH_SIZE"] = batch_size
    if not compiled:
        settings["MODEL_SERVER_COMPILED"] = "false"
    launch = local.model_server(0, scratch / f"metrics-{name}", directory, **settings)
    return Server(name, launch.command, launch.env, launch.cwd, 0, model="penguins-forest", kind="forest")


def servers(names: list[str], directory: Path, joblib_file: Path, scratch: Path, workers: int) -> list[Server]:
    candidates = {
        "ours-batching": _ours("ours-batching", directory, scratch, workers, None),
        "ours-no-batching": _ours("ours-no-batching", directory, scratch, workers, "1"),
        # scikit-learn's own forest (one joblib task and one input check per tree), with and without
        # batching: what batching is worth where a call's fixed cost is large.
        "ours-sklearn-batching": _ours("ours-sklearn-batching", directory, scratch, workers, "64", compiled=False),
        "ours-sklearn-no-batching": _ours("ours-sklearn-no-batching", directory, scratch, workers, "1", compiled=False),
        # The same request to the same preprocessing before a LogisticRegression, merged like the forest's:
        # what the server itself (HTTP, decoding, encoding, one cheap call per batch) can answer for this
        # request. No batching of the forest can go past it.
        "ours-ceiling": _ours("ours-ceiling", directory.with_name("cheap"), scratch, workers, "64"),
    }
    mlserver = peer("mlserver")
    if mlserver:
        candidates["mlserver-batching"] = Server(
            "mlserver-batching",
            [*mlserver, "--workers", str(workers), "--workdir", str(scratch / "mlserver"), "--model-file",
             str(joblib_file), "--name", "penguins-forest", "--max-batch-size", MLSERVER_BATCH[0],
             "--max-batch-time", MLSERVER_BATCH[1]],
            {}, ROOT, 0, protocols=("v2",), model="penguins-forest", kind="forest",
        )  # fmt: skip
    return choose(candidates, names)


def plot(results: dict[tuple[str, int], list[Sample]], levels: list[int], names: list[str]) -> str:
    """Two panels, throughput (linear axis) and p99 (log axis: the unbatched scikit-learn forest's tail is
    a hundred times the others') against concurrency, one line per server: plain SVG."""
    width, height, pad = 460, 300, 50
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#7f7f7f"]
    panels = []
    for offset, (title, metric, log) in enumerate((("requests/s", "rps", False), ("p99 ms (log)", "p99_ms", True))):
        values = {
            name: [statistics.median(getattr(s, metric) for s in results[(name, c)]) for c in levels]
            for name in names
            if all((name, c) in results for c in levels)
        }
        every = [v for series in values.values() for v in series if v > 0] or [1.0]
        low, top = (min(every) / 1.5, max(every) * 1.5) if log else (0.0, max(every) * 1.1)
        x0 = offset * (width + 20)

        def point(
            index: int, value: float, x0: int = x0, low: float = low, top: float = top, log: bool = log
        ) -> tuple[float, float]:
            x = x0 + pad + index * (width - 2 * pad) / max(len(levels) - 1, 1)
            share = math.log(max(value, low) / low) / math.log(top / low) if log else (value - low) / (top - low)
            return x, height - pad - share * (height - 2 * pad)

        parts = [
            f'<text x="{x0 + width / 2}" y="20" text-anchor="middle" font-size="14">{title} vs concurrency</text>',
            f'<line x1="{x0 + pad}" y1="{height - pad}" x2="{x0 + width - pad}" y2="{height - pad}" stroke="black"/>',
            f'<line x1="{x0 + pad}" y1="{pad}" x2="{x0 + pad}" y2="{height - pad}" stroke="black"/>',
        ]
        ticks = [10.0**k for k in range(math.ceil(math.log10(low)), math.floor(math.log10(top)) + 1)] if log else [top]
        for tick in ticks:
            _, y = point(0, tick)
            parts.append(f'<text x="{x0 + pad - 5}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{tick:.0f}</text>')
        for index, level in enumerate(levels):
            x, _ = point(index, low)
            parts.append(f'<text x="{x}" y="{height - pad + 15}" text-anchor="middle" font-size="11">{level}</text>')
        for number, (name, series) in enumerate(values.items()):
            colour = colours[number % len(colours)]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, v) for i, v in enumerate(series)))
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
            parts.append(
                f'<text x="{x0 + pad + 8}" y="{pad + 14 * (number + 1)}" font-size="11" fill="{colour}">{name}</text>'
            )
        panels.extend(parts)
    body = "\n".join(panels)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width + 20}" height="{height}" '
        f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n'
    )


def _socket_errors(samples: list[Sample]) -> str:
    """wrk's socket errors over the rounds, by kind (a timeout: no answer within wrk's 2 s)."""
    kinds: dict[str, int] = {}
    for sample in samples:
        for kind, count in sample.socket_errors.items():
            kinds[kind] = kinds.get(kind, 0) + count
    found = {kind: count for kind, count in kinds.items() if count}
    return ", ".join(f"{count} {kind}" for kind, count in found.items()) or "0"


def report(
    results: dict[tuple[str, int], list[Sample]], levels: list[int], names: list[str], args: argparse.Namespace
) -> str:
    lines = [
        f"wrk -t2 -d{args.duration}s, 1-row V2 requests, {TREES}-tree forest pipeline, 2 workers each, "
        f"{args.rounds} interleaved rounds: median",
        "",
        "| concurrency | server | req/s | p50 ms | p99 ms | non-2xx (503 sheds) | socket errors | server CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        for name in names:
            samples = results.get((name, level))
            if not samples:
                continue
            p50, p99_ms = (statistics.median(getattr(s, key) for s in samples) for key in ("p50_ms", "p99_ms"))
            lines.append(
                f"| {level} | {name} | {statistics.median(s.rps for s in samples):.0f} | {p50:.2f} | {p99_ms:.2f} | "
                f"{sum(s.errors - sum(s.socket_errors.values()) for s in samples)} | "
                f"{_socket_errors(samples)} | {statistics.median(s.cpu_us for s in samples):.0f} |"
            )

    def rps(name: str, level: int) -> float | None:
        samples = results.get((name, level))
        return statistics.median(s.rps for s in samples) if samples else None

    def p99(name: str, level: int) -> float | None:
        samples = results.get((name, level))
        return statistics.median(s.p99_ms for s in samples) if samples else None

    at = 32 if 32 in levels else levels[-1]
    on, off, peer = rps("ours-batching", at), rps("ours-no-batching", at), rps("mlserver-batching", at)
    lines.append("")
    if on and off:
        lines.append(
            f"- at {at} connections: batching gives {on / off:.2f}× our unbatched throughput; p99 "
            f"{p99('ours-batching', at):.2f} ms against {p99('ours-no-batching', at):.2f} ms unbatched"
        )
    ceiling = rps("ours-ceiling", at)
    if ceiling and off:
        lines.append(
            f"- at {at} connections: the server's own ceiling for this request (the same preprocessing before a "
            f"LogisticRegression, batched alike) is {ceiling:.0f} req/s, {ceiling / off:.2f}× our unbatched forest: "
            "the most any batching of the compiled forest could give"
        )
    if on and peer:
        lines.append(f"- at {at} connections: {on / peer:.2f}× MLServer's throughput with its adaptive batching on")
    plain_on, plain_off = rps("ours-sklearn-batching", at), rps("ours-sklearn-no-batching", at)
    if plain_on and plain_off:
        lines.append(
            f"- at {at} connections, scikit-learn's own forest (MODEL_SERVER_COMPILED=false): batching gives "
            f"{plain_on / plain_off:.2f}× its unbatched throughput; p99 {p99('ours-sklearn-batching', at):.2f} ms "
            f"against {p99('ours-sklearn-no-batching', at):.2f} ms"
        )
    if on and plain_off:
        lines.append(
            f"- at {at} connections: compiled forest with batching {on / plain_off:.2f}× scikit-learn's forest "
            "served one request at a time"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench --batching", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--servers",
        default="ours-batching,ours-no-batching,ours-sklearn-batching,ours-sklearn-no-batching,ours-ceiling,"
        "mlserver-batching",
    )
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma list of wrk connection counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, help="write throughput and p99 against concurrency here (SVG)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency {args.concurrency!r} must be a comma list of whole numbers")
    if not all(1 <= c <= 256 for c in levels) or not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--concurrency values must be 1..256, --rounds 1..20 and --duration 1..120")

    import joblib
    from model_server import train
    from model_server.core import artifact

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as scratch_name:
        scratch = Path(scratch_name)
        model, metadata = train.train("penguins", "random-forest", name="penguins-forest", trees=TREES)
        artifact.save(model, metadata, scratch / "forest")
        joblib.dump(model, scratch / "forest.joblib")
        cheap, cheap_metadata = train.train("penguins", name="penguins-forest")
        artifact.save(cheap, cheap_metadata, scratch / "cheap")
        chosen = servers(args.servers.split(","), scratch / "forest", scratch / "forest.joblib", scratch, args.workers)
        results: dict[tuple[str, int], list[Sample]] = {}
        try:
            for server in chosen:
                print(f"bench: starting {server.name} on 127.0.0.1:{server.port}", file=sys.stderr)
                server.start(scratch)
            for round_number in range(1, args.rounds + 1):
                for level in levels:
                    for server in chosen:
                        sample = run_wrk(server, "v2", 1, scratch, seconds=args.duration, connections=level,
                                         threads=min(2, level), workers=args.workers)  # fmt: skip
                        results.setdefault((server.name, level), []).append(sample)
                        print(
                            f"bench: round {round_number} c={level:<3} {server.name:18} {sample.rps:7.0f} req/s "
                            f"p99 {sample.p99_ms:7.2f} ms errors {sample.errors}",
                            file=sys.stderr,
                        )
        finally:
            for server in chosen:
                server.stop()
    names = [server.name for server in chosen]
    print(report(results, levels, names, args))
    if args.plot:
        temp = args.plot.with_name(f".{args.plot.name}.tmp")
        temp.write_text(plot(results, levels, names))
        temp.replace(args.plot)
    return 0
