"""Throughput, latency and CPU per request: this server against its peers, side by side (scripts/bench).

Three models, one group of shapes each: ``linear`` (the diabetes LinearRegression, ten numbers per
row: v1-1, v1-100, v2-1, v2-100), ``pipeline`` (the penguins Pipeline: ColumnTransformer with
imputers, one-hot encoder and scaler, then LogisticRegression; string and numeric columns with
missing values) and ``forest`` (the same preprocessing before a 100-tree RandomForestClassifier).
Within a group every server gets the same fitted model (ours and naive from the artifact, the peers
from a joblib copy of it), the same worker count and the same load (wrk, keep-alive connections,
127.0.0.1 only). Rounds are interleaved (round 1 of every server and shape, then round 2, ...), and
medians are printed with the range of the rounds.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from msops import local

from bench.harness import EXPLAIN, ROOT, Sample, Server, choose, peer, run_wrk, stop_servers_on_sigterm


class TrainOptions(TypedDict, total=False):
    """model_server.train.train's keyword arguments beyond the name."""

    demo: str
    estimator: str
    trees: int


# kind -> (the name it is served under, how to train it with model_server.train)
MODELS: dict[str, tuple[str, TrainOptions]] = {
    "linear": ("diabetes", {}),
    "pipeline": ("penguins", {"demo": "penguins"}),
    "forest": ("penguins-forest", {"demo": "penguins", "estimator": "random-forest", "trees": 100}),
    # README's own "bring your own model" shape: OrdinalEncoder + HistGradientBoosting on categorical codes
    "hgb": ("penguins-hgb", {"demo": "penguins", "estimator": "hgb-pipeline", "trees": 100}),
    # GradientBoosting after the penguin preprocessing: 100 stages of 3 trees (one per class)
    "gb": ("penguins-gb", {"demo": "penguins", "estimator": "gradient-boosting", "trees": 100}),
}
SHAPES = {
    f"{kind + '-' if kind != 'linear' else ''}{protocol}-{rows}": (kind, protocol, rows)
    for kind in MODELS
    for protocol in ("v1", "v2")
    for rows in (1, 100)
}
# Ours only: one row's prediction with its explanation (contributions + baseline), to set against v2-1.
SHAPES |= {f"{kind + '-' if kind != 'linear' else ''}explain-1": (kind, EXPLAIN, 1) for kind in MODELS}


def _ours(name: str, args: argparse.Namespace, model: Model, scratch: Path, extra: dict[str, str]) -> Server:
    """This server with its production gunicorn config; ``extra`` overrides settings."""
    launch = local.model_server(
        0, scratch / f"metrics-{name}-{model.kind}", model.directory, MODEL_SERVER_WORKERS=str(args.workers), **extra
    )
    return Server(
        name,
        launch.command,
        launch.env,
        launch.cwd,
        0,
        protocols=("v1", "v2", EXPLAIN),
        model=model.name,
        kind=model.kind,
    )


def _secured(args: argparse.Namespace, model: Model, scratch: Path) -> Server:
    """Ours over TLS with authentication on: a CA of its own, a certificate for 127.0.0.1 and one caller's token."""
    from model_server import tokens
    from msops.pki import CA

    pki = scratch / f"pki-{model.kind}"
    ca = CA(pki)
    pair = ca.issue("server", hosts=("127.0.0.1",))
    token = tokens.new_token()
    (pki / "tokens").write_text(tokens.line_for("bench", token, "*") + "\n")
    settings = {
        "MODEL_SERVER_TLS_CERT_FILE": str(pair.cert),
        "MODEL_SERVER_TLS_KEY_FILE": str(pair.key),
        "MODEL_SERVER_AUTH_TOKENS_FILE": str(pki / "tokens"),
    }
    server = _ours("ours-tls", args, model, scratch, settings)
    server.tls_ca, server.token = ca.cert, token
    return server


@dataclass(frozen=True)
class Model:
    kind: str
    name: str
    directory: Path  # the artifact: ours and naive
    joblib_file: Path  # the same fitted model for the peers, in the format they load


def servers(args: argparse.Namespace, model: Model, scratch: Path) -> list[Server]:
    python = sys.executable
    peer_args = ["--model-file", str(model.joblib_file), "--name", model.name]
    candidates = {
        "ours": _ours("ours", args, model, scratch, {}),
        # The same server without keep-alive: every request on a new connection, accepted by
        # whichever worker is free. Shows what keep-alive is worth (MODEL_SERVER_KEEPALIVE=0).
        "ours-no-keepalive": _ours("ours-no-keepalive", args, model, scratch, {"MODEL_SERVER_KEEPALIVE": "0"}),
        # Drift accounting off: what counting every row into the drift window costs.
        "ours-no-drift": _ours("ours-no-drift", args, model, scratch, {"MODEL_SERVER_DRIFT_WINDOW": "0"}),
        # TLS and a bearer token on every request (keep-alive): what data security costs per request.
        "ours-tls": _secured(args, model, scratch),
        "naive": Server(
            "naive",
            [python, "-m", "gunicorn", "--workers", str(args.workers), "--worker-class", "sync", "bench.naive:app"],
            {"MODEL_SERVER_MODEL_DIR": str(model.directory)},
            ROOT,
            0,
            model=model.name,
            kind=model.kind,
        ),
    }
    kserve = peer("kserve")
    if kserve:
        candidates["kserve"] = Server(
            "kserve",
            [*kserve, "--workers", str(args.workers), *peer_args],
            {},
            ROOT,
            0,
            model=model.name,
            kind=model.kind,
            columnar_v1=True,
        )
    mlserver = peer("mlserver")
    if mlserver:
        workdir = str(scratch / f"mlserver-{model.kind}")
        candidates["mlserver"] = Server(
            "mlserver",
            [*mlserver, "--workers", str(args.workers), "--workdir", workdir, *peer_args],
            {},
            ROOT,
            0,
            protocols=("v2",),
            model=model.name,
            kind=model.kind,
        )
    return choose(candidates, args.servers.split(","))


def median_range(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, fmt)
    return f"{format(middle, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(
    results: dict[tuple[str, str], list[Sample]],
    cold: dict[tuple[str, str], Server],
    models: dict[str, Model],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
        + (f", {args.delay_ms:g} ms pause per connection between requests" if args.delay_ms else "")
        + f", {args.workers} workers each, {args.rounds} interleaved rounds: median (min–max)",
        "",
        "| shape | server | req/s | × naive | × fastest peer | p50 ms | p99 ms | errors | server CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(name for _, name in cold))
    for shape in args.shapes.split(","):
        medians = {
            name: statistics.median(s.rps for s in results[(shape, name)]) for name in names if (shape, name) in results
        }
        naive_rps = medians.get("naive")
        peers = [rps for name, rps in medians.items() if name in ("kserve", "mlserver")]
        best_peer = max(peers, default=None)
        for name in names:
            samples = results.get((shape, name))
            if not samples:
                lines.append(f"| {shape} | {name} | n/a (protocol not served) | | | | | | |")
                continue
            rps = [s.rps for s in samples]
            ratio = f"{medians[name] / naive_rps:.2f}×" if naive_rps else "–"
            peer_ratio = f"{medians[name] / best_peer:.2f}×" if best_peer else "–"
            lines.append(
                f"| {shape} | {name} | {median_range(rps, '.0f')} | {ratio} | {peer_ratio} | "
                f"{median_range([s.p50_ms for s in samples], '.2f')} | "
                f"{median_range([s.p99_ms for s in samples], '.2f')} | "
                f"{sum(s.errors for s in samples)} | {median_range([s.cpu_us for s in samples], '.0f')} |"
            )
    lines += costs(results, models, args)
    lines += [
        "",
        "| model | server | cold start s (start → first prediction) | RSS MiB per process | balance (worst run) |",
        "|---|---|---|---|---|",
    ]
    for (kind, name), server in cold.items():
        shares = [
            s.worker_share
            for (shape, sample_name), samples in results.items()
            if sample_name == name and SHAPES[shape][0] == kind
            for s in samples
        ]
        least_busy = min((share[-1] for share in shares if len(share) > 1), default=float("nan"))
        rss = " / ".join(f"{r:.0f}" for r in server.rss)
        lines.append(
            f"| {kind} | {name} | {server.cold_start:.2f} | {rss} | least-busy process {least_busy:.0%} of CPU |"
        )
    return "\n".join(lines)


def _cpu(results: dict[tuple[str, str], list[Sample]], shape: str, server: str) -> float | None:
    samples = results.get((shape, server))
    return statistics.median(s.cpu_us for s in samples) if samples else None


def costs(
    results: dict[tuple[str, str], list[Sample]], models: dict[str, Model], args: argparse.Namespace
) -> list[str]:
    """What explanations and drift accounting cost in server CPU per request (medians)."""
    lines = []
    for kind in MODELS:
        prefix = f"{kind}-" if kind != "linear" else ""
        predict, explained = _cpu(results, f"{prefix}v2-1", "ours"), _cpu(results, f"{prefix}explain-1", "ours")
        if predict and explained:
            lines.append(
                f"- {kind}: one row's prediction with contributions and baseline costs {explained:.0f} µs of server "
                f"CPU against {predict:.0f} µs for the prediction alone: the explanation adds "
                f"{(explained - predict) / predict:.2f}× the prediction's CPU"
            )
        if kind in models:
            lines += drift_costs(results, models[kind], prefix, args)
        for shape in (f"{prefix}v1-1", f"{prefix}v2-1"):
            plain, secured = _cpu(results, shape, "ours"), _cpu(results, shape, "ours-tls")
            if plain and secured:
                lines.append(
                    f"- {shape}: TLS and a bearer token (keep-alive) cost {secured:.0f} µs of server CPU per request "
                    f"against {plain:.0f} µs in plaintext: {(secured - plain) / plain:+.1%} (target: under +15%)"
                )
    return ["", *lines] if lines else []


def drift_costs(
    results: dict[tuple[str, str], list[Sample]], model: Model, prefix: str, args: argparse.Namespace
) -> list[str]:
    """Drift accounting measured in-process (bench/drift_cost.py) against the server CPU per request, and
    the wrk pair ours / ours-no-drift, whose difference is mostly the machine's round-to-round noise."""
    import os
    import subprocess

    from model_server.core.drift import PUBLISH_INTERVAL_S

    shares = []
    for rows in (1, 100):
        shape = f"{prefix}v1-{rows}"
        base = _cpu(results, shape, "ours-no-drift") or _cpu(results, shape, "ours")
        served = results.get((shape, "ours"))
        if not base or not served:
            continue
        per_publish = max(1, round(statistics.median(s.rps for s in served) / args.workers * PUBLISH_INTERVAL_S))
        with tempfile.TemporaryDirectory(prefix="bench-drift-") as metrics_dir:
            measured = subprocess.run(
                [sys.executable, "-m", "bench.drift_cost", str(model.directory), str(rows), str(per_publish)],
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir},
                capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
        cost = float(measured.stdout)
        shares.append(f"{cost:.1f} µs per {rows}-row request ({cost / base:.1%} of its {base:.0f} µs)")
    lines = []
    if shares:
        lines.append(f"- {model.kind}: drift accounting, measured in-process, costs " + " and ".join(shares))
    shapes = [s for s, (k, protocol, _) in SHAPES.items() if k == model.kind and protocol != EXPLAIN]
    pairs = [(_cpu(results, s, "ours"), _cpu(results, s, "ours-no-drift")) for s in shapes]
    gaps = [(on - off) / off for on, off in pairs if on and off]
    if gaps:
        lines.append(
            f"- {model.kind}: ours against ours-no-drift under wrk: {min(gaps):+.1%} to {max(gaps):+.1%} server CPU "
            "per request across its shapes, the spread of the rounds rather than the accounting"
        )
    return lines


def prepare_models(kinds: list[str], scratch: Path) -> dict[str, Model]:
    """Train each model once: the artifact for ours and naive, a joblib copy of it for the peers."""
    import joblib
    from model_server import train
    from model_server.core import artifact

    models = {}
    for kind in kinds:
        name, options = MODELS[kind]
        fitted, metadata = train.train(name=name, **options)
        directory = scratch / f"model-{kind}"
        artifact.save(fitted, metadata, directory, prove=True)
        joblib.dump(fitted, scratch / f"{kind}.joblib")
        models[kind] = Model(kind, name, directory, scratch / f"{kind}.joblib")
    return models


# scripts/bench FLAG ...: the module under bench/ that runs it
OTHER_BENCHMARKS = {
    "--batching": "batching",
    "--revisions": "revisions",
    "--grpc": "grpc_load",
    "--compiled": "compiled_paths",
    "--cold-start": "cold_start",
    "--drift-floor": "drift_floor",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stop_servers_on_sigterm()
    if argv[:1] and argv[0] in OTHER_BENCHMARKS:  # a benchmark of its own, with its own arguments
        other = importlib.import_module(f"bench.{OTHER_BENCHMARKS[argv[0]]}")
        code: int = other.main(argv[1:])
        return code
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        default="ours,ours-no-drift,ours-no-keepalive,naive,kserve,mlserver",
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
        type=int,
        default=0,
        help="each connection pauses this many whole milliseconds between requests (wrk truncates a fraction): "
        "compare latency below saturation",
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

    shapes = args.shapes.split(",")
    kinds = list(dict.fromkeys(SHAPES[shape][0] for shape in shapes))
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch_name:
        scratch = Path(scratch_name)
        models = prepare_models(kinds, scratch)
        results: dict[tuple[str, str], list[Sample]] = {}
        cold: dict[tuple[str, str], Server] = {}
        for kind in kinds:  # one model at a time: every server of the group up, the rounds, then down
            chosen = servers(args, models[kind], scratch)
            group = [shape for shape in shapes if SHAPES[shape][0] == kind]
            try:
                for server in chosen:
                    print(f"bench: starting {server.name} ({kind}) on 127.0.0.1:{server.port}", file=sys.stderr)
                    server.start(scratch)
                    cold[(kind, server.name)] = server
                for round_number in range(1, args.rounds + 1):
                    for shape in group:
                        _, protocol, rows = SHAPES[shape]
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
                                f"bench: round {round_number} {shape:16} {server.name:17} {sample.rps:8.0f} req/s "
                                f"p99 {sample.p99_ms:6.2f} ms errors {sample.errors} cpu {sample.cpu_us:5.0f} µs/req",
                                file=sys.stderr,
                            )
                for server in chosen:
                    server.rss = server.rss_mib()
            finally:
                for server in chosen:
                    server.stop()
        print(report(results, cold, models, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
