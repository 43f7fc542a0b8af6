"""What the load tools share: starting servers on 127.0.0.1, request bodies, wrk runs and their numbers."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

from model_server.train import DIABETES_ROWS
from msops.local import descendants, free_port, rss_mib

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
EXPLAIN = "v2-explain"  # the V2 route, asking for contributions and baseline beside predict
ROW = DIABETES_ROWS[0]
# The peers: each in its own virtualenv (scripts/bench --install-peers), running a standalone script
# from bench/peers that imports only what that peer installs.
BENCH_VENV = ROOT / ".venv-bench"
PEERS = ROOT / "bench" / "peers"


def peer(name: str) -> list[str] | None:
    """The command starting peer ``name`` (kserve, mlserver) with its own interpreter; None when the
    peer is not installed."""
    python = BENCH_VENV / name / "bin" / "python"
    return [str(python), str(PEERS / f"{name}_server.py")] if python.exists() else None


def choose(candidates: dict[str, Server], names: list[str]) -> list[Server]:
    """The named servers that are installed, each on a free port (ours reads PORT; the peers and the
    naive app take it as a flag)."""
    chosen = []
    for name in names:
        if name not in candidates:
            print(f"bench: skipping {name}: not installed (scripts/bench --install-peers)", file=sys.stderr)
            continue
        server = candidates[name]
        server.port = free_port()
        server.env["PORT"] = str(server.port)
        # One OpenMP thread per worker for every server, as ours sets for itself (gunicorn.conf.py): the naive
        # app left at the default spent 907 ms of CPU per 1-row HistGradientBoosting request (2 sync workers
        # on 2 cores, 2026-12-05), its threads spinning against each other: a setting, not a serving stack.
        server.env.setdefault("OMP_NUM_THREADS", "1")
        if name == "naive":
            server.command += ["--bind", f"127.0.0.1:{server.port}"]
        elif name.startswith("kserve"):
            server.command += ["--port", str(server.port)]
        elif name.startswith("mlserver"):  # it also listens for gRPC and metrics, on ports of their own
            server.command += ["--port", str(server.port), "--grpc-port", str(free_port())]
            server.command += ["--metrics-port", str(free_port())]
        chosen.append(server)
    return chosen


def body(protocol: str, rows: int, kind: str = "linear", columnar_v1: bool = False) -> bytes:
    """The request every server is sent: ten numbers per row for the linear model; for the penguin
    models, real rows (strings, numbers, missing values) as pandas clients send them. KServe reads V1
    DataFrames only as column lists inside one instance (``columnar_v1``): the same values, its format."""
    if protocol == EXPLAIN:  # a V2 request for the prediction and its explanation
        request = json.loads(body("v2", rows, kind))
        request["outputs"] = [{"name": name} for name in ("predict", "contributions", "baseline")]
        return json.dumps(request).encode()
    if kind != "linear":
        return _penguin_body(protocol, rows, columnar_v1)
    matrix = [[v + i * 1e-4 for v in ROW] for i in range(rows)]
    if protocol == "v1":
        return json.dumps({"instances": matrix}).encode()
    flat = [v for row in matrix for v in row]
    return json.dumps({"inputs": [{"name": "input-0", "shape": [rows, 10], "datatype": "FP64", "data": flat}]}).encode()


PENGUIN_COLUMNS = {
    "island": "BYTES",
    "bill_length_mm": "FP64",
    "bill_depth_mm": "FP64",
    "flipper_length_mm": "FP64",
    "body_mass_g": "FP64",
    "sex": "BYTES",
}


class _Tensor(TypedDict):
    """One V2 input tensor of the penguin request."""

    name: str
    shape: list[int]
    datatype: str
    data: list[object]
    parameters: NotRequired[dict[str, str]]


def _penguin_body(protocol: str, rows: int, columnar_v1: bool) -> bytes:
    """Rows 3.. of the penguins data (row 3 has every measurement and the sex missing): V1 objects keyed
    by column, which KServe turns into a DataFrame; V2 one tensor per column with content_type "pd"
    (strings as "str"), what KServe's and MLServer's pandas codecs send."""
    from palmerpenguins import load_penguins

    data = load_penguins()[list(PENGUIN_COLUMNS)].iloc[3 : 3 + rows]
    records = [{k: (None if v != v else v) for k, v in row.items()} for row in data.to_dict("records")]
    if protocol == "v1" and columnar_v1:
        return json.dumps({"instances": [{name: [r[name] for r in records] for name in PENGUIN_COLUMNS}]}).encode()
    if protocol == "v1":
        return json.dumps({"instances": records}).encode()
    inputs: list[_Tensor] = []
    for name, datatype in PENGUIN_COLUMNS.items():
        tensor: _Tensor = {"name": name, "shape": [rows], "datatype": datatype, "data": [r[name] for r in records]}
        if datatype == "BYTES":
            tensor["parameters"] = {"content_type": "str"}
        inputs.append(tensor)
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode()


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback only
            status: int = response.status  # urlopen's answer is untyped
            return status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop_servers_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, a CI runner's cancel) into SystemExit, so the ``finally`` blocks that stop every
    started server run: a benchmark killed by ``timeout`` once left fifteen server processes running."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    protocols: tuple[str, ...] = ("v1", "v2")
    model: str = "diabetes"  # the name it serves the model under
    kind: str = "linear"  # which bodies it is sent (see body())
    columnar_v1: bool = False  # V1 DataFrames as column lists (KServe's format)
    tls_ca: Path | None = None  # https, verified with this CA (ours-tls)
    token: str | None = None  # a bearer token every request carries (ours-tls)
    process: subprocess.Popen[bytes] | None = None
    cold_start: float = float("nan")
    rss: list[float] = field(default_factory=list)  # MiB per process, read before it is stopped
    log: Path | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        """What every request to this server carries beside its body."""
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"} if self.token else {})}

    def tls_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The server's process; start() must have run."""
        if self.process is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self.process

    def output(self) -> str:
        """What the server has written to stdout and stderr so far; start() must have run."""
        if self.log is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self.log.read_text()

    def url(self, protocol: str) -> str:
        return (
            f"{self.base}/v1/models/{self.model}:predict"
            if protocol == "v1"
            else f"{self.base}/v2/models/{self.model}/infer"  # v2 and v2-explain
        )

    def start(self, logs: Path, until: str = "prediction") -> None:
        """Start and wait for the first successful prediction (``until="live"``: for liveness only)."""
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
            if until == "live" and _answers(f"{self.base}/v2/health/live", self.tls_context()):
                self.cold_start = time.perf_counter() - started
                return
            try:
                request = urllib.request.Request(  # noqa: S310 - loopback only
                    self.url(protocol), data=body(protocol, 1, self.kind, self.columnar_v1), headers=self.headers()
                )
                with urllib.request.urlopen(request, timeout=2, context=self.tls_context()) as response:  # noqa: S310
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
        return descendants(self.popen.pid)

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
        return rss_mib(self.pids())


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float
    worker_share: list[float] = field(default_factory=list)
    total: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)


def parse_latency(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"wrk printed a latency bench cannot read: {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _find(pattern: str, out: str) -> str:
    """The first group of ``pattern`` in wrk's output."""
    match = re.search(pattern, out)
    if match is None:
        raise RuntimeError(f"wrk printed no line matching {pattern!r}:\n{out}")
    return match.group(1)


def wrk_script(
    scratch: Path,
    protocol: str,
    rows: int,
    delay_ms: int = 0,
    kind: str = "linear",
    columnar_v1: bool = False,
    token: str | None = None,
) -> Path:
    """A wrk Lua script POSTing the body (with a bearer token when given); with delay_ms, each connection
    pauses that many whole milliseconds between requests (wrk truncates a fraction to a whole number)."""
    script = scratch / (
        f"{kind}-{protocol}-{rows}-{delay_ms:g}{'-columnar' if columnar_v1 else ''}{'-token' if token else ''}.lua"
    )
    if not script.exists():
        payload = body(protocol, rows, kind, columnar_v1).decode()
        pause = f"function delay()\n  return {delay_ms:g}\nend\n" if delay_ms else ""
        head = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        if token:
            head += f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        script.write_text(f"{head}wrk.body = [==[{payload}]==]\n{pause}")
    return script


def run_wrk(
    server: Server,
    protocol: str,
    rows: int,
    scratch: Path,
    *,
    seconds: int = 10,
    connections: int = 16,
    threads: int = 2,
    delay_ms: int = 0,
    workers: int = 2,
) -> Sample:
    script = wrk_script(scratch, protocol, rows, delay_ms, server.kind, server.columnar_v1, server.token)
    before = server.cpu_ticks()
    wrk = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            server.url(protocol),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    after = server.cpu_ticks()
    out = wrk.stdout
    total = int(_find(r"(\d+) requests in", out))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_error_count = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, socket_errors.groups()), strict=True))
        if socket_errors
        else {}
    )
    errors += sum(socket_error_count.values())
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if "99" not in percentiles:
        raise RuntimeError(f"wrk printed no latency distribution against {server.name}:\n{out}\n{wrk.stderr}")
    deltas = {pid: after[pid] - before.get(pid, 0) for pid in after}
    busy = sorted((d for d in deltas.values() if d > 0), reverse=True)
    cpu_seconds = sum(deltas.values()) / CLOCK_TICK
    return Sample(
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=parse_latency(percentiles["50"]),
        p99_ms=parse_latency(percentiles["99"]),
        errors=errors,
        cpu_us=cpu_seconds / max(total, 1) * 1e6,
        worker_share=[round(d / sum(busy), 2) for d in busy[:workers]] if busy else [],
        total=total,
        socket_errors=socket_error_count,
    )
