"""Bad values fail `helm template` (and so `helm install`) with a message naming the key."""

import pytest

from tests.kube import HELMS, template, template_error


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize(
    ("values_text", "fragment"),
    [
        ("replicaCount: three", "replicaCount"),
        ("service:\n  prot: 80", "prot"),
        ("service:\n  port: -1", "port"),
        ("containerPort: 80", "containerPort"),
        ("model:\n  mode: s3", "mode"),
        ("image:\n  digest: latest", "digest"),
        ("image:\n  pullPolicy: Sometimes", "pullPolicy"),
        ("server:\n  logLevel: loud", "logLevel"),
        ("server:\n  workers: 0", "workers"),
        ("autoscaling:\n  enabled: yes-please", "enabled"),
        ("ingress:\n  hosts:\n    - paths: []", "host"),
        ("typoKey: 1", "typoKey"),
        ("resources:\n  requests:\n    cpu: lots", "cpu"),
        ("model:\n  mode: image\n  sha256: ABC", "sha256"),
        ("server:\n  defaultOutputs: [predict_log_proba]", "defaultOutputs"),
        ("server:\n  defaultOutputs: []", "defaultOutputs"),
        ("server:\n  trustedTypes: ['os.system; rm']", "trustedTypes"),
        ("commonLabels:\n  app.kubernetes.io/name: other", "app.kubernetes.io/name"),
        ("global:\n  imageRegistry: https://mirror.example.com", "imageRegistry"),
        ("prometheusRule:\n  latency:\n    thresholdSeconds: 0.3", "thresholdSeconds"),
        ("httpRoute:\n  timeouts:\n    request: soon", "request"),
        ("serviceMonitor:\n  scheme: ftp", "scheme"),
        ("extraContainers:\n  - image: x", "name"),
        ("rolloutOn:\n  configMaps: [a, a]", "configMaps"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(tmp_path, binary, values_text, fragment):
    error = template_error(values_text=values_text, tmp_path=tmp_path, binary=binary)
    assert "schema" in error.lower()
    assert fragment in error


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (("model.mode=pvc",), "model.mode=pvc needs model.pvc.size"),
        (("model.mode=existingClaim",), "needs model.existingClaim"),
        (("model.fetch.enabled=true",), "needs a volume to fetch into"),
        (("model.mode=emptyDir", "model.fetch.enabled=true"), "needs model.fetch.url and model.fetch.sha256"),
        (("model.mode=emptyDir",), "enable model.fetch"),
        (
            ("autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=3"),
            "minReplicas (5) must not exceed autoscaling.maxReplicas (3)",
        ),
        (
            ("autoscaling.enabled=true", "autoscaling.targetCPUUtilizationPercentage=null"),
            "needs targetCPUUtilizationPercentage or",
        ),
        (("podDisruptionBudget.enabled=true", "podDisruptionBudget.minAvailable=1"), "not both"),
        (
            ("podDisruptionBudget.enabled=true", "podDisruptionBudget.maxUnavailable=null"),
            "needs minAvailable or maxUnavailable",
        ),
        (("terminationGracePeriodSeconds=10",), "terminationGracePeriodSeconds (10) must exceed"),
        (("service.nodePort=30001",), "service.type is ClusterIP"),
        (("ingress.enabled=true",), "ingress.hosts"),
        (("httpRoute.enabled=true",), "httpRoute.parentRefs"),
        # Silent conflicts: each would render and install, then quietly not work.
        (
            ("serviceMonitor.enabled=true", "networkPolicy.enabled=true"),
            "the policy admits no scraper, so Prometheus gets no metrics; set networkPolicy.metricsScraper.namespace",
        ),
        (
            ("httpRoute.enabled=true", "httpRoute.parentRefs[0].name=gw", "networkPolicy.enabled=true"),
            "drops every request the Gateway forwards; set networkPolicy.gatewayNamespace",
        ),
        (
            (
                "ingress.enabled=true",
                "ingress.hosts[0].host=m.example.com",
                "ingress.hosts[0].paths[0].path=/",
                "networkPolicy.enabled=true",
            ),
            "drops every request the ingress controller forwards; set networkPolicy.ingressControllerNamespace",
        ),
        (
            ("verticalPodAutoscaler.enabled=true", "verticalPodAutoscaler.updateMode=Auto", "autoscaling.enabled=true"),
            "verticalPodAutoscaler.updateMode=Auto resizes the requests the HPA's CPU/memory utilisation targets",
        ),
        (
            (
                "verticalPodAutoscaler.enabled=true",
                "verticalPodAutoscaler.updateMode=Recreate",
                "autoscaling.enabled=true",
                "autoscaling.targetCPUUtilizationPercentage=null",
                "autoscaling.targetMemoryUtilizationPercentage=80",
            ),
            "set verticalPodAutoscaler.updateMode to Off",
        ),
        (("grpc.containerPort=8080",), "grpc.containerPort 8080 is already containerPort or healthPort"),
        (("grpc.containerPort=8082",), "grpc.containerPort 8082 is already containerPort or healthPort"),
        (("grpc.enabled=false", "grpc.probes=true"), "grpc.probes needs grpc.enabled"),
        (("service.port=8081",), "grpc.servicePort 8081 is already the Service's port"),
        (("grpc.probes=true", "tls.enabled=true"), "kubelet's gRPC probes speak no TLS"),
    ],
)
def test_cross_field_checks_fail_with_a_clear_message(sets, fragment):
    assert fragment in template_error(*sets)


@pytest.mark.parametrize(
    "sets",
    [
        ("serviceMonitor.enabled=true", "networkPolicy.enabled=true", "networkPolicy.metricsScraper.namespace=mon"),
        ("verticalPodAutoscaler.enabled=true", "verticalPodAutoscaler.updateMode=Off", "autoscaling.enabled=true"),
        ("verticalPodAutoscaler.enabled=true", "verticalPodAutoscaler.updateMode=Initial", "autoscaling.enabled=true"),
        ("verticalPodAutoscaler.enabled=true", "verticalPodAutoscaler.updateMode=Auto"),
    ],
)
def test_the_fixes_the_messages_name_render(sets):
    assert template(sets=sets)
