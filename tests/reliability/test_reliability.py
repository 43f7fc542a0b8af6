"""The reliability scenarios (bench/reliability.py), shortened, as slow tests; scripts/reliability runs them in full."""

from __future__ import annotations

import shutil

import pytest

from bench import reliability

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
]


@pytest.fixture
def lab():
    lab = reliability.Lab()
    yield lab
    lab.close()


def check(result: reliability.Result) -> None:
    assert result.passed, f"{result.name}: {result.figures}"


def test_sustained_load_has_no_errors_and_bounded_memory(lab):
    check(reliability.sustained(lab, seconds=15))


def test_overload_queues_without_errors_and_recovers(lab):
    check(reliability.overload(lab, seconds=8))


def test_sigterm_under_load_fails_no_accepted_request(lab):
    check(reliability.sigterm_under_load(lab))


def test_sigkill_of_a_worker_is_survived(lab):
    check(reliability.sigkill_worker_under_load(lab))


@pytest.mark.parametrize("fault", reliability.FAULTS)
def test_broken_artifacts_keep_the_server_live_not_ready_then_recover(lab, fault):
    check(reliability.artifact_fault(lab, fault))


def test_slow_clients_do_not_block_fast_ones(lab):
    check(reliability.slow_clients(lab))


def test_stuck_header_connections_never_block_probes_and_are_closed(lab):
    check(reliability.stuck_headers(lab, connections=300, hold=20))


def test_sixteen_times_overload_sheds_with_503_and_probes_stay_prompt(lab):
    check(reliability.overload_16x(lab, seconds=8))


def test_sigterm_under_keepalive_load_fails_nothing_three_times(lab):
    check(reliability.sigterm_keepalive_trials(lab, trials=3))


def test_hostile_bodies_all_get_4xx(lab):
    check(reliability.hostile_corpus(lab))


def test_schemathesis_finds_no_5xx_and_no_schema_violation(lab):
    check(reliability.schemathesis_run(lab, examples=100))
