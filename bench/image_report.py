"""Image size and start-up report: the shipped image beside the naive single-stage one (scripts/image-report).

Prints, per image: uncompressed size, compressed layer total (gzip, as a registry stores it), each
layer's size and the step that made it, the number of Python packages, and cold start (container
start to first successful prediction, median of three starts).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import requests
from msops.container import Container

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ROOT = Path(__file__).resolve().parents[1]

# pandas (models fitted on DataFrames) moved it from 350; stripped extension modules gave 11 MB back. Data
# security moved it from 380: cryptography (the RSA/ECDSA signatures of Kubernetes ServiceAccount tokens,
# certificate checks) is 14 MB with cffi; leaving out pandas' tzdata and cffi's pycparser gave 2 back
# (390 MB measured, 2026-12-04). The gRPC binding moved it from 395: grpcio (18 MB installed) and protobuf (2 MB)
# took the shipped image to 412 MB (scripts/image-report, 2026-12-05).
BUDGET_MB = 420
BUDGET_COLD_START_S = 3.0
DEFAULT_IMAGE = "localhost/model-server:dev"  # what scripts/build-image tags


def run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def image_exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], capture_output=True).returncode == 0


def build_naive(base: str, tag: str) -> None:
    dockerfile = str(ROOT / "bench" / "naive.Dockerfile")
    subprocess.run(
        ["podman", "build", "--isolation", "chroot", "--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
         "--build-arg", f"BASE_IMAGE={base}", "-t", tag, "-f", dockerfile, str(ROOT / "image")],
        check=True, stdout=sys.stderr, stderr=sys.stderr,
    )  # fmt: skip


def compressed_layers(image: str) -> list[int]:
    """Each layer gzipped (level 6, what docker push sends), in bytes."""
    with tempfile.TemporaryDirectory(prefix="image-report-") as scratch:
        out = Path(scratch) / "oci"
        run("podman", "save", "--quiet", "--format", "oci-dir", "-o", str(out), image)
        index = json.loads((out / "index.json").read_text())
        digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((out / "blobs" / "sha256" / digest).read_text())
        sizes = []
        for layer in manifest["layers"]:
            blob = out / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
            if layer["mediaType"].endswith("gzip"):
                sizes.append(blob.stat().st_size)
                continue
            counter = _ByteCounter()
            with blob.open("rb") as source, gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6) as target:
                shutil.copyfileobj(source, target, 1 << 20)
            sizes.append(counter.size)
        return sizes


class _ByteCounter(io.RawIOBase):
    """A write-only sink that only counts bytes."""

    size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        written = memoryview(data).nbytes
        self.size += written
        return written


def _predicts(url: str) -> bool:
    try:
        return requests.post(f"{url}/predict", json={"instances": [[0.01] * 10]}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def cold_start(image: str, runs: int = 3) -> float:
    config = json.loads(run("podman", "image", "inspect", image))[0]["Config"]
    times = []
    for _ in range(runs):
        box = Container(image)
        try:
            started = time.monotonic()
            box.start(config["Cmd"])
            box.wait_live(timeout=60)
            while not _predicts(box.url):
                if time.monotonic() - started > 60:
                    raise TimeoutError(f"{image} gave no prediction within 60 s")
                time.sleep(0.05)
            times.append(time.monotonic() - started)
            box.stop()
        finally:
            box.remove()
    return statistics.median(times)


class ImageFigures(TypedDict):
    """What the report prints for one image."""

    size_mb: float
    compressed_mb: float
    layers: list[tuple[str, str]]  # (size as podman prints it, the step that made the layer)
    packages: int
    cold_start_s: float


def describe(image: str) -> ImageFigures:
    info = json.loads(run("podman", "image", "inspect", image))[0]
    history = [
        line.split("\t", 1)
        for line in run("podman", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image).splitlines()
    ]
    box = Container(image)
    try:
        packages = len(list(box.rootfs.glob("**/site-packages/*.dist-info")))
    finally:
        box.remove()
    return {
        "size_mb": info["Size"] / 1e6,
        "compressed_mb": sum(compressed_layers(image)) / 1e6,
        "layers": [(size, " ".join(step.split())[:90]) for size, step in history if size not in ("0B", "0 B")],
        "packages": packages,
        "cold_start_s": cold_start(image),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image-report", description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the shipped image (scripts/build-image)")
    parser.add_argument("--base", default="localhost/model-server-base:bookworm-2", help="base for the naive image")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args(argv)
    if args.image == DEFAULT_IMAGE and not image_exists(DEFAULT_IMAGE):
        # The report is of this checkout's image: built first (with its base) when it is missing.
        subprocess.run([str(ROOT / "scripts" / "build-image")], check=True, stdout=sys.stderr)
    wanted = [("--image", args.image)] + ([] if args.skip_naive else [("--base", args.base)])
    missing = [f"{flag} {ref}" for flag, ref in wanted if not image_exists(ref)]
    if missing:
        listed = ", ".join(missing)
        parser.error(f"no such image in podman's store: {listed} (scripts/build-image builds both defaults)")
    images = {"shipped (image/Dockerfile)": args.image}
    if not args.skip_naive:
        build_naive(args.base, "localhost/model-server-naive:report")
        images["naive single-stage"] = "localhost/model-server-naive:report"
    reports = {name: describe(image) for name, image in images.items()}
    print("| image | uncompressed MB | compressed layers MB | Python packages | cold start s |")
    print("|---|---|---|---|---|")
    for name, report in reports.items():
        print(
            f"| {name} | {report['size_mb']:.0f} | {report['compressed_mb']:.0f} | {report['packages']} | "
            f"{report['cold_start_s']:.2f} |"
        )
    for name, report in reports.items():
        print(f"\nlayers of {name}:")
        for size, step in report["layers"]:
            print(f"  {size:>10}  {step}")
    shipped = reports["shipped (image/Dockerfile)"]
    ok = shipped["size_mb"] < BUDGET_MB and shipped["cold_start_s"] < BUDGET_COLD_START_S
    verdict = "within" if ok else "OVER"
    print(f"\nbudget: < {BUDGET_MB} MB uncompressed, cold start < {BUDGET_COLD_START_S} s: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
