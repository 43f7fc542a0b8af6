"""Run the built image as a container here: buildah (chroot isolation, host network) or docker. Used by the
image tests and scripts/image-report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from .local import descendants, free_port
from .tools import ROOT


def engine() -> str | None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        return "docker"
    if shutil.which("podman") and shutil.which("buildah"):
        return "podman"
    return None


def build(tag: str) -> str:
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-image"), "--tag", tag], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-image failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


def inspect(image: str) -> dict[str, Any]:
    """The engine's description of ``image`` (config, layers, size)."""
    tool = "docker" if engine() == "docker" else "podman"
    out = subprocess.run([tool, "image", "inspect", image], capture_output=True, text=True, check=True).stdout
    described: dict[str, Any] = json.loads(out)[0]
    return described


class Container:
    """One container from the image, run with buildah (podman run needs cgroups this host lacks)."""

    def __init__(self, image: str, env: dict[str, str] | None = None, volumes: dict[Path, str] | None = None) -> None:
        self.image = image
        self.port = free_port()
        self.env = {"PORT": str(self.port), "HOST": "127.0.0.1", **(env or {})}
        self.volumes = volumes or {}
        self.name = subprocess.run(
            ["buildah", "from", "--quiet", image], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.rootfs = Path(
            subprocess.run(["buildah", "mount", self.name], capture_output=True, text=True, check=True).stdout.strip()
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.output = b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run_args(self, command: list[str]) -> list[str]:
        args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        for host, target in self.volumes.items():
            args += ["--volume", f"{host}:{target}:ro"]
        return [*args, self.name, "--", *command]

    def exec(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_args(command), capture_output=True, text=True, check=False, timeout=120)

    def start(self, command: list[str]) -> None:
        # Output goes to a file: an unread pipe fills up with access logs and blocks the server.
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.run_args(command), stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_live(self, timeout: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"container exited {self.process.returncode}: {self.logs()}")
            try:
                if requests.get(f"{self.url}/v2/health/live", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"container not live after {timeout}s")

    def server_pids(self) -> list[int]:
        """The gunicorn processes of this container: descendants of `buildah run` running the venv's python."""
        assert self.process is not None
        found = []
        for pid in descendants(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"python3") and any(b"gunicorn" in arg for arg in argv):
                found.append(pid)
        return found

    def master_pid(self) -> int:
        pids = self.server_pids()
        for pid in pids:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent not in pids:
                return pid
        raise RuntimeError("no gunicorn master found")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.kill(self.master_pid(), sig)
            except RuntimeError:
                os.killpg(self.process.pid, signal.SIGKILL)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if not self.log_file.closed:
            self.log_file.seek(0)
            self.output = self.log_file.read()
            self.log_file.close()
        return self.process.returncode

    def logs(self) -> str:
        return self.output.decode(errors="replace")

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        subprocess.run(["buildah", "umount", self.name], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", self.name], capture_output=True, check=False)


def snapshot(rootfs: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file outside the writable and virtual paths."""
    skip = {"proc", "sys", "dev", "tmp", "run"}
    files: dict[str, tuple[int, int]] = {}
    for top in rootfs.iterdir():
        if top.name in skip:
            continue
        for path in [top] if not top.is_dir() or top.is_symlink() else top.rglob("*"):
            try:
                stat = path.lstat()
            except OSError:
                continue
            files[str(path.relative_to(rootfs))] = (stat.st_size, stat.st_mtime_ns)
    return files
