"""Data security on the real node: a release serving HTTPS only, with callers by token and by Kubernetes
ServiceAccount, then mutual TLS; every refusal beside the credential that is let through, and certificate
and token rotations through Secret updates while a keep-alive client keeps predicting.

The objects a platform provides (the certificate's Secret, the tokens Secret, the API server's keys in a
ConfigMap) are made here the way it would: a CA of the test's own signs the server's certificate for the
Service's names; `kubectl get --raw /openid/v1/jwks` gives the keys; scripts/token's format for the lines.
Clients run as pods in a namespace of their own, each with the ServiceAccount whose token it presents.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from model_server import tokens
from msops.pki import CA, Pair

from tests.cluster.conftest import Kube, client_pod, run_client, start_stream, stop_stream, wait_for
from tests.kube import CHART

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NAMESPACE = "e2e-secure"
CALLERS = "e2e-callers"
RELEASE = "secure"
SERVICE = f"{RELEASE}-model-server"
URL = f"https://{SERVICE}.{NAMESPACE}.svc.cluster.local"
MODEL = "diabetes"  # the image's default artifact
V1 = json.dumps({"instances": [[0.01] * 10]})


@dataclass
class Secured:
    kube: Kube
    image: str
    ca: CA
    tokens: dict[str, str]
    lines: dict[str, str]
    server: Pair
    chart_args: list[str] = field(default_factory=list)


def secret(name: str, namespace: str, data: dict[str, str], kind: str = "Opaque") -> dict:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": name, "namespace": namespace},
            "data": encoded}  # fmt: skip


def secret_volume(volume: str, name: str) -> dict:
    """A pod volume of the Secret ``name``."""
    return {"name": volume, "secret": {"secretName": name}}


def config_map(name: str, namespace: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}


def server_secret(pair: Pair, ca: CA) -> dict:
    return secret(
        "model-server-tls",
        NAMESPACE,
        {"tls.crt": pair.cert.read_text(), "tls.key": pair.key.read_text(), "ca.crt": ca.cert.read_text()},
        "kubernetes.io/tls",
    )


def callers_secret(lines: list[str]) -> dict:
    return secret("model-server-callers", NAMESPACE, {"tokens": "\n".join(lines) + "\n"})


@pytest.fixture(scope="module")
def secured(real_kube: Kube, node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    ca = CA(tmp_path_factory.mktemp("secure-pki"))
    names = (
        SERVICE,
        f"{SERVICE}.{NAMESPACE}",
        f"{SERVICE}.{NAMESPACE}.svc",
        f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
    )
    server = ca.issue("server", hosts=names)
    made = {name: tokens.new_token() for name in ("scorer", "other", "prometheus", "stream-a", "stream-b")}
    scopes = {"scorer": MODEL, "other": "penguins", "prometheus": "metrics", "stream-a": MODEL, "stream-b": MODEL}
    lines = {name: tokens.line_for(name, made[name], scopes[name]) for name in made}
    for namespace in (NAMESPACE, CALLERS):
        real_kube.restricted_namespace(namespace)
    jwks = real_kube.kubectl("get", "--raw", "/openid/v1/jwks")
    assert json.loads(jwks)["keys"], jwks
    real_kube.apply(
        [
            server_secret(server, ca),
            callers_secret([lines[name] for name in ("scorer", "other", "prometheus", "stream-a")]),
            config_map("kube-jwks", NAMESPACE, {"jwks.json": jwks}),
            # What the callers' pods mount: the CA, their tokens, and their own ServiceAccounts.
            config_map("e2e-ca", CALLERS, {"ca.crt": ca.cert.read_text()}),
            secret("e2e-tokens", CALLERS, {name: made[name] for name in ("scorer", "other", "prometheus")}),
            secret("stream-token", CALLERS, {"token": made["stream-a"]}),
            *({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": CALLERS},
               "automountServiceAccountToken": False} for n in ("scorer", "stranger")),
        ]
    )  # fmt: skip
    repository, tag = node_image.rsplit(":", 1)
    args = [
        RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.digest=",
        "--set", "image.pullPolicy=Never", "--set", "resources.requests.cpu=250m", "--set", "service.port=443",
        "--set", "tls.enabled=true", "--set", "tls.existingSecret=model-server-tls",
        "--set", "auth.existingSecret=model-server-callers", "--set", "auth.jwks.configMap=kube-jwks",
        "--set", f"auth.serviceAccounts[0].namespace={CALLERS}", "--set", "auth.serviceAccounts[0].name=scorer",
        "--set", f"auth.serviceAccounts[0].scopes[0]={MODEL}",
    ]  # fmt: skip
    real_kube.helm("install", *args, "--wait", "--timeout", "4m")
    try:
        yield Secured(real_kube, node_image, ca, made, lines, server, args)
    finally:
        real_kube.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m", check=False)


# ---- the client pods' programs ----------------------------------------------------------------------------

CALLS = """
import http.client, json, socket, ssl, urllib.error, urllib.request
CA = "/etc/e2e/ca/ca.crt"
def token(name):
    with open(name) as handle:
        return handle.read().strip()
def call(path, credential=None, port=443, body=None, raw=None):
    headers = {"Content-Type": "application/json"}
    if credential or raw:
        headers["Authorization"] = "Bearer " + (raw or token(credential))
    url = "https://{service}:" + str(port) + path
    request = urllib.request.Request(url, data=body and body.encode(), headers=headers)
    tls = ssl.create_default_context(cafile=CA)
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as response:
            response.read()
            return [response.status, ""]
    except urllib.error.HTTPError as exc:
        return [exc.code, exc.headers.get("WWW-Authenticate", "")]
    except Exception as exc:
        return [type(exc).__name__, str(exc)[:120]]
def plaintext(port=443):
    try:
        connection = http.client.HTTPConnection("{service}", port, timeout=10)
        connection.request("GET", "/v2/health/live")
        return connection.getresponse().status
    except Exception as exc:
        return type(exc).__name__
"""


def calls_script(body: str) -> str:
    return CALLS.replace("{service}", f"{SERVICE}.{NAMESPACE}.svc.cluster.local") + body


CA_MOUNT = ({"name": "ca", "configMap": {"name": "e2e-ca"}}, {"name": "ca", "mountPath": "/etc/e2e/ca"})
TOKENS_MOUNT = (
    secret_volume("tokens", "e2e-tokens"),
    {"name": "tokens", "mountPath": "/etc/e2e/tokens"},
)


def projected(audience: str) -> tuple[dict, dict]:
    source = {"serviceAccountToken": {"path": "token", "audience": audience, "expirationSeconds": 600}}
    return {"name": "sa", "projected": {"sources": [source]}}, {"name": "sa", "mountPath": "/var/run/e2e/sa"}


def run(secured: Secured, name: str, script: str, mounts: list[tuple[dict, dict]], account: str | None = None) -> dict:
    pod = client_pod(
        name, CALLERS, secured.image, calls_script(script),
        volumes=[volume for volume, _ in mounts], mounts=[mount for _, mount in mounts], service_account=account,
    )  # fmt: skip
    phase, logs = run_client(secured.kube, pod)
    assert phase == "Succeeded", logs
    return json.loads(logs.strip().splitlines()[-1])


# ---- the proofs -------------------------------------------------------------------------------------------


def test_the_helm_test_pod_passes_with_its_own_service_account_over_tls(secured: Secured):
    done = secured.kube.helm("test", RELEASE, "-n", NAMESPACE, "--timeout", "3m", check=False)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr


def test_tokens_no_token_401_wrong_scope_403_right_token_200_and_plaintext_fails(secured: Secured):
    seen = run(
        secured,
        "by-token",
        f"""
predict = "/v1/models/{MODEL}:predict"
print(json.dumps({{
    "no token": call(predict, body={V1!r}),
    "unknown token": call(predict, raw="mst_not-a-token", body={V1!r}),
    "other scope": call(predict, "/etc/e2e/tokens/other", body={V1!r}),
    "right token": call(predict, "/etc/e2e/tokens/scorer", body={V1!r}),
    "metadata, no token": call("/v2/models/{MODEL}"),
    "metadata, right token": call("/v2/models/{MODEL}", "/etc/e2e/tokens/scorer"),
    "health, no token": call("/v2/health/ready"),
    "plaintext to the TLS port": plaintext(),
    "metrics on the health port, no token": call("/metrics", port=8082),
    "metrics on the health port, a model's token": call("/metrics", "/etc/e2e/tokens/scorer", port=8082),
    "metrics on the health port, the metrics token": call("/metrics", "/etc/e2e/tokens/prometheus", port=8082),
}}))
""",
        [CA_MOUNT, TOKENS_MOUNT],
    )
    print(json.dumps(seen, indent=1))
    assert seen["no token"] == [401, 'Bearer realm="model-server"']
    assert seen["unknown token"] == [401, 'Bearer realm="model-server", error="invalid_token"']
    assert seen["other scope"][0] == 403
    assert seen["right token"] == [200, ""]
    assert seen["metadata, no token"][0] == 401
    assert seen["metadata, right token"] == [200, ""]
    assert seen["health, no token"] == [200, ""]
    assert seen["plaintext to the TLS port"] in ("RemoteDisconnected", "ConnectionResetError", "BadStatusLine")
    assert seen["metrics on the health port, no token"][0] == 401
    assert seen["metrics on the health port, a model's token"][0] == 403
    assert seen["metrics on the health port, the metrics token"] == [200, ""]


@pytest.mark.parametrize(
    ("account", "audience", "expected"),
    [("scorer", "model-server", 200), ("stranger", "model-server", 403), ("scorer", "kubernetes", 401)],
    ids=["allowed account", "another account", "wrong audience"],
)
def test_a_pod_calls_with_its_projected_service_account_token(secured: Secured, account, audience, expected):
    seen = run(
        secured,
        f"by-account-{account}-{audience}",
        f'print(json.dumps(call("/v1/models/{MODEL}:predict", "/var/run/e2e/sa/token", body={V1!r})))\n',
        [CA_MOUNT, projected(audience)],
        account=account,
    )
    assert seen[0] == expected, seen


SERIAL = """
import time
from cryptography import x509
wanted, deadline, last = int({serial!r}), time.monotonic() + 180, None
while time.monotonic() < deadline:
    with socket.create_connection(("{service}", 443), timeout=5) as raw:
        with ssl.create_default_context(cafile=CA).wrap_socket(raw, server_hostname="{service}") as tls:
            last = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
    if last == wanted:
        break
    time.sleep(1)
print(json.dumps({{"served": str(last)}}))
"""


def caller_logged(secured: Secured, caller: str) -> bool:
    """Whether a serving pod's access log (the audit trail) names ``caller``."""
    logs = secured.kube.kubectl(
        "logs", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component!=test",
        "--tail=400", "--prefix=false", check=False,
    )  # fmt: skip
    return f'"caller":"{caller}"' in logs


def test_certificate_and_token_rotate_through_secret_updates_under_keep_alive_load(secured: Secured):
    kube = secured.kube
    stream = start_stream(
        kube, "rotation-client", CALLERS, secured.image, URL, connections=3,
        ca_file="/etc/e2e/ca/ca.crt", token_file="/etc/e2e/token/token",  # noqa: S106 - a path
        volumes=[CA_MOUNT[0], secret_volume("token", "stream-token")],
        mounts=[CA_MOUNT[1], {"name": "token", "mountPath": "/etc/e2e/token"}],
    )  # fmt: skip
    # The certificate: cert-manager (or the platform) renews it into the Secret; kubelet swaps the files.
    names = (
        SERVICE,
        f"{SERVICE}.{NAMESPACE}",
        f"{SERVICE}.{NAMESPACE}.svc",
        f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
    )
    renewed = secured.ca.issue("server", hosts=names)
    started = time.monotonic()
    kube.apply(server_secret(renewed, secured.ca))
    script = SERIAL.replace("{serial!r}", repr(str(renewed.serial))).replace("{{", "{").replace("}}", "}")
    seen = run(secured, "serial", script.replace("{service}", f"{SERVICE}.{NAMESPACE}.svc.cluster.local"), [CA_MOUNT])
    certificate_s = time.monotonic() - started
    assert seen["served"] == str(renewed.serial), (seen, renewed.serial, secured.server.serial)
    # The token: add the new line, move the caller to it, remove the old line.
    lines = secured.lines
    kube.apply(callers_secret([lines[n] for n in ("scorer", "other", "prometheus", "stream-a", "stream-b")]))
    kube.apply(secret("stream-tokens-ab", CALLERS, {"a": secured.tokens["stream-a"], "b": secured.tokens["stream-b"]}))

    def answer_with(which: str) -> object:
        """The status a prediction with stream token ``which`` (a or b) gets, from a pod of its own."""
        script = f'print(json.dumps(call("/v1/models/{MODEL}:predict", "/etc/e2e/stream/{which}", body={V1!r})))\n'
        tokens_mount = (secret_volume("stream", "stream-tokens-ab"), {"name": "stream", "mountPath": "/etc/e2e/stream"})
        return run(secured, f"token-{which}", script, [CA_MOUNT, tokens_mount])[0]

    wait_for("the new token accepted", lambda: answer_with("b") == 200, timeout=180, interval=5)
    kube.apply(secret("stream-token", CALLERS, {"token": secured.tokens["stream-b"]}))
    wait_for(
        "the client to call with the new token", lambda: caller_logged(secured, "stream-b"), timeout=180, interval=3
    )
    kube.apply(callers_secret([lines[n] for n in ("scorer", "other", "prometheus", "stream-b")]))
    wait_for("the old token refused", lambda: answer_with("a") == 401, timeout=180, interval=5)
    time.sleep(5)
    result = stop_stream(kube, stream)
    print(f"rotation client: {json.dumps({k: v for k, v in result.items() if k != 'failures'})}; "
          f"certificate served after {certificate_s:.0f} s")  # fmt: skip
    assert result["failed"] == 0, result
    assert result["ok"] > 200, result
    pods = kube.json("get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert all(c["restartCount"] == 0 for p in pods for c in p["status"].get("containerStatuses", [])), "no restart"


def test_mutual_tls_refuses_a_client_without_a_certificate_in_the_handshake(secured: Secured):
    kube = secured.kube
    client = secured.ca.issue("scorer.e2e-callers", client=True)
    kube.apply(
        [
            config_map("e2e-client-ca", NAMESPACE, {"ca.crt": secured.ca.cert.read_text()}),
            secret("e2e-client-cert", CALLERS, {"tls.crt": client.cert.read_text(), "tls.key": client.key.read_text()}),
        ]
    )
    mtls = ["--set", "tls.clientCA.configMap=e2e-client-ca", "--set", "tests.enabled=false"]
    kube.helm("upgrade", *secured.chart_args, *mtls, "--wait", "--timeout", "4m")
    cert_mount = (
        secret_volume("cert", "e2e-client-cert"),
        {"name": "cert", "mountPath": "/etc/e2e/cert"},
    )
    seen = run(
        secured,
        "mutual-tls",
        f"""
def with_certificate():
    tls = ssl.create_default_context(cafile=CA)
    tls.load_cert_chain("/etc/e2e/cert/tls.crt", "/etc/e2e/cert/tls.key")
    headers = {{"Content-Type": "application/json", "Authorization": "Bearer " + token("/etc/e2e/tokens/scorer")}}
    request = urllib.request.Request("https://{SERVICE}.{NAMESPACE}.svc.cluster.local/v1/models/{MODEL}:predict",
                                     data={V1!r}.encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10, context=tls) as response:
        return response.status
print(json.dumps({{
    "without a client certificate": call("/v1/models/{MODEL}:predict", "/etc/e2e/tokens/scorer", body={V1!r}),
    "with one the CA signed": with_certificate(),
    "the health port without one": call("/v2/health/ready", port=8082),
}}))
""",
        [CA_MOUNT, TOKENS_MOUNT, cert_mount],
    )
    print(json.dumps(seen))
    assert seen["without a client certificate"][0] in ("SSLError", "URLError", "ConnectionResetError"), seen
    assert seen["with one the CA signed"] == 200
    assert seen["the health port without one"] == [200, ""]
