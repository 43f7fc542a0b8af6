"""One real control plane (scripts/cluster up --flux) for the whole e2e session, in a private state dir.

kwok runs no containers: pods are scheduled and marked Running/Ready by kwok. What these tests prove
is what the API server accepts, admits under Pod Security and schedules, and what Helm and Flux do
with it; that the container serves is the image tests' job (tests/image).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.kube import ROOT, tool

CLUSTER = ROOT / "scripts" / "cluster"


class Kube:
    """kubectl and helm against the test cluster, failing with the tools' own messages."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "MSOPS_CLUSTER_DIR": str(state_dir)}
        self.kubeconfig = state_dir / "kubeconfig"
        self.env["KUBECONFIG"] = str(self.kubeconfig)
        from msops import gobuild

        self.kubectl_bin = str(gobuild.bin_dir("kubernetes") / "kubectl")

    def run(self, argv: list[str], input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, input=input_text, capture_output=True, text=True, env=self.env, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr or done.stdout}")
        return done

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.run([self.kubectl_bin, *args], input_text=input_text, check=check).stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, binary: str = "helm", check: bool = True) -> subprocess.CompletedProcess:
        return self.run([tool(binary), *args], check=check)

    def apply(self, docs: list[dict] | dict, *extra: str) -> str:
        docs = docs if isinstance(docs, list) else [docs]
        return self.kubectl("apply", *extra, "-f", "-", input_text=yaml.safe_dump_all(docs))

    def status(self) -> str:
        """`scripts/cluster status` of this cluster (which must be healthy)."""
        done = self.run([str(CLUSTER), "status"])
        return done.stdout

    def restricted_namespace(self, name: str) -> None:
        """A namespace that enforces the restricted Pod Security Standard, as the issue's clusters do."""
        labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})

    def events(self, namespace: str, reason: str) -> list[str]:
        items = self.json("get", "events", "-n", namespace, "--field-selector", f"reason={reason}")["items"]
        return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message']}" for e in items]


def wait_for(
    what: str,
    probe: Callable[[], object],
    timeout: float = 120,
    interval: float = 1.0,
    detail: Callable[[], str] | None = None,
):
    """Poll ``probe`` until it returns something truthy; fail naming ``what``, the last value and ``detail()``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    context = f"\n{detail()}" if detail else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r}){context}")


@contextlib.contextmanager
def cluster(state: Path, *flags: str) -> Iterator[Kube]:
    """`scripts/cluster up FLAGS` in ``state``; `down` afterwards must stop every process and leave no state."""
    kube = Kube(state)
    started = time.monotonic()
    up = subprocess.run([str(CLUSTER), "up", *flags], env=kube.env, capture_output=True, text=True, cwd=ROOT)
    if up.returncode != 0:
        subprocess.run([str(CLUSTER), "down"], env=kube.env, capture_output=True, cwd=ROOT)
        raise AssertionError(f"scripts/cluster up {' '.join(flags)} failed:\n{up.stderr}")
    print(f"\ncluster ({' '.join(flags)}) up in {time.monotonic() - started:.1f} s", flush=True)
    try:
        yield kube
    finally:
        status = kube.run([str(CLUSTER), "status"], check=False)
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", status.stdout)]
        down = subprocess.run([str(CLUSTER), "down"], env=kube.env, capture_output=True, text=True, cwd=ROOT)
    assert down.returncode == 0, down.stderr
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)]
    assert left == [], f"processes still running after scripts/cluster down: {left}"
    assert not state.exists() or not any(state.iterdir())


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    with cluster(tmp_path_factory.mktemp("cluster"), "--flux") as kube:
        yield kube


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return "Z"


# ---- the real node (scripts/cluster up --real-node) ---------------------------------------------------------
def host_traces() -> dict[str, object]:
    """What a real node leaves on the host while it runs; `down` must put every item back as it was."""
    from msops import node

    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    return {
        "chains": sorted(node.chain_names()),
        "ipsets": sorted(subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()),
        "links": sorted(re.findall(rf"^\d+: ({node.BRIDGE}|veth\w+)[@:]", links, re.M)),
        "container mounts": sorted(
            line.split()[4] for line in mounts.splitlines() if re.search(r"/(containerd|kubelet|netns)\b", line)
        ),
        "cgroups": sorted(str(p) for p in node.CGROUPS.glob(f"*/{node.CGROUP_ROOT}")),
        "sysctls": {key: (Path("/proc/sys") / key).read_text().strip() for key in node.SYSCTLS},
        "routes": subprocess.run(["ip", "route", "show", node.SERVICE_CIDR], capture_output=True, text=True).stdout,
    }


@pytest.fixture(scope="session")
def real_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A second cluster, with one real node instead of kwok nodes, and Flux; checked clean after `down`."""
    before = host_traces()
    with cluster(tmp_path_factory.mktemp("real-cluster"), "--real-node", "--flux") as kube:
        yield kube
    # No mounts, network namespaces' veths, iptables chains, ipsets, cgroups or sysctls left changed.
    assert host_traces() == before


def read_only_claim(kube: Kube, namespace: str, claim: str, pv_name: str, host_path: Path | str) -> None:
    """The platform side of model.mode=existingClaim: a bound, read-only claim on a host directory."""
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "hostPath": {"path": str(host_path)},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
    )
    wait_for(
        f"PVC {namespace}/{claim} bound",
        lambda: kube.json("get", "pvc", claim, "-n", namespace)["status"].get("phase") == "Bound",
    )


@pytest.fixture(scope="session")
def node_image(real_kube: Kube) -> str:
    """The serving image, built from this tree and imported into the real node (`scripts/cluster load-image`)."""
    done = real_kube.run([str(CLUSTER), "load-image"])
    return done.stdout.strip().splitlines()[-1]


# `helm upgrade` arguments that change nothing but a pod annotation: a rollout of every pod of the release.
ROLLOUT_UPGRADE = ("--set-string", "podAnnotations.e2e/rollout=upgrade", "--wait", "--timeout", "4m")

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


# A new pod's address reaches the policy controller's ipsets a moment after the pod starts: a client
# in an admitted namespace first waits (30 s at most) until the Service answers it.
REACHABLE = """
import os, ssl, time, urllib.request
# https: verified with the CA the test mounted at E2E_CA (a secured release).
TLS = ssl.create_default_context(cafile=os.environ["E2E_CA"]) if os.environ.get("E2E_CA") else None
def wait_reachable(url, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            context = TLS if url.startswith("https") else None
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=3, context=context):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
"""


def client_pod(
    name: str,
    namespace: str,
    image: str,
    script: str,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    volumes: list[dict] | None = None,
    mounts: list[dict] | None = None,
    service_account: str | None = None,
) -> dict:
    """A run-once pod that runs ``script`` with the serving image's python (admitted under restricted PSS);
    ``env``, ``volumes`` and their ``mounts``, and a ServiceAccount whose token it may mount, when given."""
    container: dict = {
        "name": "client",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", script],
        "securityContext": RESTRICTED_CONTAINER,
    }
    if env:
        container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    if mounts:
        container["volumeMounts"] = mounts
    spec: dict = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }
    if volumes:
        spec["volumes"] = volumes
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"e2e/client": name, **(labels or {})}},
        "spec": spec,
    }


STREAM_CLIENT = (Path(__file__).parent / "stream_client.py").read_text()


def start_stream(kube: Kube, name: str, namespace: str, image: str, url: str, **options: object) -> dict:
    """A pod streaming real predictions on keep-alive connections to ``url`` (stream_client.py), started and
    answering; ``stop_stream`` ends it and returns what it saw. ``options``: STREAM_* settings in lower case
    without the prefix (seconds, connections, ca_file, token_file, ...), and volumes/mounts/service_account."""
    settings = {
        "seconds": 600,
        **{k: v for k, v in options.items() if k not in ("volumes", "mounts", "service_account")},
    }
    env = {"STREAM_URL": url, **{f"STREAM_{key.upper()}": str(value) for key, value in settings.items()}}
    pod = client_pod(
        name,
        namespace,
        image,
        STREAM_CLIENT,
        env=env,
        volumes=options.get("volumes"),  # type: ignore[arg-type]
        mounts=options.get("mounts"),  # type: ignore[arg-type]
        service_account=options.get("service_account"),  # type: ignore[arg-type]
    )
    kube.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
    kube.apply(pod)
    wait_for(
        f"{name} streaming predictions",
        lambda: "streaming" in kube.kubectl("logs", name, "-n", namespace, check=False),
        timeout=120,
        detail=lambda: kube.kubectl("logs", name, "-n", namespace, check=False)[-2000:],
    )
    return pod


def wait_pods_gone(kube: Kube, namespace: str, names: set[str], timeout: float = 180) -> None:
    """Until none of the pods ``names`` exists: a rollout ends when the old pods have drained and gone, not
    when the new ones are ready (what `helm upgrade --wait` and a Deployment's status wait for)."""

    def gone() -> bool:
        items = kube.json("get", "pods", "-n", namespace)["items"]
        return not names & {pod["metadata"]["name"] for pod in items}

    wait_for(f"the old pods {sorted(names)} to finish", gone, timeout=timeout, interval=1)


def stop_stream(kube: Kube, pod: dict, timeout: float = 60) -> dict:
    """Tell a streaming pod to stop (it finishes its requests in flight), then its report."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    kube.kubectl("exec", name, "-n", namespace, "--", "python3", "-c", "open('/tmp/stop', 'w').close()", check=False)
    phase = wait_client(kube, name, namespace, timeout)
    logs = kube.kubectl("logs", name, "-n", namespace)
    kube.kubectl("delete", "pod", name, "-n", namespace, "--wait=false", check=False)
    assert phase == "Succeeded", logs
    return json.loads(logs.strip().splitlines()[-1])


def run_client(kube: Kube, pod: dict, timeout: float = 180) -> tuple[str, str]:
    """Create ``pod``, wait until it finished; (phase, its log). The pod is deleted afterwards."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    kube.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
    kube.apply(pod)
    try:
        phase = wait_client(kube, name, namespace, timeout)
        return phase, kube.kubectl("logs", name, "-n", namespace)
    finally:
        kube.kubectl("delete", "pod", name, "-n", namespace, "--wait=false", check=False)


def wait_client(kube: Kube, name: str, namespace: str, timeout: float) -> str:
    def finished() -> str | None:
        phase = kube.json("get", "pod", name, "-n", namespace).get("status", {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    return wait_for(
        f"client pod {namespace}/{name} to finish",
        finished,
        timeout=timeout,
        detail=lambda: kube.kubectl("describe", "pod", name, "-n", namespace, check=False)[-3000:],
    )


# ---- Argo Rollouts (rollout.enabled) -------------------------------------------------------------------------


def rollout_status(kube: Kube, namespace: str, release: str) -> dict:
    """The status of the Rollout of Helm release ``release``."""
    selector = f"app.kubernetes.io/instance={release}"
    return kube.json("get", "rollouts.argoproj.io", "-n", namespace, "-l", selector)["items"][0].get("status", {})


def rollout_promoted(status: dict, previous: str | None) -> dict | None:
    """``status`` once a revision other than ``previous`` is stable on every replica. (With workloadRef a new
    version changes the Deployment, not the Rollout: its generation stays, so the stable ReplicaSet's hash is
    what moves.)"""
    stable = status.get("stableRS")
    done = stable and stable != previous and status.get("currentPodHash") == stable
    return status if done and status.get("phase") == "Healthy" else None


def judgement_logs(kube: Kube, namespace: str, release: str) -> list[str]:
    """The rollout analysis Jobs' logs, oldest first: the figures each judgement saw."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=test"
    jobs = kube.json("get", "jobs", "-n", namespace, "-l", selector)["items"]
    jobs.sort(key=lambda job: job["metadata"]["creationTimestamp"])
    # check=False: a Job just created has no pod (no log) yet
    return [kube.kubectl("logs", f"job/{job['metadata']['name']}", "-n", namespace, check=False) for job in jobs]
