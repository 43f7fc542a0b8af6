"""gRPC throughput: ours over gRPC against KServe's and MLServer's gRPC servers, and ours over REST.

    scripts/bench --grpc [--rounds 3] [--duration 10] [--connections 16] [--workers 2]

The same diabetes model, the same workers, 1 and 100 rows per request, interleaved rounds. gRPC load comes
from ghz (github.com/bojand/ghz, scripts/tools.sh installs it), every server sent the same serialized
ModelInferRequest (one FP64 [rows, 10] tensor in raw_input_contents, what tritonclient sends); ours over
REST from wrk with the same rows as V2 JSON; and ours again with gunicorn's gthread workers (no gevent at
all: gRPC's handlers run on its own threads and predictions take the threaded queue), against the default
gevent worker (gRPC's threads native too, its handlers handed to gevent's loop: transport/rpc/threads.py). Both
drivers share the 2 cores with the server, alike for every server. Prints a table: requests/s, x the fastest
peer's gRPC, p50 and p99, errors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from msops import local

from bench.harness import ROOT, Server, peer, run_wrk

ROWS = (1, 100)
SERVICE_CALL = "inference.GRPCInferenceService.ModelInfer"


@dataclass
class Target:
    """One server and how it is driven: over gRPC on ``grpc_port``, or over REST (``grpc_port`` 0)."""

    label: str
    server: Server
    grpc_port: int = 0


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def request_file(rows: int, name: str, scratch: Path) -> Path:
    """A serialized ModelInferRequest of ``rows`` rows, as ghz sends it (--binary-file)."""
    import numpy as np
    from model_server.transport.rpc import messages

    values = np.array([[0.01 * (i + j) for j in range(10)] for i in range(rows)], dtype="<f8")
    request = messages.ModelInferRequest(model_name=name, raw_input_contents=[values.tobytes()])
    request.inputs.add(name="input-0", datatype="FP64", shape=[rows, 10])
    path = scratch / f"infer-{rows}.bin"
    path.write_bytes(request.SerializeToString())
    return path


def run_ghz(port: int, request: Path, seconds: int, connections: int) -> Result:
    from msops import protos

    ghz = shutil.which("ghz")
    if ghz is None:
        raise RuntimeError("ghz is not installed: scripts/tools.sh installs it (go install)")
    out = subprocess.run(
        [
            ghz, "--insecure", "--protoset", str(protos.DESCRIPTORS), "--call", SERVICE_CALL,
            "--binary-file", str(request), "--connections", str(connections), "--concurrency", str(connections),
            "--duration", f"{seconds}s", "--duration-stop", "wait", "--format", "json", f"127.0.0.1:{port}",
        ],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    # --duration-stop wait: the calls in flight when a run ends are answered, not cut (cut, every server showed
    # about one "transport is closing" error per connection, the driver's doing).
    report = json.loads(out.stdout)
    latencies = {entry["percentage"]: entry["latency"] / 1e6 for entry in report.get("latencyDistribution") or []}
    statuses = report.get("statusCodeDistribution") or {}
    return Result(
        rps=float(report["rps"]),
        p50_ms=latencies.get(50, float("nan")),
        p99_ms=latencies.get(99, float("nan")),
        errors=sum(count for status, count in statuses.items() if status != "OK"),
    )


def _ours(label: str, workers: int, model_dir: Path, name: str, scratch: Path, **env: str) -> tuple[Server, int]:
    grpc_port = local.free_port()
    launch = local.model_server(
        0, scratch / f"metrics-{label}", model_dir, MODEL_SERVER_WORKERS=str(workers),
        MODEL_SERVER_GRPC_PORT=str(grpc_port), **env,
    )  # fmt: skip
    server = Server(label, launch.command, launch.env, launch.cwd, local.free_port(), model=name)
    server.env["PORT"] = str(server.port)
    return server, grpc_port


def targets(workers: int, model_dir: Path, joblib_file: Path, name: str, scratch: Path) -> list[Target]:
    ours, grpc_port = _ours("ours", workers, model_dir, name, scratch)
    # The same server with gunicorn's gthread workers: gRPC's handlers stay on its own threads, no gevent loop
    # to hand them to (docs/grpc.md).
    threaded, threaded_grpc = _ours(
        "ours-gthread", workers, model_dir, name, scratch, MODEL_SERVER_WORKER_CLASS="gthread"
    )
    chosen = [
        Target("ours gRPC", ours, grpc_port),
        Target("ours gRPC, gthread workers", threaded, threaded_grpc),
        Target("ours REST", ours),
    ]
    peer_args = ["--workers", str(workers), "--model-file", str(joblib_file), "--name", name]
    kserve = peer("kserve")
    if kserve:
        port, kserve_grpc = local.free_port(), local.free_port()
        command = [*kserve, *peer_args, "--port", str(port), "--grpc-port", str(kserve_grpc)]
        chosen.append(Target("KServe gRPC", Server("kserve", command, {}, ROOT, port, model=name), kserve_grpc))
    mlserver = peer("mlserver")
    if mlserver:
        port, mlserver_grpc = local.free_port(), local.free_port()
        command = [
            *mlserver, *peer_args, "--port", str(port), "--grpc-port", str(mlserver_grpc),
            "--metrics-port", str(local.free_port()), "--workdir", str(scratch / "mlserver"),
        ]  # fmt: skip
        server = Server("mlserver", command, {}, ROOT, port, protocols=("v2",), model=name)
        chosen.append(Target("MLServer gRPC", server, mlserver_grpc))
    missing = {"kserve", "mlserver"} - {t.server.name for t in chosen}
    for name_missing in sorted(missing):
        print(f"bench: skipping {name_missing}: not installed (scripts/bench --install-peers)", file=sys.stderr)
    for target in chosen:
        target.server.env.setdefault("OMP_NUM_THREADS", "1")
    return chosen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench --grpc", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120 or not 1 <= args.connections <= 256:
        parser.error("--rounds must be 1..20, --duration 1..120, --connections 1..256")
    import joblib
    from model_server import train
    from model_server.core import artifact

    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as scratch_name:
        scratch = Path(scratch_name)
        fitted, metadata = train.train(name="diabetes")
        artifact.save(fitted, metadata, scratch / "model")
        joblib.dump(fitted, scratch / "model.joblib")
        chosen = targets(args.workers, scratch / "model", scratch / "model.joblib", "diabetes", scratch)
        requests = {rows: request_file(rows, "diabetes", scratch) for rows in ROWS}
        results: dict[tuple[int, str], list[Result]] = {}
        started: list[Server] = []
        try:
            for target in chosen:
                if target.server not in started:
                    print(f"bench: starting {target.server.name}", file=sys.stderr)
                    target.server.start(scratch)
                    started.append(target.server)
            for round_number in range(1, args.rounds + 1):
                for rows in ROWS:
                    for target in chosen:
                        if target.grpc_port:
                            result = run_ghz(target.grpc_port, requests[rows], args.duration, args.connections)
                        else:
                            sample = run_wrk(
                                target.server, "v2", rows, scratch, seconds=args.duration,
                                connections=args.connections, workers=args.workers,
                            )  # fmt: skip
                            result = Result(sample.rps, sample.p50_ms, sample.p99_ms, sample.errors)
                        results.setdefault((rows, target.label), []).append(result)
                        print(
                            f"bench: round {round_number} {rows:3} rows {target.label:26} {result.rps:8.0f} req/s "
                            f"p99 {result.p99_ms:6.2f} ms errors {result.errors}",
                            file=sys.stderr,
                        )
        finally:
            for server in started:
                server.stop()
    print(report(results, [t.label for t in chosen], args))
    return 0


def report(results: dict[tuple[int, str], list[Result]], labels: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"ghz (gRPC) and wrk (REST), {args.connections} connections, {args.duration} s, {args.workers} workers each, "
        f"{args.rounds} interleaved rounds: median",
        "",
        "| rows | server | req/s | × fastest peer gRPC | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for rows in ROWS:
        medians = {label: statistics.median(r.rps for r in results[(rows, label)]) for label in labels}
        peers = [medians[label] for label in labels if "gRPC" in label and not label.startswith("ours")]
        fastest = max(peers) if peers else float("nan")
        for label in labels:
            runs = results[(rows, label)]
            ratio = f"{medians[label] / fastest:.2f}×" if peers else "n/a"
            lines.append(
                f"| {rows} | {label} | {medians[label]:.0f} | {ratio} | "
                f"{statistics.median(r.p50_ms for r in runs):.2f} | {statistics.median(r.p99_ms for r in runs):.2f} | "
                f"{sum(r.errors for r in runs)} |"
            )
    return "\n".join(lines)
