"""TLS, mutual TLS, tokens and the audit log on the real gunicorn with the image's gunicorn.conf.py: every
refusal beside the request that is let through, certificates and tokens rotated under keep-alive load."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests
from model_server import tokens
from msops import local
from msops.pki import CA, SecretDir, served_serial

from .conftest import ROWS, KeepAliveClients, wait_for

pytestmark = pytest.mark.slow
BODY = {"instances": ROWS[:1].tolist()}


@pytest.fixture
def pki(tmp_path):
    """A CA, the server's certificate for 127.0.0.1 in a Secret-like directory, a client certificate."""
    ca = CA(tmp_path / "pki")
    server = ca.issue("server", hosts=("127.0.0.1", "localhost"))
    secret = SecretDir(tmp_path / "tls", {"tls.crt": server.cert.read_bytes(), "tls.key": server.key.read_bytes()})
    client = ca.issue("scorer.team-a", client=True)
    return ca, server, secret, client


def tls_env(artifact_dir, secret, **extra: str) -> dict[str, str]:
    return {
        "MODEL_SERVER_MODEL_DIR": str(artifact_dir),
        "MODEL_SERVER_WORKERS": "2",
        "MODEL_SERVER_TLS_CERT_FILE": secret.path("tls.crt"),
        "MODEL_SERVER_TLS_KEY_FILE": secret.path("tls.key"),
        **extra,
    }


def handshake(port: int, ca: Path, cert: tuple[str, str] | None = None) -> str:
    """'ok', or what the client saw when the server refused the handshake (or the request right after it:
    with TLS 1.3 a missing client certificate is reported on the first read)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = tls.recv(100)
            return "ok" if answer.startswith(b"HTTP/1.1 200") else f"answered {answer[:40]!r}"
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"
    except OSError as exc:
        return f"refused: {type(exc).__name__}"


def test_https_serves_predictions_and_plaintext_to_the_tls_port_gets_nothing(start_server, artifact_dir, pki):
    ca, server_pair, secret, _ = pki
    server = start_server(tls_env(artifact_dir, secret), client={"verify": str(ca.cert)})
    answer = requests.post(f"{server.url}/predict", json=BODY, verify=str(ca.cert), timeout=5)
    assert answer.status_code == 200
    assert served_serial("127.0.0.1", server.port, ca.cert) == server_pair.serial
    with pytest.raises(requests.ConnectionError):
        requests.post(f"http://127.0.0.1:{server.port}/predict", json=BODY, timeout=5)
    metrics = requests.get(f"{server.url}/metrics", verify=str(ca.cert), timeout=5).text
    assert 'model_server_tls_handshake_failures_total{reason="not TLS"} 1.0' in metrics
    # TLS 1.1 is refused, 1.2 and 1.3 are served.
    old = ssl.create_default_context(cafile=str(ca.cert))
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        modern = ssl.create_default_context(cafile=str(ca.cert))
        modern.minimum_version = modern.maximum_version = version
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == version.name.replace("TLSv1_", "TLSv1.")


def test_mutual_tls_refuses_a_client_without_a_certificate_the_ca_signed(start_server, artifact_dir, pki, tmp_path):
    ca, _, secret, client = pki
    health = local.free_port()
    env = tls_env(
        artifact_dir, secret, MODEL_SERVER_TLS_CLIENT_CA_FILE=str(ca.cert), MODEL_SERVER_HEALTH_PORT=str(health)
    )
    server = start_server(env, client={"verify": str(ca.cert), "cert": (str(client.cert), str(client.key))})
    stranger = CA(tmp_path / "other-ca").issue("stranger", client=True)
    assert handshake(server.port, ca.cert, (str(client.cert), str(client.key))) == "ok"
    assert handshake(server.port, ca.cert).startswith("refused")
    assert handshake(server.port, ca.cert, (str(stranger.cert), str(stranger.key))).startswith("refused")
    # The health port never asks for a client certificate: kubelet's HTTPS probes present none.
    assert handshake(health, ca.cert) == "ok"
    metrics = requests.get(f"https://127.0.0.1:{health}/metrics", verify=str(ca.cert), timeout=5).text
    assert 'model_server_tls_handshake_failures_total{reason="no client certificate"} 1.0' in metrics
    assert 'model_server_tls_handshake_failures_total{reason="bad client certificate"} 1.0' in metrics


def test_a_renewed_certificate_is_served_to_new_connections_while_open_ones_keep_predicting(
    start_server, artifact_dir, pki
):
    ca, first, secret, _ = pki
    server = start_server(tls_env(artifact_dir, secret), client={"verify": str(ca.cert)})
    with KeepAliveClients(server.url, 3, verify=str(ca.cert)) as stream:
        time.sleep(1)
        renewed = ca.issue("server", hosts=("127.0.0.1", "localhost"))
        secret.update({"tls.crt": renewed.cert.read_bytes(), "tls.key": renewed.key.read_bytes()})  # kubelet's swap
        seen = wait_for(
            lambda: served_serial("127.0.0.1", server.port, ca.cert) == renewed.serial, "the renewed certificate"
        )
        # That was one worker; each looks at the files on its own heartbeat. A worker that never saw the
        # renewal before the bad update below would rightly keep the first certificate.
        wait_for(lambda: reloads(server, renewed.serial) == 2, "both workers serving the renewed certificate", 10)
        # A bad update (a key that does not match) keeps the certificate being served.
        stray = ca.issue("stray", hosts=("127.0.0.1",))
        secret.update({"tls.crt": renewed.cert.read_bytes(), "tls.key": stray.key.read_bytes()})
        time.sleep(2.5)
        assert served_serial("127.0.0.1", server.port, ca.cert) == renewed.serial
        time.sleep(1)
    assert set(stream.outcomes) == {"200"}, stream.outcomes
    assert stream.outcomes["200"] > 100
    assert seen < 5, f"the renewed certificate took {seen:.1f} s"
    assert first.serial != renewed.serial
    logs = server.logs()
    assert "TLS certificate reloaded" in logs
    assert "serving the previous certificate" in logs
    assert "does not match the certificate" in logs


def reloads(server, serial: int) -> int:
    """How many workers logged that they now serve the certificate with this serial."""
    return sum(
        "TLS certificate reloaded" in line and f'"serial":"{serial:x}"' in line for line in server.logs().splitlines()
    )


def answered_with(server, token: str, verify: str) -> int:
    """The status a prediction with ``token`` gets, on a new connection (any worker's)."""
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    return requests.post(f"{server.url}/predict", json=BODY, headers=headers, verify=verify, timeout=5).status_code


def test_a_token_is_rotated_with_no_failed_request_and_no_restart(start_server, artifact_dir, pki, tmp_path):
    ca, _, secret, _ = pki
    old, new, scraper = tokens.new_token(), tokens.new_token(), tokens.new_token()
    lines = {
        "old": tokens.line_for("scorer-2026-11", old, "diabetes"),
        "new": tokens.line_for("scorer-2026-12", new, "diabetes"),
        "metrics": tokens.line_for("prometheus", scraper, "metrics"),
    }
    secret_tokens = SecretDir(tmp_path / "auth", {"tokens": f"{lines['old']}\n{lines['metrics']}\n".encode()})
    health = local.free_port()
    env = tls_env(
        artifact_dir,
        secret,
        MODEL_SERVER_AUTH_TOKENS_FILE=secret_tokens.path("tokens"),
        MODEL_SERVER_HEALTH_PORT=str(health),
    )
    server = start_server(env, client={"verify": str(ca.cert)})
    verify = str(ca.cert)
    current = [old]
    with KeepAliveClients(server.url, 3, verify=verify, token=current) as stream:
        time.sleep(1)
        secret_tokens.update({"tokens": f"{lines['old']}\n{lines['new']}\n{lines['metrics']}\n".encode()})
        wait_for(lambda: answered_with(server, new, verify) == 200, "the new token")
        # Every worker reads the file within a second or two of the change (each checks at most once a second,
        # and at every heartbeat): the rotation's one wait. Then the caller moves to the new token...
        time.sleep(2)
        current[0] = new
        time.sleep(1)
        secret_tokens.update({"tokens": f"{lines['new']}\n{lines['metrics']}\n".encode()})  # ...and the old goes
        wait_for(lambda: answered_with(server, old, verify) == 401, "the old token refused")
        time.sleep(1)
    assert set(stream.outcomes) == {"200"}, stream.outcomes
    # Prometheus-style scrapes of the health port: with the metrics token, and without.
    scrape = f"https://127.0.0.1:{health}/metrics"
    assert requests.get(scrape, verify=verify, timeout=5).status_code == 401
    scraped = requests.get(scrape, headers={"Authorization": f"Bearer {scraper}"}, verify=verify, timeout=5)
    assert scraped.status_code == 200
    assert "model_server_requests_total" in scraped.text
    assert requests.get(f"https://127.0.0.1:{health}/v2/health/ready", verify=verify, timeout=5).status_code == 200


def test_a_misconfigured_key_or_tokens_file_stops_the_server_naming_it(artifact_dir, pki, tmp_path):
    ca, server_pair, _, _ = pki
    stray = ca.issue("stray", hosts=("127.0.0.1",))
    bad_tokens = tmp_path / "tokens"
    bad_tokens.write_text("# callers\nscorer sha256:nothex diabetes\n")
    cases = [
        (
            {"MODEL_SERVER_TLS_CERT_FILE": str(server_pair.cert), "MODEL_SERVER_TLS_KEY_FILE": str(stray.key)},
            f"MODEL_SERVER_TLS_KEY_FILE={stray.key} does not match the certificate",
        ),
        ({"MODEL_SERVER_AUTH_TOKENS_FILE": str(bad_tokens)}, f"{bad_tokens}:2: the second field must be sha256:"),
    ]
    for env, message in cases:
        port = local.free_port()
        launch = local.model_server(port, tmp_path / f"metrics-{port}", artifact_dir, **env)
        done = subprocess.run(
            launch.command, cwd=launch.cwd, env={**os.environ, **launch.env},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
        assert f"model-server: {message}" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert "Booting worker" not in done.stderr  # never half-serves


DISTINCTIVE = "ZQXJ-4471-MARKER"
DISTINCTIVE_NUMBER = 7.62839174615


def test_every_request_is_audited_and_no_log_line_holds_an_input_or_an_output(start_server, penguins_dir, tmp_path):
    made = {"scorer": tokens.new_token(), "other": tokens.new_token()}
    (tmp_path / "tokens").write_text(
        tokens.line_for("scorer", made["scorer"], "penguins")
        + "\n"
        + tokens.line_for("other", made["other"], "x")
        + "\n"
    )
    server = start_server(
        {
            "MODEL_SERVER_MODEL_DIR": str(penguins_dir),
            "MODEL_SERVER_WORKERS": "1",
            "MODEL_SERVER_LOG_LEVEL": "debug",
            "MODEL_SERVER_AUTH_TOKENS_FILE": str(tmp_path / "tokens"),
        }
    )
    row = {"island": "Dream", "bill_length_mm": DISTINCTIVE_NUMBER, "bill_depth_mm": 17.9,
           "flipper_length_mm": 192.0, "body_mass_g": 3500.0, "sex": "female"}  # fmt: skip
    unseen = {**row, "bill_depth_mm": DISTINCTIVE}  # a string for a number: 422 naming the value, to the client only
    sent = []
    session = requests.Session()
    for token, body, path, rid in [
        (made["scorer"], {"instances": [row]}, "/v1/models/penguins:predict", "audit-ok"),
        (made["scorer"], {"instances": [row]}, "/v1/models/penguins:explain", "audit-explain"),
        (made["scorer"], {"instances": [unseen]}, "/v1/models/penguins:predict", "audit-422"),
        (made["other"], {"instances": [row]}, "/v1/models/penguins:predict", "audit-403"),
        (None, {"instances": [row]}, "/v1/models/penguins:predict", "audit-401"),
        ("mst_wrong", {"instances": [row]}, "/v1/models/penguins:predict", "audit-401b"),
    ]:
        headers = {"X-Request-ID": rid, **({"Authorization": f"Bearer {token}"} if token else {})}
        for _ in range(2):  # the first request to a path goes through WSGI, the next through the direct door
            response = session.post(f"{server.url}{path}", json=body, headers=headers, timeout=10)
            sent.append((rid, response.status_code, response.text))
    statuses = {rid: status for rid, status, _ in sent}
    assert statuses == {
        "audit-ok": 200, "audit-explain": 200, "audit-422": 422, "audit-403": 403, "audit-401": 401, "audit-401b": 401,
    }  # fmt: skip
    assert "bill_depth_mm" in dict((rid, text) for rid, _, text in sent)["audit-422"]  # the client is told
    time.sleep(0.5)
    logs = server.logs()
    outputs = [json.loads(text) for rid, status, text in sent if status == 200]
    values = {DISTINCTIVE, repr(DISTINCTIVE_NUMBER), *(json.dumps(o) for o in outputs)}
    values |= {str(v) for o in outputs for v in _leaves(o) if isinstance(v, float)}
    leaked = [line for line in logs.splitlines() if any(value in line for value in values)]
    assert leaked == [], leaked
    access = [json.loads(line) for line in logs.splitlines() if '"gunicorn.access"' in line]
    audited = {
        (e["request_id"], e["status"], e["caller"], e["model"])
        for e in access
        if e.get("request_id", "").startswith("audit")
    }
    assert audited == {
        ("audit-ok", 200, "scorer", "penguins"),
        ("audit-explain", 200, "scorer", "penguins"),
        ("audit-422", 422, "scorer", "penguins"),
        ("audit-403", 403, "other", "penguins"),
        ("audit-401", 401, "anonymous", "penguins"),
        ("audit-401b", 401, "anonymous", "penguins"),
    }
    assert sum(1 for e in access if e.get("request_id", "").startswith("audit")) == 12  # both doors, every time
    assert all(token not in logs for token in made.values())


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_the_other_worker_classes_serve_tls_through_gunicorns_own_wrapping(
    start_server, artifact_dir, pki, worker_class
):
    ca, server_pair, secret, client = pki
    env = tls_env(
        artifact_dir, secret, MODEL_SERVER_WORKER_CLASS=worker_class, MODEL_SERVER_TLS_CLIENT_CA_FILE=str(ca.cert)
    )
    server = start_server(env, client={"verify": str(ca.cert), "cert": (str(client.cert), str(client.key))})
    assert handshake(server.port, ca.cert, (str(client.cert), str(client.key))) == "ok"
    assert handshake(server.port, ca.cert).startswith("refused")
    renewed = ca.issue("server", hosts=("127.0.0.1",))
    secret.update({"tls.crt": renewed.cert.read_bytes(), "tls.key": renewed.key.read_bytes()})
    wait_for(
        lambda: served_serial("127.0.0.1", server.port, ca.cert, client) == renewed.serial,
        f"the renewed certificate on {worker_class} workers",
    )
    assert server_pair.serial != renewed.serial
