"""The reliability scenarios (bench/reliability) at their quick lengths, as slow tests; scripts/reliability runs them
in full. The lengths are the registry's (SCENARIOS[name].quick), the same as scripts/reliability --quick."""

from __future__ import annotations

import pytest

from bench.reliability.__main__ import SCENARIOS
from bench.reliability.artifacts import FAULTS
from bench.reliability.lab import Lab, Result

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("wrk", install="apt-get install wrk; scripts/test does it as root"),
]


@pytest.fixture
def lab():
    lab = Lab()
    yield lab
    lab.close()


def check(result: Result) -> None:
    assert result.passed, f"{result.name}: {result.figures}"


def test_sustained_load_has_no_errors_and_bounded_memory(lab):
    check(SCENARIOS["sustained"].quick(lab))


def test_overload_queues_without_errors_and_recovers(lab):
    check(SCENARIOS["overload"].quick(lab))


def test_sigterm_under_load_fails_no_accepted_request(lab):
    check(SCENARIOS["sigterm"].quick(lab))


def test_sigkill_of_a_worker_is_survived(lab):
    check(SCENARIOS["sigkill"].quick(lab))


@pytest.mark.parametrize("fault", FAULTS)
def test_broken_artifacts_keep_the_server_live_not_ready_then_recover(lab, fault):
    check(SCENARIOS[f"artifact-{fault.replace(' ', '-')}"].quick(lab))


def test_slow_clients_do_not_block_fast_ones(lab):
    check(SCENARIOS["slow-clients"].quick(lab))


def test_stuck_header_connections_never_block_probes_and_are_closed(lab):
    check(SCENARIOS["stuck-headers"].quick(lab))


def test_sixteen_times_overload_sheds_with_503_and_probes_stay_prompt(lab):
    check(SCENARIOS["overload-16x"].quick(lab))


def test_probes_on_the_health_port_answer_past_twice_the_connection_cap(lab):
    check(SCENARIOS["connection-cap"].quick(lab))


def test_a_thousand_slow_maximal_bodies_stay_within_the_body_budget(lab):
    check(SCENARIOS["slow-bodies"].quick(lab))


def test_workers_leaving_alone_under_keepalive_load_fail_no_request(lab):
    check(SCENARIOS["worker-exits"].quick(lab))


def test_sigterm_under_keepalive_load_fails_nothing_three_times(lab):
    check(SCENARIOS["sigterm-keepalive"].quick(lab))


def test_hostile_bodies_all_get_4xx(lab):
    check(SCENARIOS["hostile-corpus"].quick(lab))


def test_schemathesis_finds_no_5xx_and_no_schema_violation(lab):
    check(SCENARIOS["schemathesis"].quick(lab))
