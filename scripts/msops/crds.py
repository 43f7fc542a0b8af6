"""The CustomResourceDefinitions the chart and the GitOps manifests use, from their projects' Go modules.

The real CRD manifests (not the JSON schemas of the kubeconform mirror) are needed to let an API
server accept Argo CD, Argo Rollouts, Flux, Prometheus operator and Gateway API objects. Each project publishes
them inside its Go module, so the Go module proxy delivers them like any dependency (and caches them).
Versions follow the controllers the local cluster runs (gobuild.COMPONENTS) and the API versions
the manifests in this repository use.
"""

from __future__ import annotations

from pathlib import Path

from . import gobuild

# module, version, files inside the module
SOURCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "github.com/fluxcd/source-controller",
        gobuild.COMPONENTS["flux-source"].version,
        (
            "config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml",
            "config/crd/bases/source.toolkit.fluxcd.io_helmcharts.yaml",
            "config/crd/bases/source.toolkit.fluxcd.io_helmrepositories.yaml",
            "config/crd/bases/source.toolkit.fluxcd.io_ocirepositories.yaml",
            "config/crd/bases/source.toolkit.fluxcd.io_buckets.yaml",
            "config/crd/bases/source.toolkit.fluxcd.io_externalartifacts.yaml",
        ),
    ),
    (
        "github.com/fluxcd/helm-controller",
        gobuild.COMPONENTS["flux-helm"].version,
        ("config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml",),
    ),
    (
        "github.com/fluxcd/kustomize-controller",
        "v1.9.0",
        ("config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml",),
    ),
    (
        "github.com/argoproj/argo-cd/v3",
        "v3.2.0",
        (
            "manifests/crds/application-crd.yaml",
            "manifests/crds/applicationset-crd.yaml",
            "manifests/crds/appproject-crd.yaml",
        ),
    ),
    (
        # The chart's rollout.enabled: Rollout and AnalysisTemplate, and the AnalysisRuns and Experiments
        # the controller (real-node clusters) creates.
        "github.com/argoproj/argo-rollouts",
        gobuild.COMPONENTS["argo-rollouts"].version,
        (
            "manifests/crds/rollout-crd.yaml",
            "manifests/crds/analysis-template-crd.yaml",
            "manifests/crds/analysis-run-crd.yaml",
            "manifests/crds/cluster-analysis-template-crd.yaml",
            "manifests/crds/experiment-crd.yaml",
        ),
    ),
    (
        "github.com/prometheus-operator/prometheus-operator",
        "v0.85.0",
        (
            "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
            "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
            # The chart's alerts (prometheusRule.enabled, on in staging and prod).
            "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        ),
    ),
    (
        "sigs.k8s.io/gateway-api",
        "v1.3.0",
        (
            "config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml",
            "config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
            "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
            # The chart's GRPCRoute, rendered beside the HTTPRoute when gRPC is on (its default).
            "config/crd/standard/gateway.networking.k8s.io_grpcroutes.yaml",
        ),
    ),
)


def paths() -> list[Path]:
    """Local paths of every CRD manifest, downloading the modules through the Go proxy when needed."""
    found: list[Path] = []
    for module, version, files in SOURCES:
        found += [Path(gobuild.download(module, version)["Dir"]) / name for name in files]
    return found
