"""kube-score and checkov over the chart: what they would report if the chart lost a fix, and how excuses work."""

from pathlib import Path

import pytest
from msops import OpsError, environments, scorers, validate

from tests.kube import CHART, ROOT, helm

PVC = "chart/ci/pvc-values.yaml"


def rendering(*sets: str, values: str = PVC, where: str = "chart/ci/pvc-values.yaml") -> scorers.Rendering:
    args = ["template", "ci-pvc", str(CHART), "--namespace", "ci-pvc", "--values", str(ROOT / values)]
    for item in sets:
        args += ["--set", item]
    return scorers.Rendering(where, helm(*args).stdout)


def unjustified(tool: str, *renderings: scorers.Rendering) -> list[str]:
    """The findings no excuse covers, each as (where, kind, container, check) joined for easy assertions."""
    (result,) = scorers.score(list(renderings), (tool,), complete=False)
    return [f"{f.where} {f.kind} {f.container} {f.check}" for f in result.unjustified]


def test_the_ci_values_files_pass_kube_score():
    assert unjustified(scorers.KUBE_SCORE, *validate.chart_values_renderings(environments.load())) == []


@pytest.mark.parametrize(
    ("sets", "finding"),
    [
        (
            ("resources.limits.ephemeral-storage=null",),
            "Deployment server container-ephemeral-storage-request-and-limit",
        ),
        (
            ("tests.resources.requests.ephemeral-storage=null",),
            "Pod smoke container-ephemeral-storage-request-and-limit",
        ),
        (("tests.resources.limits.cpu=null",), "Pod smoke container-resources"),
        (("model.fetch.resources.limits.cpu=null",), "Deployment fetch-model container-resources"),
        (("networkPolicy.egress.enabled=false",), "Pod  pod-networkpolicy"),
        (("networkPolicy.enabled=false",), "Pod  pod-networkpolicy"),
        (("podAntiAffinityPreset=",), "Deployment  deployment-has-host-podantiaffinity"),
        # Without a digest the pull-policy excuse no longer holds: a tag can move.
        (("image.digest=",), "Deployment server container-image-pull-policy"),
    ],
)
def test_kube_score_reports_what_the_chart_would_lose(sets, finding):
    assert f"{PVC} {finding}" in unjustified(scorers.KUBE_SCORE, rendering(*sets))


def test_kube_score_reports_a_server_without_egress_filtering():
    # pvc-values lists extraEgress, which keeps egress filtered; emptydir-fetch-values does not.
    values = "chart/ci/emptydir-fetch-values.yaml"
    found = unjustified(
        scorers.KUBE_SCORE, rendering("networkPolicy.egress.enabled=false", values=values, where=values)
    )
    assert found == [f"{values} Deployment  pod-networkpolicy"]


def test_checkov_reports_what_the_chart_would_lose():
    # One checkov run (it takes seconds to start): the test Pod loses its CPU limit, the image its
    # digest, and the release its NetworkPolicies.
    broken = rendering("tests.resources.limits.cpu=null", "image.digest=", "networkPolicy.enabled=false")
    found = set(unjustified(scorers.CHECKOV, broken))
    assert {
        "chart/ci/pvc-values.yaml Pod  CKV_K8S_11",  # CPU limits
        "chart/ci/pvc-values.yaml Pod  CKV_K8S_43",  # image by digest
        "chart/ci/pvc-values.yaml Deployment  CKV_K8S_43",
        "chart/ci/pvc-values.yaml Pod  CKV2_K8S_6",  # a pod without a NetworkPolicy
    } <= found, found


def test_checkov_never_lets_one_environments_policy_vouch_for_anothers_pods(tmp_path):
    # Every environment names its releases alike; checkov matches policies to pods by labels only.
    with_policy = rendering(where="prod/diabetes")
    without = rendering("networkPolicy.enabled=false", where="dev/diabetes")
    files = scorers._write([with_policy, without], tmp_path)
    assert len(scorers._separate(files)) == 2
    assert "dev/diabetes Pod  CKV2_K8S_6" in unjustified(scorers.CHECKOV, with_policy, without)


def test_validate_names_the_values_file_the_object_the_container_and_the_check():
    report = validate.Report()
    validate.add_scores(
        report, [rendering("resources.requests.ephemeral-storage=null")], (scorers.KUBE_SCORE,), ROOT, False
    )
    assert report.failures == [
        "chart/ci/pvc-values.yaml: Deployment ci-pvc-model-server (container server): kube-score "
        "container-ephemeral-storage-request-and-limit: Ephemeral Storage request is not set "
        "(fix it, or excuse it with a reason in scorers/kube-score.yaml)"
    ]


def scratch_root(tmp_path: Path, kube_score_yaml: str) -> Path:
    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "kube-score.yaml").write_text(kube_score_yaml)
    return tmp_path


def test_an_excuse_that_excuses_nothing_fails_a_complete_run(tmp_path):
    current = (ROOT / "scorers" / "kube-score.yaml").read_text()
    stale = (
        "  - check: container-resources\n    renderings: [chart/ci/*]\n    reason: the chart once lacked these limits\n"
    )
    root = scratch_root(tmp_path, current + stale)
    (result,) = scorers.score(validate.chart_values_renderings(environments.load()), (scorers.KUBE_SCORE,), root)
    assert sorted(i.describe() for i in result.unused) == [
        "container-resources (renderings=chart/ci/*)",
        "deployment-replicas (renderings=dev/*)",  # no environment in this run
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - check: service-type\n", "'reason' must say why"),
        ("  - check: service-type\n    reason: too short\n", "'reason' must say why"),
        ("  - check: service-type\n    reason: a b c d e\n    kind: [Service]\n", "unknown key"),
        ("  - reason: a b c d e\n", "'check' must name the check"),
        ("  - check: service-type\n    reason: a b c d e\n    digestPinned: yes please\n", "'digestPinned'"),
    ],
)
def test_an_excuse_without_a_check_a_reason_or_a_known_scope_is_refused(tmp_path, entry, message):
    root = scratch_root(tmp_path, "ignore:\n" + entry)
    with pytest.raises(OpsError, match=message):
        scorers.load_ignores(scorers.KUBE_SCORE, root)


def test_every_excuse_in_the_repository_has_a_check_a_reason_and_a_scope():
    for tool in scorers.TOOLS:
        for ignore in scorers.load_ignores(tool):
            assert ignore.kinds or ignore.labels or ignore.renderings or ignore.digest_pinned, ignore.describe()


def test_a_scope_must_hold_entirely_for_an_excuse_to_apply():
    ignore = scorers.Ignore("CKV_K8S_8", "why", kinds=("Pod",), labels=(("app.kubernetes.io/component", "test"),))
    test_pod = {"kind": "Pod", "metadata": {"name": "t", "labels": {"app.kubernetes.io/component": "test"}}}
    other_pod = {"kind": "Pod", "metadata": {"name": "o", "labels": {"app.kubernetes.io/component": "server"}}}
    finding = scorers.Finding(scorers.CHECKOV, "dev/x", "Pod", "t", "CKV_K8S_8", "Liveness Probe")
    assert ignore.covers(finding, [test_pod, other_pod])
    assert not ignore.covers(finding.__class__(**{**finding.__dict__, "name": "o"}), [test_pod, other_pod])
    assert not ignore.covers(finding.__class__(**{**finding.__dict__, "kind": "Deployment"}), [test_pod])
    assert not ignore.covers(finding.__class__(**{**finding.__dict__, "check": "CKV_K8S_9"}), [test_pod])


def test_the_digest_excuse_looks_at_the_container_the_finding_names():
    ignore = scorers.Ignore("container-image-pull-policy", "why", digest_pinned=True)
    pod = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "pinned", "image": "r/i:1@sha256:" + "a" * 64},
                        {"name": "tagged", "image": "busybox:1.37"},
                    ]
                }
            }
        },
    }
    finding = scorers.Finding(scorers.KUBE_SCORE, "x", "Deployment", "d", "container-image-pull-policy", "m", "pinned")
    assert ignore.covers(finding, [pod])
    assert not ignore.covers(finding.__class__(**{**finding.__dict__, "container": "tagged"}), [pod])
    # checkov names no container: every container must be pinned.
    assert not ignore.covers(finding.__class__(**{**finding.__dict__, "container": ""}), [pod])
