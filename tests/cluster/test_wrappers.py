"""The wrapper modules that build the cluster's binaries: generated correctly, and in step with the pins."""

from __future__ import annotations

import re

import pytest
from msops import gobuild

UPSTREAM_KUBE = """module k8s.io/kubernetes

go 1.26.0

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""

UPSTREAM_ETCD = """module go.etcd.io/etcd/server/v3

go 1.25.0

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/pkg/v3 => ../pkg
)

require (
\tgo.etcd.io/etcd/api/v3 v3.6.16
\tgo.etcd.io/etcd/pkg/v3 v3.6.16
)

// Bad imports are sometimes causing attempts to pull that code.
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY

replace github.com/example/fork => github.com/example/fork v1.2.3
"""


def test_kubernetes_staging_modules_map_to_their_published_v0_tags():
    text = gobuild.wrapper_gomod(gobuild.COMPONENTS["kubernetes"], UPSTREAM_KUBE)
    version = gobuild.COMPONENTS["kubernetes"].version
    assert f"\tk8s.io/kubernetes {version}\n" in text
    assert f"\tk8s.io/api => k8s.io/api v0{version[2:]}\n" in text
    assert f"\tk8s.io/client-go => k8s.io/client-go v0{version[2:]}\n" in text
    assert "./staging" not in text
    assert "\tk8s.io/kubernetes/cmd/kube-apiserver\n" in text


def test_local_replaces_with_published_requires_are_dropped_and_others_kept():
    text = gobuild.wrapper_gomod(gobuild.COMPONENTS["etcd"], UPSTREAM_ETCD)
    assert "../" not in text
    assert "FORBIDDEN" not in text
    assert "go.etcd.io/etcd/api/v3 =>" not in text  # the upstream require already names v3.6.16
    assert "\tgithub.com/example/fork => github.com/example/fork v1.2.3\n" in text
    assert "go 1.25.0" in text


@pytest.mark.parametrize("name", [n for n, c in gobuild.COMPONENTS.items() if c.wrapped])
def test_committed_wrapper_matches_the_pinned_version(name):
    component = gobuild.COMPONENTS[name]
    gomod = (component.wrapper_dir / "go.mod").read_text()
    assert f"module {gobuild.MODULE_PREFIX}/{component.wrapper_dir.name}\n" in gomod
    if component.module.startswith(gobuild.MODULE_PREFIX):
        return  # our own source (the pause program): nothing upstream to pin
    assert re.search(rf"^(require )?\t?{re.escape(component.module)} {re.escape(component.version)}\b", gomod, re.M), (
        f"{component.wrapper_dir.relative_to(gobuild.ROOT)}/go.mod does not require {component.module} "
        f"{component.version}: run scripts/cluster wrap {component.wrapper or name}"
    )
    assert (component.wrapper_dir / "go.sum").stat().st_size > 0
    for binary in component.binaries:
        if component.package(binary) != ".":
            assert component.package(binary) in gomod, f"{binary} is not a tool of the wrapper"


def test_components_sharing_a_wrapper_are_all_its_tools():
    text = gobuild.wrapper_gomod(gobuild.COMPONENTS["kubernetes"], UPSTREAM_KUBE)
    for name in ("kubernetes", "kubernetes-node"):
        for binary in gobuild.COMPONENTS[name].binaries:
            assert f"\t{gobuild.COMPONENTS[name].package(binary)}\n" in text


def test_unknown_component_is_a_clear_error():
    with pytest.raises(gobuild.OpsError, match="unknown cluster component 'kind'"):
        gobuild.bin_dir("kind")
