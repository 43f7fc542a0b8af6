"""Builds the local cluster's binaries from the Go module proxy, cached by version outside the repository.

Kubernetes, etcd and the Flux controllers cannot be ``go install``-ed: their go.mod files replace
modules with local directories (``./staging/...``, ``../api``). Each is built from a small wrapper
module under ``tools/cluster/<name>/`` that requires the upstream module at a pinned tag and resolves
those local replaces to published versions. ``scripts/cluster wrap NAME`` (re)generates a wrapper from
the upstream go.mod; the committed go.mod/go.sum pin every dependency, so builds are reproducible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import OpsError
from .tools import ROOT

CACHE = Path(os.environ.get("MSOPS_CACHE") or Path.home() / ".cache" / "model-server-gitops") / "cluster-bin"
WRAPPERS = ROOT / "tools" / "cluster"
MODULE_PREFIX = "github.com/model-server-gitops/model-server-gitops/tools/cluster"

KUBERNETES_VERSION = "v1.36.3"


def _kube_version_ldflags(version: str) -> str:
    """What kube's own build (hack/lib/version.sh) stamps; without it servers report v0.0.0."""
    major, minor = version.lstrip("v").split(".")[:2]
    pkgs = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    values = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return " ".join(f"-X {pkg}.{key}={value}" for pkg in pkgs for key, value in values.items())


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    version: str
    binaries: dict[str, str]  # binary name -> package path relative to the module ("" = module root)
    also_require: tuple[str, ...] = ()  # sibling modules required at the same tag (Flux's /api)
    ldflags: str = ""
    wrapped: bool = True  # False: plain `go install`, no wrapper module
    staging_prefix: str = ""  # k8s: modules replaced by ./staging map to v0.<minor>.<patch>
    wrapper: str = ""  # the wrapper module's directory under tools/cluster, when shared (default: name)
    # Source edits applied at build time through `go build -overlay` (the module cache stays untouched):
    # (file in the module, text, replacement). For what no flag can change, each with its reason.
    patches: tuple[tuple[str, str, str], ...] = ()

    @property
    def wrapper_dir(self) -> Path:
        return WRAPPERS / (self.wrapper or self.name)

    def package(self, binary: str) -> str:
        """Import path of ``binary``'s main package; "." is the wrapper module's own main (source in the wrapper)."""
        path = self.binaries[binary]
        return "." if path == "." else f"{self.module}/{path}".rstrip("/")


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            "kubernetes",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            {
                "kube-apiserver": "cmd/kube-apiserver",
                "kube-controller-manager": "cmd/kube-controller-manager",
                "kube-scheduler": "cmd/kube-scheduler",
                "kubectl": "cmd/kubectl",
            },
            ldflags=_kube_version_ldflags(KUBERNETES_VERSION),
            staging_prefix="k8s.io/",
        ),
        Component(
            "etcd",
            "go.etcd.io/etcd/server/v3",
            "v3.6.16",
            {"etcd": ""},
            ldflags="-X go.etcd.io/etcd/api/v3/version.GitSHA=v3.6.16",
        ),
        Component(
            "kwok",
            "sigs.k8s.io/kwok",
            "v0.8.0",
            {"kwok": "cmd/kwok", "kwokctl": "cmd/kwokctl"},
            ldflags="-X sigs.k8s.io/kwok/pkg/consts.Version=v0.8.0",
            wrapped=False,
        ),
        Component(
            "flux-source",
            "github.com/fluxcd/source-controller",
            "v1.9.0",
            {"source-controller": ""},
            also_require=("github.com/fluxcd/source-controller/api",),
        ),
        Component(
            "flux-helm",
            "github.com/fluxcd/helm-controller",
            "v1.6.4",
            {"helm-controller": ""},
            also_require=("github.com/fluxcd/helm-controller/api",),
        ),
        # The real node (scripts/cluster up --real-node): kubelet and kube-proxy from the control plane's
        # wrapper module, then the add-ons.
        Component(
            "kubernetes-node",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            {"kubelet": "cmd/kubelet", "kube-proxy": "cmd/kube-proxy"},
            ldflags=_kube_version_ldflags(KUBERNETES_VERSION),
            staging_prefix="k8s.io/",
            wrapper="kubernetes",
        ),
        Component(
            "coredns",
            "github.com/coredns/coredns",
            "v1.13.1",
            # Our own main (tools/cluster/coredns/main.go): only the plugins the cluster's DNS uses.
            {"coredns": "."},
        ),
        Component(
            "metrics-server",
            "sigs.k8s.io/metrics-server",
            "v0.8.0",
            {"metrics-server": "cmd/metrics-server"},
            ldflags="-X sigs.k8s.io/metrics-server/pkg/version.gitVersion=v0.8.0",
        ),
        Component(
            "kube-router",
            "github.com/cloudnativelabs/kube-router/v2",
            "v2.1.0",
            {"kube-router": "cmd/kube-router"},
            ldflags="-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=v2.1.0",
            wrapped=False,
        ),
        Component(
            "crictl",
            "sigs.k8s.io/cri-tools",
            "v1.37.0",
            {"crictl": "cmd/crictl"},
            ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=v1.37.0",
            wrapped=False,
        ),
        # Progressive delivery (chart's rollout.enabled): the Argo Rollouts controller, out of cluster like Flux.
        Component(
            "argo-rollouts",
            "github.com/argoproj/argo-rollouts",
            "v1.10.1",
            {"rollouts-controller": "cmd/rollouts-controller"},
            # Its metrics and healthz servers bind every interface (a constant, no flag); the cluster's
            # processes listen on 127.0.0.1 only (tests/cluster/test_real_node.py checks it).
            patches=(("controller/controller.go", '"0.0.0.0:%d"', '"127.0.0.1:%d"'),),
        ),
        Component(
            "pause",
            f"{MODULE_PREFIX}/pause",
            "v1",
            # The pod sandbox's init process, our own source: no registry to pull registry.k8s.io/pause from.
            {"pause": "."},
        ),
    )
}


def go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    if not shutil.which("go"):
        raise OpsError("Go is required to build the cluster binaries (apt-get install golang, or go.dev)")
    full_env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", **(env or {})}
    done = subprocess.run(["go", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OpsError(f"go {' '.join(args)} failed in {cwd}:\n{done.stderr.strip()[-4000:]}")
    return done.stdout


def download(module: str, version: str) -> dict[str, str]:
    """`go mod download -json` of one module: its "Dir" (sources) and "GoMod" paths in the module cache."""
    paths: dict[str, str] = json.loads(
        go(["mod", "download", "-json", f"{module}@{version}"], cwd=Path(tempfile.gettempdir()))
    )
    return paths


def _upstream_gomod(module: str, version: str) -> str:
    return Path(download(module, version)["GoMod"]).read_text()


_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+(\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")
_REQUIRE_LINE = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)(?:\s*//.*)?$")


def _parse_gomod(text: str) -> tuple[str, dict[str, str], list[tuple[str, str, str | None]]]:
    """(go directive, required module -> version, [(old, new, new_version)] replaces) of a go.mod."""
    go_line, required, replaces, block = "go 1.26.0", {}, [], ""
    for raw in text.splitlines():
        stripped = raw.split("//")[0].strip()
        if stripped.startswith("go "):
            go_line = stripped
        elif stripped.endswith("("):
            block = stripped.split()[0]
        elif stripped == ")":
            block = ""
        elif "=>" in stripped and (block == "replace" or stripped.startswith("replace ")):
            match = _REPLACE_LINE.match(stripped)
            if match:
                old, _old_version, new, new_version = match.groups()
                replaces.append((old, new, new_version))
        elif block == "require" or stripped.startswith("require "):
            match = _REQUIRE_LINE.match(stripped)
            if match:
                required[match.group(1)] = match.group(2)
    return go_line, required, replaces


def wrapper_gomod(component: Component, upstream: str) -> str:
    """go.mod text for a wrapper around ``component``, given the upstream module's go.mod text."""
    go_line, required, upstream_replaces = _parse_gomod(upstream)
    replaces: list[str] = []
    for old, new, new_version in upstream_replaces:
        if not new.startswith(("./", "../")):
            replaces.append(f"{old} => {new} {new_version}" if new_version else f"{old} => {new}")
        elif "FORBIDDEN" in new:
            continue  # etcd's guard against importing its test modules
        elif component.staging_prefix and old.startswith(component.staging_prefix):
            # k8s.io/kubernetes v1.X.Y publishes its staging repositories as v0.X.Y.
            replaces.append(f"{old} => {old} v0{component.version[2:]}")
        elif required.get(old, "v0.0.0") != "v0.0.0" or old in component.also_require:
            continue  # the upstream require (or the wrapper's own) already names the published version
        else:
            replaces.append(f"{old} => {old} {component.version}")
    requires = [f"\t{component.module} {component.version}"]
    requires += [f"\t{sibling} {component.version}" for sibling in component.also_require]
    # Every component built from this wrapper (kubernetes and kubernetes-node share one).
    sharing = [c for c in COMPONENTS.values() if c.wrapper_dir == component.wrapper_dir] or [component]
    tools = [f"\t{c.package(b)}" for c in sharing for b in c.binaries if c.package(b) != "."]
    name = component.wrapper or component.name
    text = (
        f"// Generated by `scripts/cluster wrap {name}`: builds {component.module} {component.version}\n"
        "// with the upstream go.mod's local replaces resolved to published modules. Do not edit by hand.\n"
        f"module {MODULE_PREFIX}/{name}\n\n{go_line}\n\n"
        "require (\n" + "\n".join(requires) + "\n)\n"
    )
    if tools:
        text += "\ntool (\n" + "\n".join(tools) + "\n)\n"
    if replaces:
        text += "\nreplace (\n" + "\n".join(f"\t{line}" for line in replaces) + "\n)\n"
    return text


def wrap(name: str) -> Path:
    """(Re)generate tools/cluster/<name>/go.mod and go.sum from the pinned upstream tag."""
    component = _component(name)
    if not component.wrapped or component.module.startswith(MODULE_PREFIX):
        raise OpsError(f"{name} has no upstream module to wrap (plain `go install`, or our own source)")
    directory = component.wrapper_dir
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "go.mod").write_text(wrapper_gomod(component, _upstream_gomod(component.module, component.version)))
    (directory / "go.sum").unlink(missing_ok=True)
    # -e: test-only dependencies of the upstream packages need not be served by the proxy.
    go(["mod", "tidy", "-e"], cwd=directory)
    return directory


def _component(name: str) -> Component:
    if name not in COMPONENTS:
        raise OpsError(f"unknown cluster component '{name}' (known: {', '.join(COMPONENTS)})")
    return COMPONENTS[name]


def _fingerprint(component: Component) -> str:
    digest = hashlib.sha256(f"{component.module}@{component.version} {component.ldflags} {component.patches}".encode())
    if component.wrapped:
        for part in ("go.mod", "go.sum"):
            digest.update((component.wrapper_dir / part).read_bytes())
        # Source of our own in the wrapper (a main of our own, the pause program).
        for source in sorted(component.wrapper_dir.glob("*.go")):
            digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _overlay(component: Component) -> Iterator[list[str]]:
    """`-modfile` arguments building ``component`` from a patched copy of its module (go refuses overlays of
    files in the module cache): the wrapper's go.mod plus a replace to the copy; none without patches."""
    if not component.patches:
        yield []
        return
    source = Path(download(component.module, component.version)["Dir"])
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "module"
        shutil.copytree(source, copy)
        for name, text, replacement in component.patches:
            target = copy / name
            original = target.read_text()
            if text not in original:
                raise OpsError(
                    f"{component.name} {component.version}: {name} no longer holds {text!r}; update the patch"
                )
            target.chmod(0o644)
            target.write_text(original.replace(text, replacement))
        modfile = Path(scratch) / "go.mod"
        gomod = (component.wrapper_dir / "go.mod").read_text()
        modfile.write_text(f"{gomod}\nreplace {component.module} => {copy}\n")
        shutil.copy(component.wrapper_dir / "go.sum", Path(scratch) / "go.sum")
        yield [f"-modfile={modfile}"]


def bin_dir(name: str) -> Path:
    """Where ``name``'s binaries live once built: keyed by version and wrapper contents."""
    component = _component(name)
    return CACHE / f"{name}-{component.version}-{_fingerprint(component)}"


def missing(name: str) -> list[str]:
    directory = bin_dir(name)
    return [binary for binary in _component(name).binaries if not (directory / binary).is_file()]


def build(name: str, *, log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> Path:
    """Build whatever of ``name`` is not cached yet; return the directory holding its binaries."""
    component = _component(name)
    directory = bin_dir(name)
    todo = missing(name)
    if not todo:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    ldflags = f"-s -w {component.ldflags}".strip()
    for index, binary in enumerate(todo, 1):
        package = component.package(binary)
        log(f"building {binary} {component.version} ({index}/{len(todo)} of {name}; once, then cached in {CACHE})")
        partial = directory / f".{binary}.partial"
        if component.wrapped:
            # readonly: the committed go.mod/go.sum decide every dependency; a build never rewrites them.
            with _overlay(component) as overlay:
                go(
                    ["build", "-mod=readonly", "-trimpath", *overlay, "-ldflags", ldflags, "-o", str(partial), package],
                    cwd=component.wrapper_dir,
                )
        else:
            with tempfile.TemporaryDirectory() as gobin:
                go(
                    ["install", "-trimpath", "-ldflags", ldflags, f"{package}@{component.version}"],
                    cwd=Path(gobin),
                    env={"GOBIN": gobin},
                )
                shutil.move(str(Path(gobin) / Path(package).name), partial)
        partial.rename(directory / binary)  # atomic: a killed build leaves no half binary under the real name
    return directory
