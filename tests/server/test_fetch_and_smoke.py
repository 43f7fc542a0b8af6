"""The chart's helpers that run from the image: the fetch init container and the helm-test smoke check."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
from model_server import fetch, smoke, train
from model_server.core import artifact
from model_server.errors import ArtifactError


@pytest.fixture
def file_server(tmp_path: Path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def pack(directory: Path, target: Path, prefix: str = "model") -> str:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(directory, arcname=prefix)
    return hashlib.sha256(target.read_bytes()).hexdigest()


def test_fetch_downloads_verifies_and_unpacks(file_server, artifact_dir, tmp_path):
    root, url = file_server
    digest = pack(artifact_dir, root / "m.tar.gz")
    dest = tmp_path / "volume" / "model"
    message = fetch.fetch(f"{url}/m.tar.gz", digest, dest, timeout=10)
    assert "fetched diabetes v1" in message
    assert artifact.load(dest).name == "diabetes"
    # A restart with the same artifact does not download again.
    (root / "m.tar.gz").unlink()
    assert "already holds" in fetch.fetch(f"{url}/m.tar.gz", digest, dest, timeout=10)


def test_fetch_refuses_a_wrong_checksum_and_leaves_nothing(file_server, artifact_dir, tmp_path):
    root, url = file_server
    pack(artifact_dir, root / "m.tar.gz")
    dest = tmp_path / "volume" / "model"
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        fetch.fetch(f"{url}/m.tar.gz", "0" * 64, dest, timeout=10)
    assert not dest.exists()
    assert list((tmp_path / "volume").iterdir()) == []


def test_fetch_refuses_archives_that_escape_or_hold_no_artifact(file_server, tmp_path):
    root, url = file_server
    evil = root / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(ArtifactError):
        fetch.fetch(f"{url}/evil.tar.gz", digest, tmp_path / "v" / "model", timeout=10)
    assert not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://x/y", "--sha256", "a" * 64], "must be an http(s) URL"),
        (["--url", "http://127.0.0.1:9/x", "--sha256", "xyz"], "is not 64 hex digits"),
        (["--url", "http://127.0.0.1:9/x", "--sha256", "a" * 64], "download of"),
    ],
)
def test_fetch_cli_fails_with_one_clear_line(tmp_path, capsys, args, message):
    assert fetch.main([*args, "--dest", str(tmp_path / "m"), "--timeout", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_smoke_passes_against_a_real_server_and_checks_the_answer(start_server, artifact_dir, capsys):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir)})
    assert smoke.main(["--url", server.url, "--expect-from", str(artifact_dir)]) == 0
    assert "ok: model diabetes v1" in capsys.readouterr().out


def test_smoke_checks_a_classifier_pipeline_with_nulls_against_its_artifact(start_server, penguins_dir, capsys):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(penguins_dir)})
    assert smoke.main(["--url", server.url, "--expect-from", str(penguins_dir)]) == 0
    assert "ok: model penguins v1 answered 2 rows identically on V1 and V2" in capsys.readouterr().out


def test_smoke_fails_on_a_wrong_answer(start_server, artifact_dir, tmp_path, capsys):
    other = tmp_path / "other"
    model, metadata = train.train("diabetes", "ridge")
    artifact.save(model, metadata, other)
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir)})
    assert smoke.main(["--url", server.url, "--expect-from", str(other)]) == 1
    assert "differs from" in capsys.readouterr().err


def test_smoke_fails_when_the_server_is_not_ready(start_server, tmp_path, capsys):
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(tmp_path / "absent")})
    assert smoke.main(["--url", server.url, "--wait", "2"]) == 1
    assert "503" in capsys.readouterr().err


def test_smoke_waits_for_a_server_that_is_not_reachable_yet(start_server, artifact_dir, capsys):
    # A new pod's address may be admitted by the NetworkPolicy enforcer a moment after it starts:
    # the first attempts are refused, then it answers.
    server = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir)}, wait=False)
    assert smoke.main(["--url", server.url, "--wait", "30"]) == 0
    assert "ok: model diabetes v1" in capsys.readouterr().out
