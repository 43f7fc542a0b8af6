"""A local Kubernetes control plane on 127.0.0.1 for the end-to-end tests: `scripts/cluster up|down|status`.

Real etcd, kube-apiserver (RBAC, PodSecurity and the other default admission plugins),
kube-controller-manager and kube-scheduler, started by kwokctl's binary runtime from binaries built
here (gobuild). kwok fakes the nodes and marks scheduled pods Running/Ready: no container runs, so
this proves what the API server accepts, admits and schedules, not that the image serves.
Optionally the Flux source- and helm-controllers run out of cluster against it (``--flux``), and
``--real-node`` adds one real node that runs the pods (msops.node): containerd, kubelet, kube-proxy,
CoreDNS, kube-router's NetworkPolicy enforcement and metrics-server.

Everything lives under one state directory (outside the repository): kwok's work dir, the
kubeconfig, the Flux controllers' storage, logs and PID files. ``down`` stops every process it
started by PID and removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import OpsError, crds, gobuild, node
from .local import free_port

STATE = Path(os.environ.get("MSOPS_CLUSTER_DIR") or gobuild.CACHE.parent / "cluster")
NAME = "model-server-gitops"
KUBECONFIG = STATE / "kubeconfig"
ZONES = ("zone-a", "zone-b", "zone-c")
PKI = STATE / "kwok" / "clusters" / NAME / "pki"
NODE = node.Node(STATE, KUBECONFIG, PKI)


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _kwok_env() -> dict[str, str]:
    return {**os.environ, "KWOK_WORKDIR": str(STATE / "kwok")}


def binaries(with_flux: bool = False, real_node: bool = False) -> dict[str, Path]:
    """Every binary the cluster needs, built first if missing (first run only)."""
    names = ["etcd", "kubernetes", "kwok"] + (["flux-source", "flux-helm"] if with_flux else [])
    # The real node runs pods, so Rollouts there can move real replicas: its clusters run the controller.
    names += [*node.COMPONENTS, "argo-rollouts"] if real_node else []
    found: dict[str, Path] = {}
    for name in names:
        if gobuild.missing(name):
            started = time.monotonic()
            gobuild.build(name, log=log)
            log(f"{name} built in {time.monotonic() - started:.0f} s")
        directory = gobuild.bin_dir(name)
        found.update({binary: directory / binary for binary in gobuild.COMPONENTS[name].binaries})
    return found


def _kubectl_run(args: tuple[str, ...], input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = gobuild.bin_dir("kubernetes") / "kubectl"
    argv = [str(binary), "--kubeconfig", str(KUBECONFIG), *args]
    return subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)


def kubectl(*args: str, input_text: str | None = None, check: bool = True) -> str:
    """Run the cluster's own kubectl against the cluster's kubeconfig."""
    done = _kubectl_run(args, input_text)
    if check and done.returncode != 0:
        raise OpsError(f"kubectl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _pid_files() -> list[Path]:
    return sorted(STATE.glob("kwok/clusters/*/pids/*.pid")) + sorted(STATE.glob("flux/*.pid")) + _node_pid_files()


def _node_pid_files() -> list[Path]:
    return sorted(NODE.dir.glob("*.pid"))


def processes() -> dict[str, tuple[int, bool]]:
    """Component name -> (PID, alive) for every process the cluster started."""
    found = {}
    for pid_file in _pid_files():
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        found[pid_file.stem] = (pid, _alive(pid))
    return found


def api_ready() -> bool:
    if not KUBECONFIG.is_file() or not (gobuild.bin_dir("kubernetes") / "kubectl").is_file():
        return False
    done = _kubectl_run(("--request-timeout=10s", "get", "--raw", "/readyz"))
    return done.returncode == 0 and done.stdout.strip() == "ok"


def _kwokctl_config(bins: dict[str, Path], real_node: bool = False) -> dict[str, Any]:
    version = gobuild.COMPONENTS["kubernetes"].version
    # A real kubelet refuses anonymous requests: the API server authenticates to it (logs, exec) with
    # kwokctl's admin certificate, which the kubelet's client CA signed. metrics-server, an aggregated
    # API, trusts the user the API server forwards in request headers signed by the same CA.
    args = {
        "kubelet-client-certificate": str(PKI / "admin.crt"),
        "kubelet-client-key": str(PKI / "admin.key"),
        # By its address: the node's name would be looked up in the host's DNS, outside the machine.
        "kubelet-preferred-address-types": "InternalIP",
        "requestheader-client-ca-file": str(PKI / "ca.crt"),
        # The one CA signs every client certificate: only the API server's proxy identity may set headers.
        "requestheader-allowed-names": "kwok-admin",
        "requestheader-username-headers": "X-Remote-User",
        "requestheader-group-headers": "X-Remote-Group",
        "requestheader-extra-headers-prefix": "X-Remote-Extra-",
    }
    patches = [
        # kwokctl's kwok manages every node by default: it would mark the real node's pods Ready at fake
        # addresses (its own pod CIDR) before the kubelet reports them. Only the nodes _node() annotates.
        {
            "name": "kwok-controller",
            "extraArgs": [
                {"key": "manage-all-nodes", "value": "false", "override": True},
                {"key": "manage-nodes-with-annotation-selector", "value": "kwok.x-k8s.io/node=fake"},
            ],
        }
    ]
    if real_node:
        patches.append({"name": "kube-apiserver", "extraArgs": [{"key": k, "value": v} for k, v in args.items()]})
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "runtime": "binary",
            # kwokctl's default is 0.0.0.0; nothing here listens beyond loopback.
            "bindAddress": "127.0.0.1",
            "kubeVersion": version,
            "etcdVersion": gobuild.COMPONENTS["etcd"].version.lstrip("v"),
            "kubeApiserverPort": free_port(),
            "kubeApiserverBinary": str(bins["kube-apiserver"]),
            "kubeControllerManagerBinary": str(bins["kube-controller-manager"]),
            "kubeSchedulerBinary": str(bins["kube-scheduler"]),
            "kubectlBinary": str(bins["kubectl"]),
            "etcdBinary": str(bins["etcd"]),
            "kwokControllerBinary": str(bins["kwok"]),
            # RBAC and the default admission chain (PodSecurity among it) as on a real cluster.
            "kubeAuthorization": True,
            "kubeAdmission": True,
        },
        "componentsPatches": patches,
    }


def _node(index: int) -> dict[str, Any]:
    name = f"kwok-node-{index}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok manages nodes carrying this annotation: heartbeats, and pods on them go Running/Ready.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/zone": ZONES[index % len(ZONES)],
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
        },
    }


def install_crds() -> None:
    paths = crds.paths()
    log(f"installing {len(paths)} CRDs (Argo CD, Argo Rollouts, Flux, Prometheus operator, Gateway API)")
    for path in paths:
        # Server-side apply: some CRDs exceed the client-side last-applied annotation's size limit.
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kubectl("wait", "--for=condition=Established", "--timeout=120s", "crd", "--all")


def _start(name: str, argv: list[str], env: dict[str, str], directory: Path | None = None) -> int:
    """Start a process of ours in its own session; its log and PID file go to ``directory`` (STATE/flux)."""
    directory = directory or STATE / "flux"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.log", "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (directory / f"{name}.pid").write_text(f"{process.pid}\n")
    return process.pid


def _wait_http(url: str, what: str, timeout: float = 90, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 (local health probe)
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise OpsError(f"{what} did not become healthy at {url} within {timeout:.0f} s; see its log under {STATE}")


def start_flux(bins: dict[str, Path]) -> dict[str, str]:
    """Run source-controller and helm-controller out of cluster; returns their addresses."""
    kubectl("create", "namespace", "flux-system", check=False)
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "RUNTIME_NAMESPACE": "flux-system"}
    storage = STATE / "flux" / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    ports = {key: free_port() for key in ("storage", "source-metrics", "source-health", "helm-metrics", "helm-health")}
    storage_addr = f"127.0.0.1:{ports['storage']}"
    common = ["--enable-leader-election=false", "--watch-all-namespaces=true", "--events-addr=", "--log-level=info"]
    log("starting Flux source-controller and helm-controller")
    _start(
        "source-controller",
        [
            str(bins["source-controller"]),
            *common,
            f"--storage-path={storage}",
            f"--storage-addr={storage_addr}",
            # helm-controller downloads chart artifacts from this address.
            f"--storage-adv-addr={storage_addr}",
            f"--metrics-addr=127.0.0.1:{ports['source-metrics']}",
            f"--health-addr=127.0.0.1:{ports['source-health']}",
        ],
        env,
    )
    _start(
        "helm-controller",
        [
            str(bins["helm-controller"]),
            *common,
            f"--metrics-addr=127.0.0.1:{ports['helm-metrics']}",
            f"--health-addr=127.0.0.1:{ports['helm-health']}",
        ],
        env,
    )
    _wait_http(f"http://127.0.0.1:{ports['source-health']}/readyz", "source-controller")
    _wait_http(f"http://127.0.0.1:{ports['helm-health']}/readyz", "helm-controller")
    addresses = {"storage": storage_addr}
    (STATE / "flux" / "addresses.json").write_text(json.dumps(addresses))
    return addresses


def start_rollouts(bins: dict[str, Path]) -> None:
    """Run the Argo Rollouts controller out of cluster (like Flux), for every namespace."""
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    ports = {key: free_port() for key in ("metrics", "health")}
    log("starting the Argo Rollouts controller")
    _start(
        "rollouts-controller",
        [
            str(bins["rollouts-controller"]),
            f"--kubeconfig={KUBECONFIG}",
            "--leader-elect=false",
            f"--metricsPort={ports['metrics']}",
            f"--healthzPort={ports['health']}",
            "--loglevel=info",
        ],
        env,
    )
    _wait_http(f"http://127.0.0.1:{ports['health']}/healthz", "rollouts-controller")


def start_node() -> None:
    """The real node (msops.node): containerd, kubelet, kube-proxy, kube-router, CoreDNS, metrics-server."""
    ports = {
        key: free_port()
        for key in (
            "kubelet-health",
            "proxy-health",
            "proxy-metrics",
            "router-metrics",
            "dns-health",
            "dns-ready",
            "metrics-server",
        )
    }
    node.prepare_host(NODE, log)
    node.write_configs(NODE, ports)
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}

    def start(name: str) -> None:
        _start(name, node.argv(NODE, name, ports), env, NODE.dir)

    def dead(name: str) -> str:
        pid_file = NODE.dir / f"{name}.pid"
        if pid_file.exists() and not _alive(int(pid_file.read_text())):
            tail = (NODE.dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise OpsError(f"{name} exited:\n" + "\n".join(tail))
        return f"see {NODE.dir / (name + '.log')}"

    log("starting containerd")
    start("containerd")
    node.wait(
        "containerd",
        lambda: NODE.socket.exists() and NODE.ctr("version", check=False) != "",
        60,
        lambda: dead("containerd"),
    )
    NODE.import_image(node.pause_archive(NODE))
    log(f"starting kubelet (node {node.NAME}, {node.NODE_IP})")
    start("kubelet")
    node.wait(
        f"node {node.NAME} Ready",
        lambda: (
            kubectl(
                "get", "node", node.NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
            )
            == "True"
        ),
        180,
        lambda: dead("kubelet"),
    )
    log("starting kube-proxy (iptables), kube-router (network policy), CoreDNS, metrics-server")
    kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(node.addon_objects(ports["metrics-server"])))
    for name in ("kube-proxy", "kube-router", "coredns", "metrics-server"):
        start(name)
    _wait_http(f"http://127.0.0.1:{ports['proxy-health']}/healthz", "kube-proxy")
    _wait_http(f"http://127.0.0.1:{ports['dns-ready']}/ready", "CoreDNS")
    node.wait(
        "kube-router's network policy chains",
        lambda: "KUBE-ROUTER-FORWARD" in node.chain_names(),
        90,
        lambda: dead("kube-router"),
    )
    node.wait(
        "the metrics API (metrics-server) Available",
        lambda: (
            kubectl(
                "get",
                "apiservice",
                "v1beta1.metrics.k8s.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Available')].status}",
                check=False,
            )
            == "True"
        ),
        120,
        lambda: dead("metrics-server"),
    )


def up(*, with_flux: bool = False, nodes: int = 3, real_node: bool = False) -> None:
    started = time.monotonic()
    bins = binaries(with_flux, real_node)
    if api_ready():
        log(f"already running (kubeconfig {KUBECONFIG})")
        if with_flux and not any(name.endswith("-controller") and alive for name, (_, alive) in processes().items()):
            start_flux(bins)
        if real_node and not _node_pid_files():
            raise OpsError("this cluster runs without a real node: scripts/cluster down, then up --real-node")
        return
    if real_node:
        node.check_host()
    if STATE.exists():
        down(quiet=True)  # leftovers of a crashed run: stop what is still alive, start clean
    STATE.mkdir(parents=True)
    # kubectl from PATH is what kwokctl runs for its own steps: make it ours, not a stray one.
    env = {**_kwok_env(), "PATH": f"{gobuild.bin_dir('kubernetes')}{os.pathsep}{os.environ.get('PATH', '')}"}
    config = STATE / "kwokctl.yaml"
    config.write_text(yaml.safe_dump(_kwokctl_config(bins, real_node)))
    log(f"starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok ({STATE})")
    done = subprocess.run(
        [
            str(bins["kwokctl"]),
            "create",
            "cluster",
            "--name",
            NAME,
            "--config",
            str(config),
            "--kubeconfig",
            str(KUBECONFIG),
            "--wait",
            "3m",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        log_hint = STATE / "kwok" / "clusters" / NAME / "logs"
        down(quiet=True)
        raise OpsError(f"kwokctl create cluster failed (logs: {log_hint}):\n{(done.stderr or done.stdout).strip()}")
    try:
        if nodes:
            kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(_node(i) for i in range(nodes)))
            kubectl("wait", "--for=condition=Ready", "--timeout=120s", "node", "--all")
        install_crds()
        if real_node:
            start_node()
            start_rollouts(bins)
        if with_flux:
            start_flux(bins)
    except BaseException:
        down(quiet=True)  # no half-started cluster left behind
        raise
    log(f"up in {time.monotonic() - started:.0f} s; export KUBECONFIG={KUBECONFIG}")


def _stop(pids: list[int], grace: float = 15) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def down(*, quiet: bool = False) -> None:
    """Stop every process the cluster started (by PID) and remove its state directory."""
    if not STATE.exists():
        if not quiet:
            log("not running")
        return
    running = {name: pid for name, (pid, alive) in processes().items() if alive}
    left: list[str] = []
    if NODE.dir.exists():
        node_pids = {p.stem: pid for p in _node_pid_files() if (pid := running.get(p.stem))}
        left = node.teardown(NODE, _stop, node_pids, log)
    # The Flux controllers first (they are ours, and would only log errors once the API is gone).
    _stop([pid for name, pid in running.items() if name.endswith("-controller") and name != "kwok-controller"])
    kwokctl = gobuild.bin_dir("kwok") / "kwokctl"
    if kwokctl.is_file() and (STATE / "kwok" / "clusters" / NAME).exists():
        subprocess.run(
            [str(kwokctl), "delete", "cluster", "--name", NAME], env=_kwok_env(), capture_output=True, check=False
        )
    # Whatever kwokctl did not stop, by the PIDs recorded before it ran.
    _stop(list(running.values()))
    shutil.rmtree(STATE, ignore_errors=True)
    if left:
        raise OpsError(f"down: could not remove {', '.join(left)}")
    if not quiet:
        log(f"down: stopped {', '.join(sorted(running)) or 'nothing'}; removed {STATE}")


def load_image(ref: str | None) -> str:
    """Import ``ref`` (built by scripts/build-image when None) into the real node; the reference to use."""
    return node.load_image(NODE, ref, log)


def status() -> int:
    procs = processes()
    if not procs:
        print("cluster: not running")
        return 1
    for name, (pid, alive) in sorted(procs.items()):
        print(f"{name:28} pid {pid:<8} {'running' if alive else 'DEAD'}")
    ready = api_ready()
    print(f"{'kube-apiserver /readyz':28} {'ok' if ready else 'not ready'}")
    if ready:
        print(kubectl("get", "nodes", "-o", "wide").rstrip())
    print(f"export KUBECONFIG={KUBECONFIG}")
    return 0 if ready and all(alive for _, alive in procs.values()) else 1
