"""Processes this project starts on this machine: free loopback ports, their memory, and the model server
under gunicorn exactly as the image runs it. The one home for what the local cluster, the benchmark,
the reliability lab and the tests each used to write for themselves."""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

# The checkout's image/ directory: gunicorn.conf.py, the same file the image's CMD reads.
IMAGE = Path(__file__).resolve().parents[2] / "image"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after; nothing reserves it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mib(pids: list[int]) -> list[float]:
    """Resident memory of each process in MiB, in the order given; 0.0 for one that has exited."""
    sizes = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            sizes.append(0.0)
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        sizes.append(int(match.group(1)) / 1024 if match else 0.0)
    return sizes


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, forked from any of its threads (Go programs such as buildah fork
    from any thread); none for a process that has exited."""
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before their children."""
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        found.append(current)
        frontier.extend(children(current))
    return found


@dataclass(frozen=True)
class Launch:
    """How to start a process: argv, the variables added to the caller's environment, the directory."""

    command: list[str]
    env: dict[str, str]
    cwd: Path


def model_server(port: int, metrics_dir: Path, model_dir: Path | None = None, **settings: str) -> Launch:
    """The model server on 127.0.0.1:``port`` with the image's gunicorn.conf.py, serving ``model_dir``
    (None: whatever the environment or the default says); ``settings`` are further MODEL_SERVER_* (or
    HOST/PORT) variables, overriding these."""
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        # Each server its own multiprocess metrics directory: shared files would mix their counters.
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    if model_dir is not None:
        env["MODEL_SERVER_MODEL_DIR"] = str(model_dir)
    return Launch([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], {**env, **settings}, IMAGE)
