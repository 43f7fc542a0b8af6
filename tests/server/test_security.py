"""Who may call what (security/): the tokens file, ServiceAccount tokens, client certificates, every refusal
with its status and header beside the answer a right credential gets, and the TLS files' checks."""

from __future__ import annotations

import base64
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from model_server import tokens
from model_server.config import ConfigError
from model_server.errors import Forbidden, InvalidToken, Unauthorized
from model_server.security import identity
from model_server.security.files import Reloading
from model_server.security.guard import ANY_CALLER, OPEN, Guard, scope_of
from model_server.security.identity import (
    Caller,
    JwksSource,
    ServiceAccountTokens,
    TokenTable,
    parse_certificate_names,
    parse_service_accounts,
)
from model_server.security.tls import TlsError, check_files, context
from model_server.transport.app import create_app
from msops.pki import CA

from .conftest import ROWS, make_settings

ISSUER = "https://kubernetes.default.svc.cluster.local"
V1 = {"instances": ROWS[:1].tolist()}


def write_tokens(path: Path, *callers: tuple[str, str]) -> dict[str, str]:
    """A tokens file for ``callers`` (id, scopes); the tokens, by id."""
    made = {caller_id: tokens.new_token() for caller_id, _ in callers}
    lines = ["# callers of the test server", *(tokens.line_for(i, made[i], s) for i, s in callers)]
    path.write_text("\n".join(lines) + "\n")
    return made


# ---- the tokens file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice diabetes", "expected '<id> sha256:<hex digest> <scopes>', found 2 fields"),
        ("alice sha256:abc diabetes", "the second field must be sha256: and 64 lower-case hex digits"),
        ("alice mst_notadigest diabetes", "the second field must be sha256:"),
        ("al ice sha256:" + "a" * 64 + " diabetes", "found 4 fields"),
        ("alice sha256:" + "a" * 64 + " dia:betes", "scopes 'dia:betes' must be a comma list"),
        ("al$ce sha256:" + "a" * 64 + " diabetes", "id 'al$ce' must be"),
    ],
)
def test_a_malformed_tokens_line_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "tokens"
    path.write_text("# a comment\n\n" + line + "\n")
    with pytest.raises(ConfigError, match=f"{path}:3: .*{message.replace('$', '[$]').replace('(', '.')}"):
        TokenTable.read(str(path))


def test_a_pasted_token_is_never_echoed_by_the_error(tmp_path):
    path = tmp_path / "tokens"
    secret = tokens.new_token()
    path.write_text(f"alice {secret} diabetes\n")
    with pytest.raises(ConfigError) as caught:
        TokenTable.read(str(path))
    assert secret not in str(caught.value)


def test_duplicated_ids_and_shared_tokens_are_refused(tmp_path):
    path = tmp_path / "tokens"
    digest = "sha256:" + "b" * 64
    path.write_text(f"alice {digest} diabetes\nbob {digest} diabetes\n")
    with pytest.raises(ConfigError, match=r":2: this digest is already another line's"):
        TokenTable.read(str(path))
    path.write_text(f"alice {digest} diabetes\nalice sha256:{'c' * 64} *\n")
    with pytest.raises(ConfigError, match=r":2: id 'alice' appears twice"):
        TokenTable.read(str(path))


def test_only_digests_are_kept_and_every_line_is_compared_in_constant_time(tmp_path, monkeypatch):
    made = write_tokens(tmp_path / "tokens", ("alice", "diabetes"), ("bob", "*"), ("carol", "metrics"))
    table = TokenTable.read(str(tmp_path / "tokens"))
    assert all(token not in repr(table) for token in made.values())
    compared = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return compare(a, b)

    monkeypatch.setattr(identity.hmac, "compare_digest", counting)
    # The first line matches, yet every line is compared: time does not tell which digests exist.
    assert table.caller(made["alice"]) == Caller("alice", frozenset({"diabetes"}))
    assert len(compared) == 3
    assert table.caller("mst_unknown") is None
    assert len(compared) == 6


def test_the_token_command_adds_a_line_the_server_reads_and_prints_the_token_once(tmp_path, capsys):
    path = tmp_path / "tokens"
    assert tokens.main(["--id", "scorer", "--scopes", "diabetes,metrics", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("mst_")
    assert token not in path.read_text()
    assert TokenTable.read(str(path)).caller(token) == Caller("scorer", frozenset({"diabetes", "metrics"}))
    # A second line for the same id is refused, and the file is left as it was.
    before = path.read_text()
    assert tokens.main(["--id", "scorer", "--scopes", "*", "--file", str(path)]) == 2
    assert "appears twice" in capsys.readouterr().err
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tokens"]  # no temporary file left behind


def test_a_changed_tokens_file_is_read_again_and_a_bad_one_keeps_the_last_good(tmp_path):
    path = tmp_path / "tokens"
    first = write_tokens(path, ("alice", "diabetes"))
    clock = [0.0]
    errors: list[Exception] = []
    table = Reloading((str(path),), lambda: TokenTable.read(str(path)), on_error=errors.append, clock=lambda: clock[0])
    assert table.current().caller(first["alice"]) is not None
    second = write_tokens(path, ("alice", "diabetes"), ("bob", "diabetes"))
    assert table.current().caller(second["bob"]) is None  # checked at most once a second
    clock[0] += 1.0
    assert table.current().caller(second["bob"]) is not None
    assert table.current().caller(first["alice"]) is None  # rotated: the first token left the file
    path.write_text("bob broken\n")
    clock[0] += 1.0
    assert table.current().caller(second["bob"]) is not None
    assert len(errors) == 1
    assert "found 2 fields" in str(errors[0])
    clock[0] += 1.0
    table.current()
    assert len(errors) == 1  # the same bad version is reported once


# ---- scopes and refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/v2/health/live", OPEN),
        ("/v2/health/ready", OPEN),
        ("/metrics", "metrics"),
        ("/v2/models/diabetes/infer", "diabetes"),
        ("/v2/models/diabetes/versions/1/infer", "diabetes"),
        ("/v2/models/diabetes", "diabetes"),
        ("/v2/models/diabetes/ready", "diabetes"),
        ("/v1/models/diabetes:predict", "diabetes"),
        ("/v1/models/diabetes:explain", "diabetes"),
        ("/v1/models/diabetes", "diabetes"),
        ("/predict", "diabetes"),
        ("/openapi.json", "diabetes"),
        ("/v1/models", ANY_CALLER),
        ("/v2", ANY_CALLER),
        ("/nowhere", ANY_CALLER),
    ],
)
def test_each_path_needs_its_scope(path, scope):
    assert scope_of(path, "diabetes") == scope


def test_star_is_every_model_but_not_the_metrics():
    caller = Caller("ops", frozenset({"*"}))
    assert caller.may("diabetes")
    assert caller.may("penguins")
    assert not caller.may("metrics")
    assert Caller("prometheus", frozenset({"metrics"})).may("metrics")


@pytest.fixture
def secured(artifact_dir, tmp_path):
    """The app with a tokens file of three callers: the diabetes scorer, another model's, and Prometheus."""
    made = write_tokens(tmp_path / "tokens", ("scorer", "diabetes"), ("other", "penguins"), ("prometheus", "metrics"))
    app = create_app(make_settings(artifact_dir, MODEL_SERVER_AUTH_TOKENS_FILE=str(tmp_path / "tokens")))
    return app.test_client(), made


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REQUESTS = [
    (
        "POST",
        "/v2/models/diabetes/infer",
        {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": [0.1] * 10}]},
    ),
    ("POST", "/v1/models/diabetes:predict", V1),
    ("POST", "/v1/models/diabetes:explain", V1),
    ("POST", "/predict", V1),
    ("GET", "/v2/models/diabetes", None),
    ("GET", "/v2/models/diabetes/ready", None),
    ("GET", "/v1/models/diabetes", None),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_no_token_is_401_a_token_of_another_scope_403_the_right_one_200(secured, method, path, body):
    client, made = secured
    missing = client.open(path, method=method, json=body)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="model-server"'
    assert missing.get_json()["error"].startswith("unauthorized:")
    unknown = client.open(path, method=method, json=body, headers=bearer("mst_not-a-token"))
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    assert "mst_not-a-token" not in unknown.get_data(as_text=True)
    wrong = client.open(path, method=method, json=body, headers=bearer(made["other"]))
    assert wrong.status_code == 403
    assert 'error="insufficient_scope"' in wrong.headers["WWW-Authenticate"]
    assert wrong.get_json()["error"] == "forbidden: caller 'other' may not use model 'diabetes'"
    assert made["other"] not in wrong.get_data(as_text=True)
    right = client.open(path, method=method, json=body, headers=bearer(made["scorer"]))
    assert right.status_code == 200, right.get_data()


def test_health_stays_open_and_metrics_needs_the_metrics_scope(secured):
    client, made = secured
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(made["scorer"])).status_code == 403
    scraped = client.get("/metrics", headers=bearer(made["prometheus"]))
    assert scraped.status_code == 200
    assert b"model_server_requests_total" in scraped.data


def test_an_anonymous_client_learns_nothing_not_even_which_paths_exist(secured):
    client, made = secured
    for path in ("/v2", "/v1/models", "/nowhere", "/openapi.json"):
        assert client.get(path).status_code == 401, path
    assert client.get("/nowhere", headers=bearer(made["scorer"])).status_code == 404
    assert client.get("/v1/models", headers=bearer(made["other"])).status_code == 200
    assert client.get("/openapi.json", headers=bearer(made["scorer"])).status_code == 200
    assert client.get("/openapi.json", headers=bearer(made["other"])).status_code == 403


def test_malformed_authorization_headers_are_401(secured):
    client, _ = secured
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token abc"):
        response = client.post("/predict", json=V1, headers={"Authorization": header})
        assert response.status_code == 401, header


def test_without_any_identity_configured_everything_is_open(artifact_dir):
    client = create_app(make_settings(artifact_dir)).test_client()
    assert client.post("/predict", json=V1).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_a_bad_tokens_file_stops_the_app_before_it_serves(artifact_dir, tmp_path):
    (tmp_path / "tokens").write_text("alice sha256:zz diabetes\n")
    with pytest.raises(ConfigError, match=r"tokens:1: the second field"):
        create_app(make_settings(artifact_dir, MODEL_SERVER_AUTH_TOKENS_FILE=str(tmp_path / "tokens")))
    with pytest.raises(ConfigError, match="cannot be read"):
        create_app(make_settings(artifact_dir, MODEL_SERVER_AUTH_TOKENS_FILE=str(tmp_path / "absent")))


# ---- Kubernetes ServiceAccount tokens -------------------------------------------------------------------


class Issuer:
    """An API server's signing key, its JWKS, and projected tokens it signs."""

    def __init__(self, kid: str = "key-1") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()

        def b64(value: int) -> str:
            return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

        return {
            "keys": [
                {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": b64(numbers.n), "e": b64(numbers.e)}
            ]
        }

    def token(
        self, namespace: str, name: str, audience: str = "model-server", expires_in: int = 600, issuer: str = ISSUER
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer,
            "aud": [audience],
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def issuer(tmp_path):
    made = Issuer()
    (tmp_path / "jwks.json").write_text(json.dumps(made.jwks()))
    return made


@pytest.fixture
def by_account(artifact_dir, tmp_path, issuer):
    app = create_app(
        make_settings(
            artifact_dir,
            MODEL_SERVER_AUTH_SERVICE_ACCOUNTS="team-a/scorer=diabetes;monitoring/prometheus=metrics",
            MODEL_SERVER_AUTH_JWKS_FILE=str(tmp_path / "jwks.json"),
        )
    )
    return app.test_client()


def test_a_service_account_token_of_an_allowed_account_is_200_another_account_403(by_account, issuer):
    assert by_account.post("/predict", json=V1, headers=bearer(issuer.token("team-a", "scorer"))).status_code == 200
    other = by_account.post("/predict", json=V1, headers=bearer(issuer.token("team-b", "scorer")))
    assert other.status_code == 403
    assert "system:serviceaccount:team-b:scorer" in other.get_json()["error"]
    metrics = by_account.get("/metrics", headers=bearer(issuer.token("monitoring", "prometheus")))
    assert metrics.status_code == 200


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (
            lambda i: i.token("team-a", "scorer", audience="https://kubernetes.default.svc"),
            "not issued for the audience",
        ),
        (lambda i: i.token("team-a", "scorer", expires_in=-120), "expired"),
        (lambda i: i.token("team-a", "scorer", issuer="https://elsewhere"), "not a valid ServiceAccount token"),
        (lambda i: Issuer().token("team-a", "scorer"), "not a valid ServiceAccount token"),  # same kid, other key
        (lambda i: Issuer(kid="rotated").token("team-a", "scorer"), "signed by a key the server does not know"),
        (lambda i: i.token("team-a", "scorer")[:-4] + "AAAA", "not a valid ServiceAccount token"),
    ],
    ids=["wrong audience", "expired", "other issuer", "forged signature", "unknown key", "tampered"],
)
def test_a_service_account_token_that_does_not_verify_is_401(by_account, issuer, make, why):
    response = by_account.post("/predict", json=V1, headers=bearer(make(issuer)))
    assert response.status_code == 401
    assert why in response.get_json()["error"]
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_the_jwks_file_is_read_again_when_the_api_server_rotates_its_key(tmp_path, issuer):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    keys = JwksSource(file=str(jwks))
    accounts = ServiceAccountTokens(parse_service_accounts("team-a/scorer=diabetes"), keys, ISSUER, "model-server")
    rotated = Issuer(kid="key-2")
    assert accounts.caller(rotated.token("team-a", "scorer"))[1] == "signed by a key the server does not know"
    jwks.write_text(json.dumps({"keys": issuer.jwks()["keys"] + rotated.jwks()["keys"]}))
    time.sleep(1.1)
    caller, why, _ = accounts.caller(rotated.token("team-a", "scorer"))
    assert (caller, why) == (Caller("system:serviceaccount:team-a:scorer", frozenset({"diabetes"})), "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("team-a/scorer", "must be namespace/serviceaccount=scope,scope"),
        ("Team_A/scorer=diabetes", "must be namespace/serviceaccount"),
        ("team-a/scorer=diabetes;team-a/scorer=*", "team-a/scorer is listed twice"),
        ("team-a/scorer=", "scopes '' must be"),
    ],
)
def test_the_service_account_list_is_checked(text, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        parse_service_accounts(text)


def test_a_jwks_that_is_not_one_stops_the_server(tmp_path):
    (tmp_path / "jwks.json").write_text('{"keys": "no"}')
    with pytest.raises(ConfigError, match="is not a JWKS with usable keys"):
        JwksSource(file=str(tmp_path / "jwks.json"))
    with pytest.raises(ConfigError, match="exactly one of"):
        JwksSource()


# ---- client certificates --------------------------------------------------------------------------------


def test_a_listed_client_certificate_stands_in_for_a_token():
    guard = Guard(certificates=parse_certificate_names("scorer.team-a=diabetes;spiffe://cluster.local/ns/b/sa/x=*"))

    def peer(cn: str, uri: str = "") -> dict:
        alt = (("URI", uri),) if uri else ()
        return {"subject": ((("commonName", cn),),), "subjectAltName": alt}

    assert guard.check("/predict", None, lambda: peer("scorer.team-a"), "diabetes")[0] == Caller(
        "certificate:scorer.team-a", frozenset({"diabetes"})
    )
    mesh = guard.check("/v2/models/penguins/infer", None, lambda: peer("x", "spiffe://cluster.local/ns/b/sa/x"), "")
    assert mesh[0] is not None
    assert mesh[0].id == "certificate:spiffe://cluster.local/ns/b/sa/x"
    with pytest.raises(Unauthorized):
        guard.check("/predict", None, lambda: peer("stranger"), "diabetes")
    with pytest.raises(Forbidden):
        guard.check("/metrics", None, lambda: peer("scorer.team-a"), "diabetes")
    with pytest.raises(InvalidToken):  # a token present is the identity: no falling back to the certificate
        Guard(certificates={"scorer": frozenset({"*"})}).check(
            "/predict", "Bearer mst_x", lambda: peer("scorer"), "diabetes"
        )


def test_certificate_identities_need_mutual_tls(artifact_dir):
    with pytest.raises(ConfigError, match="needs MODEL_SERVER_TLS_CLIENT_CA_FILE"):
        Guard.from_settings(make_settings(artifact_dir, MODEL_SERVER_AUTH_CLIENT_CERTIFICATES="scorer=*"))


# ---- TLS files -------------------------------------------------------------------------------------------


def test_tls_files_are_checked_and_each_problem_names_its_file(tmp_path):
    ca = CA(tmp_path / "ca")
    server = ca.issue("server", hosts=("127.0.0.1",))
    other = ca.issue("other", hosts=("127.0.0.1",))
    assert check_files(str(server.cert), str(server.key), str(ca.cert)).serial == format(server.serial, "x")
    cases = [
        ((str(server.cert), str(other.key), ""), "MODEL_SERVER_TLS_KEY_FILE=.* does not match the certificate"),
        ((str(server.key), str(server.key), ""), "MODEL_SERVER_TLS_CERT_FILE=.* is not a PEM certificate"),
        ((str(server.cert), str(server.cert), ""), "MODEL_SERVER_TLS_KEY_FILE=.* is not a PEM private key"),
        ((str(server.cert), str(tmp_path / "absent"), ""), "MODEL_SERVER_TLS_KEY_FILE=.*absent cannot be read"),
        ((str(server.cert), str(server.key), str(server.key)), "MODEL_SERVER_TLS_CLIENT_CA_FILE=.* holds no PEM"),
    ]
    for files, message in cases:
        with pytest.raises(TlsError, match=message):
            check_files(*files)


def test_the_context_allows_tls_1_2_and_later_with_forward_secret_aead_suites(tmp_path):
    import ssl

    ca = CA(tmp_path / "ca")
    server = ca.issue("server", hosts=("127.0.0.1",))
    built = context(str(server.cert), str(server.key), str(ca.cert))
    assert built.minimum_version == ssl.TLSVersion.TLSv1_2
    assert built.verify_mode == ssl.CERT_REQUIRED
    assert built.options & ssl.OP_NO_COMPRESSION
    names = [cipher["name"] for cipher in built.get_ciphers()]
    assert names
    assert all("GCM" in name or "CHACHA20" in name for name in names), names
    assert not any(
        name.startswith(("AES", "DES", "RC4")) and "ECDHE" not in name for name in names if "TLS_" not in name
    )
    assert context(str(server.cert), str(server.key)).verify_mode == ssl.CERT_NONE


def test_several_tokens_files_read_as_one_and_a_caller_in_two_is_refused(tmp_path):
    first = write_tokens(tmp_path / "operator", ("scorer", "diabetes"))
    second = write_tokens(tmp_path / "chart", ("helm-test", "*"))
    table = TokenTable.read_all([str(tmp_path / "operator"), str(tmp_path / "chart")])
    assert table.caller(first["scorer"]).id == "scorer"
    assert table.caller(second["helm-test"]).id == "helm-test"
    write_tokens(tmp_path / "again", ("scorer", "*"))
    with pytest.raises(ConfigError, match=r"id 'scorer' is in both .*operator and .*again"):
        TokenTable.read_all([str(tmp_path / "operator"), str(tmp_path / "again")])


def test_keys_fetched_from_a_url_with_the_pods_token_and_refetched_for_an_unknown_key(tmp_path, issuer):
    """The API server's JWKS over HTTPS (auth.jwks.url): fetched at start with the server's own token and
    the cluster CA, refetched when a token names a key it lacks (the API server rotated its keys)."""
    import http.server
    import ssl
    import threading

    ca = CA(tmp_path / "pki")
    pair = ca.issue("apiserver", hosts=("127.0.0.1",))
    published = {"jwks": issuer.jwks(), "seen": []}

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            published["seen"].append(self.headers.get("Authorization"))
            body = json.dumps(published["jwks"]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Keys)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "token").write_text("pod-token\n")
        url = f"https://127.0.0.1:{server.server_address[1]}/openid/v1/jwks"
        keys = JwksSource(url=url, ca_file=str(ca.cert), token_file=str(tmp_path / "token"), min_refetch_s=0)
        accounts = ServiceAccountTokens(parse_service_accounts("team-a/scorer=diabetes"), keys, ISSUER, "model-server")
        assert accounts.caller(issuer.token("team-a", "scorer"))[0] is not None
        assert published["seen"] == ["Bearer pod-token"]
        rotated = Issuer(kid="key-2")
        published["jwks"] = {"keys": issuer.jwks()["keys"] + rotated.jwks()["keys"]}
        caller, why, _ = accounts.caller(rotated.token("team-a", "scorer"))
        assert (caller is not None, why) == (True, "")
        assert len(published["seen"]) == 2
        # A server whose certificate the CA did not sign is not trusted for keys.
        with pytest.raises(ConfigError, match="could not be fetched"):
            JwksSource(url=url, ca_file=str(CA(tmp_path / "other").cert))
    finally:
        server.shutdown()
