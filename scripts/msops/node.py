"""One real node beside the local control plane: `scripts/cluster up --real-node`.

containerd (Debian's, with runc and the CNI plugins) runs the pods; the kubelet and kube-proxy
(iptables mode) come from the control plane's own Kubernetes wrapper module; CoreDNS answers the
cluster domain; kube-router's network policy controller enforces NetworkPolicy with iptables and
ipsets; metrics-server feeds the HPA real CPU. The add-ons run as host processes against the
kubeconfig, as the Flux controllers do, because pods cannot reach an API server bound to 127.0.0.1.

Addresses: pods live on a bridge (``msops0``, 10.244.0.0/24) whose gateway, 10.244.0.1, is also the
node's address: the kubelet, CoreDNS and metrics-server listen there, inside the pod network, and
everything else on 127.0.0.1. Pod traffic to anything outside the pod network is rejected before it
can leave the machine, and the Service range routes onto the bridge, not out of the machine.

What this host forces (no systemd, cgroup v1, no CAP_SYS_RESOURCE in the bounding set, no registry):
cgroupfs driver, ``failCgroupV1: false``, ``oomScoreAdj: 0`` and containerd's
``restrict_oom_score_adj``, a locally built pause image, images imported rather than pulled.
``down`` removes every trace: pods through CRI, processes by PID, mounts (network namespaces among them), the
iptables chains and ipsets that were not there before, cgroups, the bridge, sysctls as they were.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import OpsError, gobuild, ociarchive
from .tools import ROOT

NAME = "real-node"
BRIDGE = "msops0"
BRIDGE_MAC = "02:6d:73:6f:70:01"  # locally administered
NETWORK = "msops"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
# kube-apiserver's default --service-cluster-ip-range (kwokctl passes none).
SERVICE_CIDR = "10.0.0.0/24"
DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = "model-server-gitops"
CGROUPS = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "localhost/model-server-gitops/pause:1"
CNI_BIN = Path("/usr/lib/cni")
# Set for the node's traffic; put back as they were by `down`.
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
# Paths containerd, the CNI plugins and the kubelet write outside the state directory whatever they are
# told; `down` removes the ones that did not exist before `up`.
HOST_PATHS = (Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/log/containers"), Path("/opt/containerd"))
# Host programs the node needs, with the Debian package that brings each.
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "ipset": "ipset",
    "conntrack": "conntrack",
    "ip": "iproute2",
}
CHAIN_PREFIXES = ("KUBE-", "CNI-", "MSOPS-")
GUARD_CHAIN = "MSOPS-POD-EGRESS"
COMPONENTS = ("kubernetes-node", "coredns", "metrics-server", "kube-router", "crictl", "pause")

Log = Callable[[str], None]


class Node:
    """The node's files under ``<state>/node`` and the commands that act on them."""

    def __init__(self, state: Path, kubeconfig: Path, pki: Path) -> None:
        self.dir = state / "node"
        self.kubeconfig = kubeconfig
        self.pki = pki
        self.containerd_dir = self.dir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.saved_file = self.dir / "saved.json"

    # ---- commands -------------------------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True) -> str:
        return _run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], check=check)

    def crictl(self, *args: str, check: bool = True) -> str:
        endpoint = f"unix://{self.socket}"
        crictl = str(gobuild.bin_dir("crictl") / "crictl")
        argv = [crictl, "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "60s", *args]
        return _run(argv, check=check)

    def import_image(self, archive: Path) -> list[str]:
        """Import an image archive (OCI or docker) into the CRI's image store; the names it created."""
        if not self.socket.exists():
            raise OpsError("the real node is not running: scripts/cluster up --real-node")
        out = self.ctr("images", "import", "--all-platforms", str(archive))
        return re.findall(r"^unpacking (\S+) \(", out, re.M)

    # ---- configuration ----------------------------------------------------------------------------------
    def containerd_config(self) -> str:
        d = self.containerd_dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
# Plugins this node does not use; "opt" would install into /opt/containerd.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The bounding set lacks CAP_SYS_RESOURCE: containers may not get an oom_score_adj below containerd's.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pod network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.dir / "cni" / "net.d"}"
  max_conf_num = 1
"""

    def cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # No masquerade: pod traffic never leaves the machine (see _guard).
                    "ipMasq": False,
                    # A pod reaching itself through its Service comes back through the same bridge port.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                }
            ],
        }

    def kubelet_config(self, healthz_port: int) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            # No systemd here; cgroup v1 is deprecated in the kubelet and refused unless this says otherwise.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": f"/{CGROUP_ROOT}",
            # Without CAP_SYS_RESOURCE the kubelet cannot lower its own oom_score_adj (default -999).
            "oomScoreAdj": 0,
            "failSwapOn": False,
            "clusterDNS": [DNS_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            # Pods never get the host's resolvers: no DNS query leaves the machine.
            "resolvConf": "",
            "podLogsDir": str(self.dir / "pod-logs"),
            "volumePluginDir": str(self.dir / "kubelet" / "volume-plugins"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            # A shared builder's disk is fuller than a node's: no image GC or disk-pressure eviction of
            # the imported images, which cannot be pulled again.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            # Mounted Secrets and ConfigMaps reach a running pod at its next sync: every 10 s here instead of
            # the default minute, so certificate and token rotations are tested in seconds. A real cluster's
            # minute changes how long a rotation takes, not whether it works.
            "syncFrequency": "10s",
        }

    def kube_proxy_config(self, healthz_port: int, metrics_port: int) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "hostnameOverride": NAME,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            # NodePorts answer inside the pod network only.
            "nodePortAddresses": [POD_CIDR],
            # 0: leave the host's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }

    def corefile(self, health_port: int, ready_port: int) -> str:
        # No `forward`: names outside the cluster domain get no answer rather than a query to the outside.
        return f""".:53 {{
    bind {NODE_IP}
    ready 127.0.0.1:{ready_port}
    health 127.0.0.1:{health_port}
    errors
    loadbalance
    cache 30
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
}}
"""

    # ---- saved host state -----------------------------------------------------------------------------
    def save(self, saved: dict[str, Any]) -> None:
        partial = self.saved_file.with_suffix(".partial")
        partial.write_text(json.dumps(saved, indent=1))
        partial.rename(self.saved_file)

    def saved(self) -> dict[str, Any]:
        try:
            saved: dict[str, Any] = json.loads(self.saved_file.read_text())
        except (OSError, ValueError):
            return {}
        return saved


def _run(argv: list[str], *, check: bool = True, input_text: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise OpsError(f"could not run {argv[0]}: {exc}") from None
    if check and done.returncode != 0:
        raise OpsError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def check_host() -> None:
    """Fail with one line naming what is missing, before anything starts."""
    if os.geteuid() != 0:
        raise OpsError("the real node needs root (network namespaces, iptables, cgroups, mounts)")
    missing = sorted({package for tool, package in HOST_TOOLS.items() if not shutil.which(tool)})
    if not (CNI_BIN / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if missing:
        raise OpsError(f"the real node needs Debian packages: apt-get install {' '.join(sorted(set(missing)))}")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        raise OpsError(f"network interface {BRIDGE} exists: another real node is running (scripts/cluster down)")


# ---- host state: sysctls, chains, ipsets, cgroups, the bridge ---------------------------------------------
def _sysctl(key: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / key
    if value is not None:
        path.write_text(value)
    return path.read_text().strip()


def _chains() -> dict[str, list[str]]:
    """ "iptables:table" -> chains whose names this node's components use, as they are now."""
    found: dict[str, list[str]] = {}
    for family in ("iptables", "ip6tables"):
        out = _run([f"{family}-save"], check=False)
        table = ""
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                found.setdefault(f"{family}:{table}", []).append(line[1:].split()[0])
    return found


def chain_names() -> set[str]:
    """Every chain of ours (KUBE-, CNI-, MSOPS-) in any table, IPv4 and IPv6."""
    return {chain for chains in _chains().values() for chain in chains}


def _ipsets() -> list[str]:
    return _run(["ipset", "list", "-n"], check=False).split()


def _remove_chains(keep: dict[str, list[str]]) -> list[str]:
    """Delete the rules that jump to our chains, then the chains: everything not in ``keep``."""
    removed = []
    for key, chains in _chains().items():
        family, table = key.split(":")
        ours = [c for c in chains if c not in keep.get(key, [])]
        if not ours:
            continue
        rules = _run([f"{family}-save", "-t", table], check=False).splitlines()
        for rule in rules:
            # A rule in a chain that stays (a built-in one) jumping to ours: delete it by its spec.
            match = re.match(r"^-A (\S+) (.*)$", rule)
            if match and match.group(1) not in ours and any(f"-j {c}" in rule or f"-g {c}" in rule for c in ours):
                _run([family, "-w", "-t", table, "-D", match.group(1), *shlex.split(match.group(2))], check=False)
        for chain in ours:
            _run([family, "-w", "-t", table, "-F", chain], check=False)
        for chain in ours:
            _run([family, "-w", "-t", table, "-X", chain], check=False)
        removed += [f"{family}/{table}/{c}" for c in ours]
    return removed


def _guard(add: bool) -> None:
    """Pod traffic to anything outside the pod network is rejected here, before it can leave the machine."""
    if add:
        _run(["iptables", "-w", "-N", GUARD_CHAIN])
        _run(["iptables", "-w", "-A", GUARD_CHAIN, "-d", POD_CIDR, "-j", "RETURN"])
        _run(["iptables", "-w", "-A", GUARD_CHAIN, "-j", "REJECT"])
        _run(["iptables", "-w", "-I", "FORWARD", "1", "-s", POD_CIDR, "-j", GUARD_CHAIN])
        # Service IPs route onto the bridge: a connect() gets past routing so kube-proxy's DNAT can
        # rewrite it, and what it does not rewrite stays on the bridge instead of the default route.
        _run(["ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE])
    else:
        _run(["ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE], check=False)


def _cgroup_hierarchies() -> list[Path]:
    return sorted(p for p in CGROUPS.iterdir() if (p / "cgroup.procs").exists() and not p.is_symlink())


def _make_cgroup_root() -> None:
    """The kubelet's --cgroup-root must exist in every hierarchy; cpuset children start empty in cgroup v1."""
    for hierarchy in _cgroup_hierarchies():
        path = hierarchy / CGROUP_ROOT
        path.mkdir(exist_ok=True)
        for key in ("cpuset.cpus", "cpuset.mems"):
            if (path / key).exists() and not (path / key).read_text().strip():
                (path / key).write_text((hierarchy / key).read_text())


def _remove_cgroups() -> list[str]:
    """rmdir our cgroup trees bottom-up; what could not be removed (a process still in it)."""
    left = []
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.is_dir():
            continue
        for directory in [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), root]:
            try:
                directory.rmdir()
            except OSError:
                left.append(str(directory))
    return left


def _cgroup_processes() -> list[int]:
    """Every process in our cgroup trees (containers whose shim is gone)."""
    pids: set[int] = set()
    for procs in CGROUPS.glob(f"*/{CGROUP_ROOT}/**/cgroup.procs"):
        pids.update(int(pid) for pid in procs.read_text().split())
    return sorted(pids)


def _mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below any of ``roots``, deepest first (from this process's mountinfo)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            points.append(point)
    return sorted(set(points), key=lambda p: -len(p))


def _processes_using(needle: str) -> list[int]:
    """PIDs whose command line mentions ``needle`` (containerd's shims carry its socket address)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                if needle.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def prepare_host(node: Node, log: Log) -> None:
    """Record the host as it is, then set it up: sysctls, cgroup root, bridge, guard chain."""
    saved = {
        "sysctls": {key: _sysctl(key) for key in SYSCTLS},
        "chains": _chains(),
        "ipsets": _ipsets(),
        "host_paths": [str(p) for p in HOST_PATHS if p.exists()],
    }
    node.dir.mkdir(parents=True, exist_ok=True)
    node.save(saved)
    log(f"host: bridge {BRIDGE} {NODE_IP}/24, cgroup root /{CGROUP_ROOT}, ip_forward on")
    for key, value in SYSCTLS.items():
        _sysctl(key, value)
    _make_cgroup_root()
    network = ipaddress.ip_network(POD_CIDR)
    # A fixed address: a bridge without one takes its lowest port's, so each new pod's veth could change
    # the gateway's MAC under every running pod (their ARP entries go stale: "No route to host").
    _run(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge"])
    _run(["ip", "addr", "add", f"{NODE_IP}/{network.prefixlen}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    _guard(add=True)


def write_configs(node: Node, ports: dict[str, int]) -> None:
    for sub in (
        "cni/net.d",
        "cni/ipam",
        "containerd",
        "kubelet",
        "pod-logs",
        "kube-proxy",
        "coredns",
        "metrics-server",
    ):
        (node.dir / sub).mkdir(parents=True, exist_ok=True)
    (node.containerd_dir / "config.toml").write_text(node.containerd_config())
    (node.dir / "cni" / "net.d" / f"10-{NETWORK}.conflist").write_text(json.dumps(node.cni_config(), indent=1))
    (node.dir / "kubelet" / "config.yaml").write_text(yaml.safe_dump(node.kubelet_config(ports["kubelet-health"])))
    (node.dir / "kube-proxy" / "config.yaml").write_text(
        yaml.safe_dump(node.kube_proxy_config(ports["proxy-health"], ports["proxy-metrics"]))
    )
    (node.dir / "coredns" / "Corefile").write_text(node.corefile(ports["dns-health"], ports["dns-ready"]))


def argv(node: Node, name: str, ports: dict[str, int]) -> list[str]:
    """The command line of each node process."""
    kube = gobuild.bin_dir("kubernetes-node")
    d, kubeconfig = node.dir, str(node.kubeconfig)
    commands = {
        "containerd": ["containerd", "--config", str(node.containerd_dir / "config.toml")],
        "kubelet": [
            str(kube / "kubelet"),
            f"--config={d / 'kubelet' / 'config.yaml'}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={d / 'kubelet' / 'root'}",
            f"--hostname-override={NAME}",
            f"--node-ip={NODE_IP}",
            "--node-labels=model-server-gitops/node=real,topology.kubernetes.io/zone=zone-a",
            "--v=1",
        ],
        "kube-proxy": [str(kube / "kube-proxy"), f"--config={d / 'kube-proxy' / 'config.yaml'}", "--v=1"],
        "kube-router": [
            str(gobuild.bin_dir("kube-router") / "kube-router"),
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={NAME}",
            # The network policy controller only: routing, service proxy (kube-proxy does it) and CNI off.
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--enable-cni=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--iptables-sync-period=1m",
            # Its health server binds every interface: off. Metrics on loopback.
            "--health-port=0",
            "--metrics-addr=127.0.0.1",
            f"--metrics-port={ports['router-metrics']}",
        ],
        "coredns": [str(gobuild.bin_dir("coredns") / "coredns"), "-conf", str(d / "coredns" / "Corefile")],
        "metrics-server": [
            str(gobuild.bin_dir("metrics-server") / "metrics-server"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={NODE_IP}",
            f"--secure-port={ports['metrics-server']}",
            f"--cert-dir={d / 'metrics-server'}",
            # The kubelet's serving certificate is self-signed (no certificate signer runs here).
            "--kubelet-insecure-tls",
            "--kubelet-preferred-address-types=InternalIP",
            "--metric-resolution=15s",
        ],
    }
    return commands[name]


def pause_archive(node: Node) -> Path:
    binary = gobuild.bin_dir("pause") / "pause"
    return ociarchive.write(binary, PAUSE_IMAGE, node.dir / "pause.oci.tar")


def addon_objects(metrics_port: int) -> list[dict[str, Any]]:
    """kube-dns and metrics-server Services pointing at the node's address, and the metrics APIService."""

    def service(name: str, ip: str | None, ports: list[dict[str, Any]]) -> dict[str, Any]:
        spec: dict[str, Any] = {"ports": ports}
        if ip:
            spec["clusterIP"] = ip
        labels = {"k8s-app": name, "kubernetes.io/cluster-service": "true"}
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
            "spec": spec,
        }

    def endpoints(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        # No selector: these Endpoints are the add-on on the host; the mirroring controller makes the slices.
        return {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": "kube-system"},
            "subsets": [{"addresses": [{"ip": NODE_IP}], "ports": ports}],
        }

    dns_ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    metrics_service_ports = [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": metrics_port}]
    return [
        service("kube-dns", DNS_IP, [{**p, "targetPort": 53} for p in dns_ports]),
        endpoints("kube-dns", dns_ports),
        service("metrics-server", None, metrics_service_ports),
        endpoints("metrics-server", [{"name": "https", "port": metrics_port, "protocol": "TCP"}]),
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                # metrics-server's serving certificate is self-signed, as in its own install manifest.
                "insecureSkipTLSVerify": True,
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
            },
        },
    ]


def teardown(node: Node, stop: Callable[[list[int]], None], pids: dict[str, int], log: Log) -> list[str]:
    """Remove every trace of the node; return what could not be removed (empty when clean)."""
    saved = node.saved()
    # The kubelet first, so it recreates nothing; then every pod through CRI (network teardown included).
    stop([pid for name, pid in pids.items() if name != "containerd"])
    crictl = gobuild.bin_dir("crictl") / "crictl"
    if pids.get("containerd") and node.socket.exists() and crictl.is_file():
        node.crictl("rmp", "--all", "--force", check=False)
    stop([pid for name, pid in pids.items() if name == "containerd"])
    # Shims outlive containerd by design (they carry its socket address); containers live in our cgroups.
    stop(_processes_using(str(node.containerd_dir)))
    stop(_cgroup_processes())
    for point in _mounts_under(node.dir, Path("/run/containerd")):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "del", BRIDGE], check=False)
    _guard(add=False)
    removed = _remove_chains(saved.get("chains", {}))
    for name in set(_ipsets()) - set(saved.get("ipsets", [])):
        _run(["ipset", "destroy", name], check=False)
    for key, value in saved.get("sysctls", {}).items():
        _sysctl(key, value)
    problems = [f"cgroup {path}" for path in _remove_cgroups()]
    # The kubelet's log symlinks point into our state directory; libcni caches results by network name.
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and str(node.dir) in os.readlink(link):
                link.unlink()
    for cached in Path("/var/lib/cni").glob(f"results/{NETWORK}-*"):
        cached.unlink()
    for path in HOST_PATHS:
        if path.exists() and str(path) not in saved.get("host_paths", []):
            shutil.rmtree(path, ignore_errors=True)
    problems += [f"mount {p}" for p in _mounts_under(node.dir)]
    if removed:
        log(f"node: removed {len(removed)} iptables chains")
    return problems


def load_image(node: Node, ref: str | None, log: Log) -> str:
    """Build (when ``ref`` is None) and import an image into the node; the reference pods use."""
    if not node.socket.exists():
        raise OpsError("the real node is not running: scripts/cluster up --real-node")
    if ref is None:
        log("building the image with scripts/build-image")
        done = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OpsError(f"scripts/build-image failed:\n{done.stderr.strip()[-3000:]}")
        ref = done.stdout.strip().splitlines()[-1]
    engine = "docker" if shutil.which("docker") and _engine_answers("docker") else "podman"
    if not shutil.which(engine):
        raise OpsError("neither a working docker engine nor podman found (apt-get install podman)")
    with tempfile.TemporaryDirectory(dir=node.dir) as scratch:
        archive = Path(scratch) / "image.tar"
        save = [engine, "save", "-o", str(archive), ref]
        if engine == "podman":
            save[2:2] = ["--format", "docker-archive"]
        _run(save)
        names = node.import_image(archive)
    log(f"imported {', '.join(names) or ref} into the node's containerd (namespace k8s.io)")
    return _normalise(ref)


def _engine_answers(engine: str) -> bool:
    return subprocess.run([engine, "info"], capture_output=True, check=False).returncode == 0


def _normalise(ref: str) -> str:
    """The name the CRI knows the image by: docker.io/library/ for bare names, as containerd does."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


def wait(what: str, probe: Callable[[], object], timeout: float, detail: Callable[[], str] | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    raise OpsError(f"{what} not within {timeout:.0f} s{': ' + detail() if detail else ''}")
