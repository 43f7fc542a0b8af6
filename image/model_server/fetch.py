"""Init-container step: download a model artifact archive, verify its sha256, unpack it into the model volume.

    python -m model_server.fetch --url URL --sha256 HEX --dest DIR [--timeout S]

The archive is a .tar.gz of an artifact directory (metadata.json at its top, or under one folder).
Nothing lands in DEST unless the checksum matches and the metadata parses: the archive unpacks
into a sibling temp directory that is renamed into place. An existing DEST with the same
verified model is left alone, so restarts do not download again.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .core import artifact
from .errors import ArtifactError

CHUNK = 1 << 20
MAX_BYTES = 2 << 30


def download(url: str, sha256: str, timeout: float, into: Path) -> Path:
    """Stream ``url`` into a file under ``into``; raise ArtifactError unless its sha256 is ``sha256``."""
    if not re.fullmatch(r"https?://\S+", url):
        raise ArtifactError(f"--url {url!r} must be an http(s) URL")
    target = into / "artifact.tar.gz"
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:  # noqa: S310
            while block := response.read(CHUNK):
                size += len(block)
                if size > MAX_BYTES:
                    raise ArtifactError(f"{url} is larger than {MAX_BYTES} bytes")
                digest.update(block)
                out.write(block)
    except OSError as exc:
        raise ArtifactError(f"download of {url} failed: {exc}") from None
    if digest.hexdigest() != sha256.lower():
        raise ArtifactError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {digest.hexdigest()}")
    return target


def unpack(archive: Path, into: Path) -> Path:
    """Extract with tarfile's 'data' filter (no absolute paths, links out, devices); return the artifact root."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"{archive.name} is not a valid .tar.gz: {exc}") from None
    candidates = [into, *[p for p in into.iterdir() if p.is_dir()]]
    for candidate in candidates:
        if (candidate / artifact.METADATA_FILE).is_file():
            return candidate
    raise ArtifactError(f"the archive holds no {artifact.METADATA_FILE} at its top or one folder down")


def fetch(url: str, sha256: str, dest: Path, timeout: float) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ArtifactError(f"--sha256 {sha256!r} is not 64 hex digits")
    marker = dest / ".source-sha256"
    if marker.is_file() and marker.read_text().strip() == sha256.lower():
        return f"{dest} already holds the artifact {sha256.lower()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        archive = download(url, sha256, timeout, work)
        root = unpack(archive, work / "unpacked")
        metadata = artifact.read_metadata(root)
        (root / marker.name).write_text(sha256.lower() + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        root.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return f"fetched {metadata['name']} v{metadata['version']} ({metadata['model_sha256'][:12]}) into {dest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--sha256", required=True, help="sha256 of the archive, hex")
    parser.add_argument("--dest", type=Path, required=True, help="artifact directory to create")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    try:
        print(fetch(args.url, args.sha256, args.dest, args.timeout))
    except ArtifactError as exc:
        print(f"fetch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
