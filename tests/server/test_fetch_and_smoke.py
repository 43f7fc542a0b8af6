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
from model_server import fetch, smoke, tokens, train
from model_server.core import artifact
from model_server.errors import ArtifactError
from msops import local
from msops.pki import CA

from .test_security import write_tokens


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


# ---- the gRPC binding, beside REST ----------------------------------------------------------------------


def grpc_server(start_server, model_dir: Path, client: dict | None = None, **extra: str):
    env = {"MODEL_SERVER_MODEL_DIR": str(model_dir), "MODEL_SERVER_GRPC_PORT": str(local.free_port()), **extra}
    server = start_server(env, client=client)
    return server, f"127.0.0.1:{env['MODEL_SERVER_GRPC_PORT']}"


def test_smoke_checks_grpc_answers_what_rest_answers(start_server, artifact_dir, capsys):
    server, target = grpc_server(start_server, artifact_dir)
    assert smoke.main(["--url", server.url, "--grpc", target, "--expect-from", str(artifact_dir)]) == 0
    assert f"gRPC {target} answered the same" in capsys.readouterr().out


def test_smoke_checks_grpc_with_text_columns_and_nulls(start_server, penguins_dir, capsys):
    # penguins' second row has its nullable text columns null: the typed BYTES field cannot carry a null,
    # so gRPC is asked the rows it can carry and compared with V2's answer to the same rows.
    server, target = grpc_server(start_server, penguins_dir)
    assert smoke.main(["--url", server.url, "--grpc", target]) == 0
    assert f"gRPC {target} answered the same" in capsys.readouterr().out


def test_smoke_fails_when_grpc_answers_differently_from_rest(start_server, artifact_dir, tmp_path, capsys):
    # The same signature, another model behind the gRPC port: the answers differ and smoke says so.
    other = tmp_path / "other"
    model, metadata = train.train("diabetes", "ridge")
    artifact.save(model, metadata, other)
    rest = start_server({"MODEL_SERVER_MODEL_DIR": str(artifact_dir)})
    _, target = grpc_server(start_server, other)
    assert smoke.main(["--url", rest.url, "--grpc", target]) == 1
    err = capsys.readouterr().err
    assert f"gRPC {target} answered predict" in err
    assert ", V2 [" in err


def test_smoke_checks_grpc_over_tls_with_a_token_and_names_a_refusal(
    start_server, artifact_dir, tmp_path, capsys, monkeypatch
):
    ca = CA(tmp_path / "pki")
    pair = ca.issue("server", hosts=("127.0.0.1", "localhost"))
    made = write_tokens(tmp_path / "tokens", ("smoke", "*"))
    (tmp_path / "token").write_text(made["smoke"] + "\n")
    (tmp_path / "wrong").write_text(tokens.new_token() + "\n")
    server, target = grpc_server(
        start_server,
        artifact_dir,
        client={"verify": str(ca.cert), "headers": {"Authorization": f"Bearer {made['smoke']}"}},
        MODEL_SERVER_TLS_CERT_FILE=str(pair.cert),
        MODEL_SERVER_TLS_KEY_FILE=str(pair.key),
        MODEL_SERVER_AUTH_TOKENS_FILE=str(tmp_path / "tokens"),
    )
    secured = ["--url", server.url, "--grpc", target, "--ca-file", str(ca.cert)]
    assert smoke.main([*secured, "--token-file", str(tmp_path / "token")]) == 0
    assert f"gRPC {target} answered the same" in capsys.readouterr().out
    # The gRPC check goes through the server's auth: an unknown token is refused there, by name.
    meta = smoke.call(f"{server.url}/v2/models/diabetes")
    monkeypatch.setattr(smoke, "CREDENTIALS", smoke.Credentials(str(ca.cert), str(tmp_path / "wrong")))
    with pytest.raises(smoke.SmokeFailure, match=f"gRPC {target} answered UNAUTHENTICATED: "):
        smoke.check_grpc(target, "diabetes", meta, smoke.rows_from_metadata(meta), "predict", [])
    # Nothing on the gRPC port: the failure names it.
    closed = f"127.0.0.1:{local.free_port()}"
    assert smoke.main([*secured[:2], "--grpc", closed, *secured[4:], "--token-file", str(tmp_path / "token")]) == 1
    assert f"gRPC {closed} answered UNAVAILABLE" in capsys.readouterr().err
