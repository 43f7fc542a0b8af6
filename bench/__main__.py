"""Throughput, latency and CPU per request: this server against its peers, side by side (scripts/bench).

Every server gets the same model (the default LinearRegression artifact), the same worker count and
the same load (wrk, keep-alive connections, 127.0.0.1 only). Rounds are interleaved (round 1 of every
server and shape, then round 2, ...), and medians are printed with the range of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "image"
BENCH_VENV = ROOT / ".venv-bench"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]
SHAPES = {"v1-1": ("v1", 1), "v1-100": ("v1", 100), "v2-1": ("v2", 1), "v2-100": ("v2", 100)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body(protocol: str, rows: int) -> bytes:
    matrix = [[v + i * 1e-4 for v in ROW] for i in range(rows)]
    if protocol == "v1":
        return json.dumps({"instances": matrix}).encode()
    flat = [v for row in matrix for v in row]
    return json.dumps({"inputs": [{"name": "input-0", "shape": [rows, 10], "datatype": "FP64", "data": flat}]}).encode()


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    protocols: tuple[str, ...] = ("v1", "v2")
    process: subprocess.Popen | None = None
    cold_start: float = float("nan")
    log: Path | None = None

    def url(self, protocol: str) -> str:
        base = f"http://127.0.0.1:{self.port}"
        return f"{base}/v1/models/diabetes:predict" if protocol == "v1" else f"{base}/v2/models/diabetes/infer"

    def start(self, logs: Path) -> None:
        self.log = logs / f"{self.name}.log"
        started = time.perf_counter()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        protocol = self.protocols[0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                request = urllib.request.Request(  # noqa: S310 - http on loopback only
                    self.url(protocol), data=body(protocol, 1), headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - http on loopback only
                    if response.status == 200:
                        self.cold_start = time.perf_counter() - started
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within 120 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def pids(self) -> list[int]:
        """The server process and all its descendants."""
        assert self.process is not None
        found, frontier = [], [self.process.pid]
        while frontier:
            pid = frontier.pop()
            found.append(pid)
            try:
                # Every thread's children: a process may fork from any of its threads.
                children = [
                    c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
                ]
            except OSError:
                children = []
            frontier.extend(int(c) for c in children)
        return found

    def cpu_ticks(self) -> dict[int, int]:
        ticks = {}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[pid] = int(fields[11]) + int(fields[12])
        return ticks

    def rss_mib(self) -> list[float]:
        sizes = []
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            if match:
                sizes.append(int(match.group(1)) / 1024)
        return sizes


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float
    worker_share: list[float] = field(default_factory=list)


def parse_latency(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(server: Server, protocol: str, rows: int, args: argparse.Namespace, scratch: Path) -> Sample:
    script = scratch / f"{protocol}-{rows}.lua"
    if not script.exists():
        payload = body(protocol, rows).decode()
        script.write_text(
            f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{payload}]==]\n'
        )
    before = server.cpu_ticks()
    wrk = subprocess.run(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            "-s",
            str(script),
            server.url(protocol),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=args.duration + 60,
    )
    after = server.cpu_ticks()
    out = wrk.stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    deltas = {pid: after[pid] - before.get(pid, 0) for pid in after}
    busy = sorted((d for d in deltas.values() if d > 0), reverse=True)
    cpu_seconds = sum(deltas.values()) / CLOCK_TICK
    return Sample(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_ms=parse_latency(percentiles["50"]),
        p99_ms=parse_latency(percentiles["99"]),
        errors=errors,
        cpu_us=cpu_seconds / max(total, 1) * 1e6,
        worker_share=[round(d / sum(busy), 2) for d in busy[: args.workers]] if busy else [],
    )


def servers(args: argparse.Namespace, model_dir: Path, scratch: Path) -> list[Server]:
    python = sys.executable
    candidates = {
        "ours": Server(
            "ours",
            [python, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            {
                "HOST": "127.0.0.1",
                "PORT": "0",
                "MODEL_SERVER_MODEL_DIR": str(model_dir),
                "MODEL_SERVER_WORKERS": str(args.workers),
                "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics"),
            },
            IMAGE,
            0,
        ),
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
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.workers} workers each, "
        f"{args.rounds} interleaved rounds: median (min–max)",
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
        "--servers", default="ours,naive,kserve,mlserver", help="comma list (peers need --install-peers)"
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes, the same for every server")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}")
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds must be 1..20 and --duration 1..120")

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
                        sample = run_wrk(server, protocol, rows, args, scratch)
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
