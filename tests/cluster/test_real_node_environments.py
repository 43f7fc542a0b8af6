"""Every model release of every environment on the real node: the image really runs, probes, `helm test`,
NetworkPolicy, rollouts and the HPA really work.

Each release is installed from the chart version its environment pins, with exactly the values
files environments.yaml declares, plus the overrides a registry-less local node needs, stated here:
the image is the one built from this tree and imported into the node (repository and tag; digest
cleared; pull policy Never); a model.sha256 pin is set to the artifact this node serves (the
repository's pins are placeholders until the release pipeline writes real ones, like the image
digests); where the minimum replicas plus a surge pod would not fit in half this 2-core node
(staging's 500m, prod's 2 CPUs per pod), the CPU request is lowered to fit and the limit left
alone; where the environment delivers new versions as a canary (rollout.enabled), the canary is cut to one
judged step of 50 % after 15 s of traffic (the environment's own steps are the chart's rendering, checked in
tests/chart; the same judge with the same credentials runs here). existingClaim mode gets a read-only claim
on a host directory holding the image's own artifact at the declared subPath, as the platform's model store
would.

Clients run as pods in the cluster: from the release's namespace (the chart's own `helm test`),
from a namespace the NetworkPolicy admits (the ingress controller's, where there is a policy), and
from one it does not.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from model_server import tokens
from msops import environments, node, render, values
from msops.pki import CA

from tests.cluster.conftest import (
    REACHABLE,
    ROLLOUT_UPGRADE,
    Kube,
    client_pod,
    judgement_logs,
    read_only_claim,
    rollout_promoted,
    rollout_status,
    run_client,
    start_stream,
    stop_stream,
    wait_client,
    wait_for,
    wait_pods_gone,
)
from tests.kube import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DECL = environments.load()
# The node's CPUs, less what the node's own processes and the test clients need.
NODE_CPU_MILLI = 2000
OUTSIDER = "e2e-outsider"
RELEASES = [(env, release) for env in DECL.environments.values() for release in env.releases]


@dataclass
class Installed:
    env: environments.Environment
    release: environments.Release
    chart: Path
    values: dict  # the chart's defaults with the release's values files over them
    image: str
    artifact: str  # the artifact directory, inside the image, this release serves
    overrides: list[str] = field(default_factory=list)
    service: str = ""
    port: int = 0
    allowed_namespace: str = ""
    secured: bool = False  # TLS and tokens on (staging, prod): clients mount the CA and a token

    @property
    def namespace(self) -> str:
        return self.env.namespace

    @property
    def grpc_target(self) -> str:
        """The release's gRPC port through its Service by DNS name (empty when gRPC is off)."""
        if not self.values["grpc"]["enabled"]:
            return ""
        return f"{self.service}.{self.namespace}.svc.cluster.local:{self.values['grpc']['servicePort']}"

    @property
    def url(self) -> str:
        scheme = "https" if self.values["tls"]["enabled"] else "http"
        return f"{scheme}://{self.service}.{self.namespace}.svc.cluster.local:{self.port}"

    def client(self, name: str, namespace: str, script: str) -> dict:
        """A client pod with what this release asks of its callers: the CA (E2E_CA) and a token (E2E_TOKEN)."""
        if not self.secured:
            return client_pod(name, namespace, self.image, script)
        env = {"E2E_CA": "/etc/e2e/ca/ca.crt", "E2E_TOKEN": "/etc/e2e/token/token"}
        volumes = [
            {"name": "ca", "configMap": {"name": "e2e-ca"}},
            {"name": "token", "secret": {"secretName": "e2e-token"}},  # pragma: allowlist secret (a name)
        ]
        mounts = [{"name": "ca", "mountPath": "/etc/e2e/ca"}, {"name": "token", "mountPath": "/etc/e2e/token"}]
        return client_pod(name, namespace, self.image, script, env=env, volumes=volumes, mounts=mounts)

    def stream_options(self) -> dict[str, object]:
        if not self.secured:
            return {}
        pod = self.client("x", "x", "")["spec"]
        return {"ca_file": "/etc/e2e/ca/ca.crt", "token_file": "/etc/e2e/token/token",
                "volumes": pod["volumes"], "mounts": pod["containers"][0]["volumeMounts"]}  # fmt: skip

    def helm_args(self) -> list[str]:
        args = [self.release.name, str(self.chart), "--namespace", self.namespace]
        for file in self.release.values_files:
            args += ["--values", str(ROOT / file)]
        for item in self.overrides:
            args += ["--set", item]
        return args


def _milli(cpu: str | int | float) -> int:
    text = str(cpu)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def node_overrides(merged: dict, image: str, artifact: Path) -> list[str]:
    """The --set arguments a registry-less, 2-core local node needs, and nothing else."""
    repository, tag = image.rsplit(":", 1)
    sets = [f"image.repository={repository}", f"image.tag={tag}", "image.digest=", "image.pullPolicy=Never"]
    if merged["model"].get("sha256"):
        metadata = json.loads((artifact / "metadata.json").read_text())
        sets.append(f"model.sha256={metadata['model_sha256']}")
    scaling = merged["autoscaling"]
    pods = scaling["minReplicas"] if scaling["enabled"] else merged["replicaCount"]
    # Room for the pods plus one surge pod during a rollout, in half the node.
    fit = NODE_CPU_MILLI // 2 // (pods + 1)
    if _milli(merged["resources"]["requests"]["cpu"]) > fit:
        sets.append(f"resources.requests.cpu={fit}m")
    if merged["rollout"]["enabled"]:
        # One judged step instead of the environment's minutes of them: the test's time, not the node's.
        sets += ["rollout.canaryWeights={50}", "rollout.observeSeconds=15", "rollout.judgement.waitSeconds=60"]
    return sets


def copy_from_image(image: str, path: str, target: Path) -> Path:
    """Copy the directory ``path`` out of the image into ``target``, readable by the pods' UID."""
    container = subprocess.run(["buildah", "from", "--quiet", image], capture_output=True, text=True, check=True)
    name = container.stdout.strip()
    try:
        mount = subprocess.run(["buildah", "mount", name], capture_output=True, text=True, check=True)
        shutil.copytree((Path(mount.stdout.strip()) / path.lstrip("/")).resolve(), target, dirs_exist_ok=True)
    finally:
        subprocess.run(["buildah", "umount", name], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)
    for item in [target, *target.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return target


def restricted_namespace(kube: Kube, name: str) -> None:
    kube.restricted_namespace(name)
    wait_for(
        f"namespace {name}'s default ServiceAccount",
        lambda: kube.kubectl("get", "sa", "default", "-n", name, check=False),
    )


def pods(kube: Kube, installed: Installed) -> list[dict]:
    """The release's serving pods that are not on their way out."""
    selector = f"app.kubernetes.io/instance={installed.release.name},app.kubernetes.io/component!=test"
    return [
        p
        for p in kube.json("get", "pods", "-n", installed.namespace, "-l", selector)["items"]
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") != "Succeeded"
    ]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


@pytest.fixture(scope="module", params=RELEASES, ids=lambda item: f"{item[0].name}-{item[1].model}")
def installed(
    request: pytest.FixtureRequest, real_kube: Kube, node_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """One release at a time on the node (it has 2 CPUs): install from the pinned chart, test, uninstall."""
    env, release = request.param
    with render.chart_dir(DECL, env) as chart:
        defaults = yaml.safe_load((chart / "values.yaml").read_text())
        merged = values.coalesce(defaults, values.release_values(release))
        model = merged["model"]
        in_image = model["imageDirectory"] if model["mode"] == "image" else f"/models/{release.model}"
        context = Installed(env, release, chart, merged, node_image, in_image)
        restricted_namespace(real_kube, env.namespace)
        store = tmp_path_factory.mktemp(f"model-store-{env.name}-{release.model}")
        store.chmod(0o755)
        local = copy_from_image(node_image, in_image, store / (model.get("subPath") or "artifact"))
        if model["mode"] == "existingClaim":
            pv = f"{env.namespace}-{release.model}-{model['existingClaim']}"
            read_only_claim(real_kube, env.namespace, model["existingClaim"], pv, store)
        context.overrides = node_overrides(merged, node_image, local)
        policy = merged["networkPolicy"]
        context.allowed_namespace = env.namespace
        if policy["enabled"]:
            context.allowed_namespace = (
                policy.get("ingressControllerNamespace") or (policy.get("allowedNamespaces") or [""])[0]
            )
            assert context.allowed_namespace, f"{env.name}: the policy names no namespace a client could call from"
        for namespace in {context.allowed_namespace, OUTSIDER}:
            restricted_namespace(real_kube, namespace)
        context.secured = platform_objects(
            real_kube, context, tmp_path_factory.mktemp(f"pki-{env.name}-{release.model}")
        )
        real_kube.helm("install", *context.helm_args(), "--wait", "--timeout", "5m")
        service = real_kube.json(
            "get", "service", "-n", env.namespace, "-l", f"app.kubernetes.io/instance={release.name}"
        )
        context.service = service["items"][0]["metadata"]["name"]
        context.port = service["items"][0]["spec"]["ports"][0]["port"]
        try:
            yield context
        finally:
            real_kube.helm("uninstall", release.name, "-n", env.namespace, "--wait", "--timeout", "2m", check=False)
            if model["mode"] == "existingClaim":
                claim = model["existingClaim"]
                real_kube.kubectl("delete", "pvc", claim, "-n", env.namespace, "--timeout=60s", check=False)
                real_kube.kubectl(
                    "delete", "pv", f"{env.namespace}-{release.model}-{claim}", "--timeout=60s", check=False
                )


def platform_objects(kube: Kube, installed: Installed, scratch: Path) -> bool:
    """What the platform provides a secured environment (staging, prod), made the way it would be: the server's
    certificate from a CA of the test's own, the callers' tokens, the API server's keys; and what each caller
    holds (the CA, a token) in the namespace clients call from. False when the release asks for none."""
    merged = installed.values
    tls, auth = merged["tls"], merged["auth"]
    if not (tls["enabled"] or auth["existingSecret"]):
        return False
    assert tls["enabled"], "staging and prod turn TLS and tokens on together"
    assert auth["existingSecret"], "staging and prod turn TLS and tokens on together"
    ca = CA(scratch)
    service = f"{installed.release.name}"  # the release's Service is <release> when its name holds the chart's
    # With rollout.enabled the analysis Job calls the canary and stable Services (<fullname>-canary, -stable)
    # by their short names: the platform's certificate names them too (environments/README.md).
    roles = ["", "-canary", "-stable"] if merged["rollout"]["enabled"] else [""]
    hosts = [
        f"{service}{role}{suffix}"
        for role in roles
        for suffix in (
            "",
            f".{installed.namespace}",
            f".{installed.namespace}.svc",
            f".{installed.namespace}.svc.cluster.local",
        )
    ]
    pair = ca.issue("server", hosts=tuple(hosts))
    token = tokens.new_token()
    served = {"tls.crt": pair.cert.read_text(), "tls.key": pair.key.read_text(), "ca.crt": ca.cert.read_text()}
    caller = {auth["key"]: tokens.line_for("e2e-client", token, "*") + "\n"}
    objects = [
        security_secret(tls["existingSecret"], installed.namespace, "kubernetes.io/tls", served),
        security_secret(auth["existingSecret"], installed.namespace, "Opaque", caller),
    ]  # fmt: skip
    # What every caller holds, in each namespace clients call from (the outsider's too: its refusal must be
    # the NetworkPolicy's, not a missing credential's).
    for namespace in (installed.allowed_namespace, OUTSIDER):
        objects += [
            {"apiVersion": "v1", "kind": "ConfigMap", "data": {"ca.crt": ca.cert.read_text()},
             "metadata": {"name": "e2e-ca", "namespace": namespace}},
            security_secret("e2e-token", namespace, "Opaque", {"token": token}),
        ]  # fmt: skip
    if auth["jwks"]["configMap"]:
        jwks = kube.kubectl("get", "--raw", "/openid/v1/jwks")
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": auth["jwks"]["configMap"], "namespace": installed.namespace},
                        "data": {auth["jwks"]["key"]: jwks}})  # fmt: skip
    kube.apply(objects)
    return True


def security_secret(name: str, namespace: str, kind: str, data: dict[str, str]) -> dict:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": name, "namespace": namespace},
            "data": encoded}  # fmt: skip


def test_pods_run_the_image_and_pass_the_real_readiness_probe(real_kube: Kube, installed: Installed):
    merged = installed.values
    expected = merged["autoscaling"]["minReplicas"] if merged["autoscaling"]["enabled"] else merged["replicaCount"]
    running = wait_for(
        f"{expected} Ready pods",
        lambda: (found := pods(real_kube, installed)) and len(found) == expected and all(map(ready, found)) and found,
        timeout=180,
    )
    for pod in running:
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"], status
        assert "running" in status["state"], status
        assert status["restartCount"] == 0, f"{pod['metadata']['name']} restarted: {status.get('lastState')}"
        assert pod["spec"]["containers"][0]["image"] == installed.image


def test_helm_test_passes_under_the_environment_network_policy(real_kube: Kube, installed: Installed):
    """The chart's own test Pod calls the Service from the release's namespace, through its NetworkPolicy.

    Before the chart admitted its test Pod, staging's and prod's policies (ingress controller and
    monitoring only) refused it: Argo CD's PostSync hook failed every sync, Flux remediated every upgrade."""
    done = real_kube.helm("test", installed.release.name, "-n", installed.namespace, "--timeout", "3m", check=False)
    if done.returncode != 0:
        # A failed test Pod stays (hook-delete-policy hook-succeeded): its log says what it saw.
        selector = f"app.kubernetes.io/instance={installed.release.name},app.kubernetes.io/component=test"
        logs = real_kube.kubectl("logs", "-n", installed.namespace, "-l", selector, "--tail=20", check=False)
        pytest.fail(f"helm test failed:\n{done.stdout[-1500:]}\n{done.stderr}\ntest pod log:\n{logs}")
    assert re.search(r"^Phase:\s+Succeeded$", done.stdout, re.M), done.stdout


def _smoke_script(installed: Installed) -> str:
    """The image's smoke check against the Service by DNS name, compared with the artifact the release serves;
    the gRPC port too, answering the same rows (over the same TLS and token where the release asks for them)."""
    argv = ["--url", installed.url, "--expect-from", installed.artifact]
    if installed.grpc_target:
        argv += ["--grpc", installed.grpc_target]
    if installed.secured:
        argv += ["--ca-file", "/etc/e2e/ca/ca.crt", "--token-file", "/etc/e2e/token/token"]
    run = f"wait_reachable({installed.url!r})\nsys.exit(smoke.main({argv!r}))\n"
    return REACHABLE + "import sys\nfrom model_server import smoke\n" + run


def test_a_prediction_through_the_service_by_dns_name_matches_the_model(real_kube: Kube, installed: Installed):
    """REST (V1, V2) and gRPC, through the Service by DNS name from a namespace the policy admits."""
    pod = installed.client("predict", installed.allowed_namespace, _smoke_script(installed))
    phase, logs = run_client(real_kube, pod)
    assert phase == "Succeeded", logs
    verdict = logs.strip().splitlines()[-1]
    print(verdict)
    assert verdict.startswith("ok: "), logs
    assert installed.grpc_target, "every environment serves gRPC (the chart's default)"
    assert f"gRPC {installed.grpc_target} answered the same" in verdict, logs


PROBE = """
import errno, json, os, socket, ssl, time, urllib.error, urllib.request
# 15 s of attempts: one answer is a leak (a refusal can never be a late policy sync: new pods are refused
# until the controller admits them, never admitted until it refuses them).
def kind(exc):
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return "refused"
    if getattr(reason, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "other: " + type(reason).__name__ + ": " + str(reason)[:100]
reached, outcomes, deadline = False, [], time.monotonic() + 15
while time.monotonic() < deadline and not reached:
    try:
        tls = ssl.create_default_context(cafile=os.environ["E2E_CA"]) if os.environ.get("E2E_CA") else None
        with urllib.request.urlopen({url!r} + "/v2/health/ready", timeout=3, context=tls) as response:
            reached = True
            outcomes.append(response.status)
    except Exception as exc:
        outcomes.append(kind(exc))
        time.sleep(1)
print(json.dumps({{"reached": reached, "outcomes": outcomes}}))
"""


def _probe(kube: Kube, installed: Installed, name: str, namespace: str) -> dict:
    phase, logs = run_client(kube, installed.client(name, namespace, PROBE.format(url=installed.url)))
    assert phase == "Succeeded", logs
    return json.loads(logs.strip().splitlines()[-1])


def test_a_namespace_the_policy_does_not_allow_is_refused(real_kube: Kube, installed: Installed):
    """The outsider's every attempt fails the way a dropped packet fails (a timeout; or refused/unreachable
    where the enforcer rejects), never with an answer; the same client from a namespace the policy admits
    is answered (the positive control: the refusal is the policy's, not a broken client or Service)."""
    admitted = _probe(real_kube, installed, "insider", installed.allowed_namespace)
    assert admitted["reached"], f"{installed.allowed_namespace} could not reach the pods: {admitted}"
    assert admitted["outcomes"][-1] == 200, admitted
    outsider = _probe(real_kube, installed, "outsider", OUTSIDER)
    if installed.values["networkPolicy"]["enabled"]:
        assert not outsider["reached"], f"{OUTSIDER} reached the pods through the NetworkPolicy: {outsider}"
        assert len(outsider["outcomes"]) >= 3, outsider
        assert set(outsider["outcomes"]) <= {"timeout", "refused", "unreachable"}, outsider
    else:
        assert outsider["reached"], "no NetworkPolicy here: any namespace reaches the pods"


HAMMER = """
import json, threading, time, urllib.request
url, seconds, workers, pause = {url!r} + "/v2/health/ready", {seconds}, {workers}, {pause}
counts, errors, lock = {{"ok": 0, "failed": 0}}, [], threading.Lock()
wait_reachable({url!r})
print("hammering", flush=True)
started = time.monotonic()
def hammer():
    deadline = started + seconds
    while time.monotonic() < deadline:
        time.sleep(pause)
        try:
            request = urllib.request.Request(url, headers={{"Connection": "close"}})
            with urllib.request.urlopen(request, timeout=10, context=TLS if url.startswith("https") else None) as r:
                r.read()
                good = r.status == 200
        except Exception as exc:
            good = False
            with lock:
                errors.append(f"{{time.monotonic() - started:.1f}} s: {{type(exc).__name__}}: {{str(exc)[:120]}}")
        with lock:
            counts["ok" if good else "failed"] += 1
threads = [threading.Thread(target=hammer) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({{**counts, "errors": errors[:30]}}))
"""


def _hammer(kube: Kube, installed: Installed, name: str, seconds: int, workers: int, pause: float = 0) -> dict:
    """Start a client pod sending requests on a new connection each (``pause`` s apart per worker)."""
    script = REACHABLE + HAMMER.format(url=installed.url, seconds=seconds, workers=workers, pause=pause)
    pod = installed.client(name, installed.allowed_namespace, script)
    kube.kubectl("delete", "pod", name, "-n", installed.allowed_namespace, "--ignore-not-found", "--wait=true")
    kube.apply(pod)
    wait_for(
        f"{name} sending requests",
        lambda: "hammering" in kube.kubectl("logs", name, "-n", installed.allowed_namespace, check=False),
        timeout=90,
    )
    return pod


def _result(kube: Kube, pod: dict, timeout: float) -> dict:
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    phase = wait_client(kube, name, namespace, timeout)
    logs = kube.kubectl("logs", name, "-n", namespace)
    kube.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    assert phase == "Succeeded", logs
    return json.loads(logs.strip().splitlines()[-1])


class Timeline(threading.Thread):
    """What the Service's endpoints and the bridge's neighbour table were, second by second: a failure's context."""

    def __init__(self, kube: Kube, installed: Installed) -> None:
        super().__init__(daemon=True)
        self.kube, self.installed, self.lines, self.done = kube, installed, [], threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        last = None
        selector = f"kubernetes.io/service-name={self.installed.service}"
        while not self.done.wait(0.5):
            slices = self.kube.json("get", "endpointslices", "-n", self.installed.namespace, "-l", selector)
            endpoints = sorted(
                f"{e['addresses'][0]}:{'R' if e['conditions'].get('ready') else '-'}"
                f"{'T' if e['conditions'].get('terminating') else ''}"
                for item in slices["items"]
                for e in item.get("endpoints") or []
            )
            neighbours = subprocess.run(["ip", "neigh", "show", "dev", node.BRIDGE], capture_output=True, text=True)
            state = f"endpoints {' '.join(endpoints)} | neigh {' '.join(neighbours.stdout.split())}"
            if state != last:
                self.lines.append(f"{time.monotonic() - self.started:6.1f} s {state}")
                last = state


def test_upgrade_rolls_every_pod_with_zero_failed_predictions(real_kube: Kube, installed: Installed):
    """preStop sleep, endpoint removal and SIGTERM draining, for real: a client streams real predictions on
    keep-alive connections through the Service for the whole rollout, and not one of them fails. Where the
    environment delivers by canary (staging, prod), the new version is judged on that traffic by the analysis
    Job, over the environment's TLS with its ServiceAccount token, and promoted."""
    name, namespace = installed.release.name, installed.namespace
    canary = installed.values["rollout"]["enabled"]
    stable = rollout_status(real_kube, namespace, name).get("stableRS") if canary else None
    before = {p["metadata"]["name"] for p in pods(real_kube, installed)}
    # A replica-weighted canary (no traffic router) gets requests only on connections opened after its pods
    # are in the Service: this client's four keep-alive connections would stay on the stable pods and the
    # judgement would find "too little traffic" (it did). Where a canary is judged, the client reconnects
    # every 20 requests, like many callers; an ingress controller spreads requests over pods in any case.
    client = start_stream(
        real_kube,
        "rollout-client",
        installed.allowed_namespace,
        installed.image,
        installed.url,
        connections=4,
        **({"reconnect_every": 20} if canary else {}),
        **installed.stream_options(),
    )
    timeline = Timeline(real_kube, installed)
    timeline.start()
    try:
        real_kube.helm("upgrade", *installed.helm_args(), *ROLLOUT_UPGRADE)
        if canary:
            # helm's wait saw only the Deployment (0 replicas); the Rollout runs the canary step and its judgement.
            def promoted() -> dict | None:
                status = rollout_status(real_kube, namespace, name)
                if status.get("abort"):
                    judged = judgement_logs(real_kube, namespace, name)
                    pytest.fail(f"the canary was aborted: {status.get('message')}\n{judged[-1] if judged else ''}")
                return rollout_promoted(status, stable)

            settled = wait_for(
                "the canary judged and promoted",
                promoted,
                timeout=300,
                detail=lambda: real_kube.kubectl("describe", "rollout", "-n", namespace, check=False)[-3000:],
            )
            judgement = judgement_logs(real_kube, namespace, name)[-1]
            print(f"judgement of the new version:\n{judgement}")
            assert "verdict: the canary passed" in judgement, judgement
            # The pods of the promoted revision (the old ones may not be marked for deletion yet).
            hash_label = "rollouts-pod-template-hash"
            after = {p["metadata"]["name"] for p in pods(real_kube, installed)
                     if p["metadata"]["labels"].get(hash_label) == settled["stableRS"]}  # fmt: skip
        else:
            after = {p["metadata"]["name"] for p in pods(real_kube, installed)}  # helm waited for the new pods
        wait_pods_gone(real_kube, namespace, before)
        time.sleep(3)  # a moment of traffic on the new pods alone, then the client's report
    finally:
        timeline.done.set()  # (it reads the cluster: never left running past the test)
    result = stop_stream(real_kube, client)
    print(f"rollout client: {json.dumps({k: v for k, v in result.items() if k != 'failures'})}")
    assert before, "pods before the upgrade"
    assert after, "pods after the upgrade"
    assert not before & after, "every pod was replaced"
    context = "\n".join(timeline.lines)
    assert result["failed"] == 0, f"{result}\ntimeline (from the start of the upgrade):\n{context}"
    assert result["ok"] > 500, result
    # Keep-alive for real: far fewer connections than requests, and the draining pods closed theirs.
    assert 0 < result["reconnects"] < result["ok"] / 10, result


def test_hpa_scales_up_on_real_cpu_and_back_down(real_kube: Kube, installed: Installed):
    scaling = installed.values["autoscaling"]
    if not scaling["enabled"]:
        pytest.skip(f"{installed.env.name} does not autoscale")
    if installed.release != installed.env.releases[0]:
        # Autoscaling is the environment's (its values.yaml), the same for every model: proved on the first.
        pytest.skip(f"{installed.env.name}'s autoscaling is proved on {installed.env.releases[0].model}")
    namespace = installed.namespace
    # The scale-down stabilisation window (prod's 300 s) shortened so the test sees the way back down.
    real_kube.helm(
        "upgrade",
        *installed.helm_args(),
        "--set",
        "autoscaling.behavior.scaleDown.stabilizationWindowSeconds=15",
        "--wait",
        "--timeout",
        "4m",
    )
    hpa_name = real_kube.json(
        "get", "hpa", "-n", namespace, "-l", f"app.kubernetes.io/instance={installed.release.name}"
    )["items"][0]["metadata"]["name"]

    def hpa() -> dict:
        return real_kube.json("get", "hpa", hpa_name, "-n", namespace)

    wait_for(
        "the HPA to read real CPU from metrics-server",
        lambda: (
            (hpa()["status"].get("currentMetrics") or [{}])[0]
            .get("resource", {})
            .get("current", {})
            .get("averageUtilization")
            is not None
        ),
        timeout=120,
    )
    load = _hammer(real_kube, installed, "load", seconds=150, workers=8)
    peak = wait_for(
        "the HPA to scale up under load",
        lambda: (replicas := hpa()["status"].get("desiredReplicas", 0)) > scaling["minReplicas"] and replicas,
        timeout=150,
        detail=lambda: json.dumps(hpa()["status"]),
    )
    _result(real_kube, load, timeout=240)
    wait_for(
        "the HPA to scale back down once the load stopped",
        lambda: (
            hpa()["status"].get("desiredReplicas") == scaling["minReplicas"]
            and hpa()["status"].get("currentReplicas") == scaling["minReplicas"]
        ),
        timeout=240,
        detail=lambda: json.dumps(hpa()["status"]),
    )
    assert peak > scaling["minReplicas"]


GRPC_CHECKS = re.compile(
    r'^model_server_requests_total\{[^}]*route="/grpc\.health\.v1\.Health/Check"[^}]*\} (\S+)$', re.M
)


def _grpc_checks_served(kube: Kube, installed: Installed, pod: str) -> float:
    """How many grpc.health.v1 Check calls the pod's server has answered (its own request counter)."""
    port = installed.values["healthPort"] or installed.values["containerPort"]
    script = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    text = kube.kubectl("exec", pod, "-n", installed.namespace, "-c", "server", "--", "python3", "-c", script)
    return sum(float(value) for value in GRPC_CHECKS.findall(text))


def test_kubelets_grpc_probes_keep_the_pods_ready(real_kube: Kube, installed: Installed):
    """grpc.probes: kubelet's own gRPC probes (grpc.health.v1, services liveness and readiness) in place of the
    HTTP GETs; the new pods become Ready on them, stay up, and the server counts kubelet's calls as they come."""
    if installed.values["tls"]["enabled"]:
        pytest.skip("kubelet's gRPC probes speak no TLS: the chart refuses grpc.probes with tls.enabled (tests/chart)")
    if installed.release != installed.env.releases[0]:
        pytest.skip(
            f"the probes are the chart's, the same for every model: proved on {installed.env.releases[0].model}"
        )
    before = {p["metadata"]["name"] for p in pods(real_kube, installed)}
    real_kube.helm("upgrade", *installed.helm_args(), "--set", "grpc.probes=true", "--wait", "--timeout", "4m")
    wait_pods_gone(real_kube, installed.namespace, before)
    running = [p for p in pods(real_kube, installed) if ready(p)]
    assert running, "no Ready pod after the upgrade to gRPC probes"
    readiness = installed.values["probes"]["readiness"]
    for pod in running:
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "server")
        assert container["readinessProbe"]["grpc"]["service"] == "readiness", container["readinessProbe"]
        assert container["livenessProbe"]["grpc"]["service"] == "liveness", container["livenessProbe"]
        assert "httpGet" not in container["readinessProbe"]
        status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "server")
        assert status["ready"], status
        assert status["restartCount"] == 0, status
        name = pod["metadata"]["name"]
        first = _grpc_checks_served(real_kube, installed, name)
        time.sleep(2 * readiness["periodSeconds"] + 1)
        later = _grpc_checks_served(real_kube, installed, name)
        print(f"{name}: {first:.0f} then {later:.0f} gRPC health checks served")
        assert first > 0, "kubelet's gRPC probes did not reach the server"
        assert later > first, "kubelet's gRPC probes stopped"
        assert ready(real_kube.json("get", "pod", name, "-n", installed.namespace)), f"{name} left Ready"
