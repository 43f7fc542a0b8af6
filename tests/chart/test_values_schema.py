"""Bad values fail `helm template` (and so `helm install`) with a message naming the key."""

import pytest

from tests.kube import HELMS, template_error


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
    ],
)
def test_cross_field_checks_fail_with_a_clear_message(sets, fragment):
    assert fragment in template_error(*sets)
