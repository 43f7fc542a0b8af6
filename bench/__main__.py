"""Throughput, latency and CPU per request: this server against its peers, side by side (scripts/bench).

Every server gets the same model (the default LinearRegression artifact), the same worker count and
the same load (wrk, keep-alive connections, 127.0.0.1 only). Rounds are interleaved (round 1 of every
server and shape, then round 2, ...), and medians are printed with the range of the rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.harness import IMAGE, ROOT, Sample, Server, free_port, run_wrk

BENCH_VENV = ROOT / ".venv-bench"
SHAPES = {"v1-1": ("v1", 1), "v1-100": ("v1", 100), "v2-1": ("v2", 1), "v2-100": ("v2", 100)}


def _ours(name: str, args: argparse.Namespace, model_dir: Path, scratch: Path, extra: dict[str, str]) -> Server:
    """This server with its production gunicorn config; ``extra`` overrides settings."""
    return Server(
        name,
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
        {
            "HOST": "127.0.0.1",
            "PORT": "0",
            "MODEL_SERVER_MODEL_DIR": str(model_dir),
            "MODEL_SERVER_WORKERS": str(args.workers),
            "PROMETHEUS_MULTIPROC_DIR": str(scratch / f"metrics-{name}"),
            **extra,
        },
        IMAGE,
        0,
    )


def servers(args: argparse.Namespace, model_dir: Path, scratch: Path) -> list[Server]:
    python = sys.executable
    candidates = {
        "ours": _ours("ours", args, model_dir, scratch, {}),
        # The same server without keep-alive: every request on a new connection, accepted by
        # whichever worker is free. Shows what keep-alive is worth (MODEL_SERVER_KEEPALIVE=0).
        "ours-no-keepalive": _ours("ours-no-keepalive", args, model_dir, scratch, {"MODEL_SERVER_KEEPALIVE": "0"}),
        "naive": Server(
            "naive",
            [python, "-m", "gunicorn", "--workers", str(args.workers), "--worker-class", "sync", "bench.naive:app"],
            {"MODEL_SERVER_MODEL_DIR": str(model_dir), "PYTHONPATH": f"{IMAGE}:{ROOT}"},
            ROOT,
            0,
        ),
    }
    kserve_python = BENCH_VENV / "kserve" / "bin" / "python"
    if kserve_python.exists():
        candidates["kserve"] = Server(
            "kserve",
            [str(kserve_python), "-m", "bench.kserve_server", "--workers", str(args.workers)],
            {"PYTHONPATH": f"{IMAGE}:{ROOT}"},
            ROOT,
            0,
        )
    mlserver_python = BENCH_VENV / "mlserver" / "bin" / "python"
    if mlserver_python.exists():
        candidates["mlserver"] = Server(
            "mlserver",
            [
                str(mlserver_python),
                "-m",
                "bench.mlserver_server",
                "--workers",
                str(args.workers),
                "--workdir",
                str(scratch / "mlserver"),
            ],
            {"PYTHONPATH": f"{IMAGE}:{ROOT}"},
            ROOT,
            0,
            protocols=("v2",),
        )
    chosen = []
    for name in args.servers.split(","):
        if name not in candidates:
            print(f"bench: skipping {name}: not installed (scripts/bench --install-peers)", file=sys.stderr)
            continue
        server = candidates[name]
        server.port = free_port()
        server.env["PORT"] = str(server.port)
        if name == "naive":
            server.command += ["--bind", f"127.0.0.1:{server.port}"]
        elif name in ("kserve", "mlserver"):
            server.command += ["--port", str(server.port)]
        chosen.append(server)
    return chosen


def median_range(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, fmt)
    return f"{format(middle, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(results: dict[tuple[str, str], list[Sample]], chosen: list[Server], args: argparse.Namespace) -> str:
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
        + (f", {args.delay_ms:g} ms pause per connection between requests" if args.delay_ms else "")
        + f", {args.workers} workers each, {args.rounds} interleaved rounds: median (min–max)",
        "",
        "| shape | server | req/s | × naive | p50 ms | p99 ms | errors | server CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in args.shapes.split(","):
        naive = results.get((shape, "naive"))
        naive_rps = statistics.median(s.rps for s in naive) if naive else None
        for server in chosen:
            samples = results.get((shape, server.name))
            if not samples:
                lines.append(f"| {shape} | {server.name} | n/a (protocol not served) | | | | | |")
                continue
            rps = [s.rps for s in samples]
            ratio = f"{statistics.median(rps) / naive_rps:.2f}×" if naive_rps else "–"
            lines.append(
                f"| {shape} | {server.name} | {median_range(rps, '.0f')} | {ratio} | "
                f"{median_range([s.p50_ms for s in samples], '.2f')} | "
                f"{median_range([s.p99_ms for s in samples], '.2f')} | "
                f"{sum(s.errors for s in samples)} | {median_range([s.cpu_us for s in samples], '.0f')} |"
            )
    lines += [
        "",
        "| server | cold start s (start → first prediction) | RSS MiB per process | balance (worst run) |",
        "|---|---|---|---|",
    ]
    for server in chosen:
        shares = [s.worker_share for (_, name), samples in results.items() if name == server.name for s in samples]
        least_busy = min((share[-1] for share in shares if len(share) > 1), default=float("nan"))
        rss = " / ".join(f"{r:.0f}" for r in server.rss_mib())
        lines.append(
            f"| {server.name} | {server.cold_start:.2f} | {rss} | least-busy process {least_busy:.0%} of CPU |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        default="ours,ours-no-keepalive,naive,kserve,mlserver",
        help="comma list (peers need --install-peers)",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes, the same for every server")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="each connection pauses this long between requests: compare latency below saturation",
    )
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}")
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds must be 1..20 and --duration 1..120")
    if not 0 <= args.delay_ms <= 1000:
        parser.error("--delay-ms must be 0..1000")

    sys.path.insert(0, str(IMAGE))
    from model_server import artifact, train

    with tempfile.TemporaryDirectory(prefix="bench-") as scratch_name:
        scratch = Path(scratch_name)
        model, metadata = train.train()
        artifact.save(model, metadata, scratch / "model")
        chosen = servers(args, scratch / "model", scratch)
        results: dict[tuple[str, str], list[Sample]] = {}
        try:
            for server in chosen:
                print(f"bench: starting {server.name} on 127.0.0.1:{server.port}", file=sys.stderr)
                server.start(scratch)
            for round_number in range(1, args.rounds + 1):
                for shape in args.shapes.split(","):
                    protocol, rows = SHAPES[shape]
                    for server in chosen:
                        if protocol not in server.protocols:
                            continue
                        sample = run_wrk(
                            server,
                            protocol,
                            rows,
                            scratch,
                            seconds=args.duration,
                            connections=args.connections,
                            threads=args.threads,
                            workers=args.workers,
                            delay_ms=args.delay_ms,
                        )
                        results.setdefault((shape, server.name), []).append(sample)
                        print(
                            f"bench: round {round_number} {shape:7} {server.name:8} {sample.rps:8.0f} req/s "
                            f"p99 {sample.p99_ms:6.2f} ms errors {sample.errors} cpu {sample.cpu_us:5.0f} µs/req",
                            file=sys.stderr,
                        )
            print(report(results, chosen, args))
        finally:
            for server in chosen:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
