"""Load scenarios: sustained load near capacity, 3x overload that queues, 16x overload that sheds."""

from __future__ import annotations

import re
import statistics
import threading
import time
from pathlib import Path

import requests
from msops import local

from bench.harness import CLOCK_TICK, Sample, run_wrk
from bench.reliability.lab import Lab, Result, capacity, metric, timed_get, timed_predict, warm_up, worker_pids

RSS_GROWTH_BOUND = 0.10
PACED_PAUSE_MS = 1  # a whole number: wrk truncates the pause to milliseconds
PACED_CONNECTIONS_MAX = 32
PACED_SEGMENT_S = 3  # the load is re-steered this often
PACED_CALIBRATION_SEGMENTS = 2  # first segments, not counted: the steering finds the rate


def sustained(lab: Lab, seconds: int = 60) -> Result:
    """About 80 % of measured capacity, paced by wrk's per-connection delay; zero errors, bounded RSS."""
    server = lab.server()
    warm_up(lab, server)
    full = capacity(lab, server)
    before = local.rss_mib(worker_pids(server))
    target = 0.8 * full
    # wrk is closed-loop: each connection pauses after every answer. wrk takes the pause in whole
    # milliseconds (a fraction is truncated), so pacing by the pause alone jumps from 100 % to ~50 %
    # of a fast server's capacity: the pause is fixed and the number of connections paces instead, at
    # most PACED_CONNECTIONS_MAX (the default per-worker queue, so pacing can never be what sheds).
    # The load is steered segment by segment: wrk shares the cores with the server (and in CI with
    # whatever else runs), so the rate one number of connections gives drifts over a run; a pacing
    # fixed from short probes once served 56 % of capacity for the whole sample.
    connections = 16
    segments = []
    for index in range(PACED_CALIBRATION_SEGMENTS + max(1, seconds // PACED_SEGMENT_S)):
        segment = run_wrk(server, "v1", 1, lab.scratch, seconds=PACED_SEGMENT_S, connections=connections,
                          delay_ms=PACED_PAUSE_MS)  # fmt: skip
        if index >= PACED_CALIBRATION_SEGMENTS:
            segments.append(segment)
        # Below saturation the rate grows about in proportion to the connections.
        steered = round(connections * target / max(segment.rps, 1.0))
        connections = min(PACED_CONNECTIONS_MAX, max(2, steered))  # wrk wants a connection per thread
    sample = Sample(
        rps=statistics.fmean(segment.rps for segment in segments),
        p50_ms=statistics.median(segment.p50_ms for segment in segments),
        p99_ms=max(segment.p99_ms for segment in segments),
        errors=sum(segment.errors for segment in segments),
        cpu_us=statistics.fmean(segment.cpu_us for segment in segments),
        total=sum(segment.total for segment in segments),
    )
    seconds = PACED_SEGMENT_S * len(segments)
    after = local.rss_mib(worker_pids(server))
    growth = max((a - b) / b for a, b in zip(after, before, strict=True)) if before else 0.0
    share = sample.rps / full
    return Result(
        "sustained load, ~80 % of capacity",
        # The verdict needs a real load (>= 60 % of capacity), zero errors and bounded memory; the
        # pacing aims at 80 % but lands within ~10 % of it, so the served share is reported.
        sample.errors == 0 and growth <= RSS_GROWTH_BOUND and share >= 0.6,
        {
            "capacity req/s": round(full),
            "served req/s": round(sample.rps),
            "share of capacity": f"{share:.0%}",
            "paced connections (last)": f"{connections}, {PACED_PAUSE_MS} ms pause",
            "seconds": seconds,
            "requests": sample.total,
            "errors": sample.errors,
            "p50 ms": round(sample.p50_ms, 2),
            "p99 ms": round(sample.p99_ms, 2),
            "RSS per worker before MiB": [round(x) for x in before],
            "RSS per worker after MiB": [round(x) for x in after],
            "RSS growth": f"{growth:.1%} (bound {RSS_GROWTH_BOUND:.0%})",
        },
    )


RECOVERY_ROUNDS = 3  # paired samples after an overload; the first in which the overloaded server keeps up ends them
RECOVERY_SAMPLE_S = 4
RECOVERED_SHARE = 0.9  # of the twin's speed in the same round
SHED_SHARE_BOUND_3X = 0.005  # of the requests at 3x, shed while one worker holds too many connections


def overload(lab: Lab, seconds: int = 20) -> Result:
    """Three times the connections capacity needs, then recovery to the speed of a fresh twin."""
    server = lab.server()
    warm_up(lab, server)  # the reported capacity is a warm server's (a fresh worker's first seconds run slow)
    baseline = capacity(lab, server)
    shed_before = metric(server, "model_server_shed_requests_total")
    # 16 keep-alive connections saturate 2 workers; 3x that, each sending as fast as answered,
    # offers three times the load the server can serve.
    sample = run_wrk(server, "v1", 1, lab.scratch, seconds=seconds, connections=48, threads=2)
    shed = round(metric(server, "model_server_shed_requests_total") - shed_before)
    live = requests.get(f"{server.base}/v2/health/live", timeout=5).status_code
    # Recovery is judged against a twin: a fresh server of the same configuration, started after the overload and
    # measured in turns with the overloaded one. This builder's speed drifts by 15-35 % over tens of seconds (CI
    # once read 7679 req/s before an overload that served 7304, then 6652, 4838 and 5026 after), so a baseline
    # taken before the overload judges the machine as much as the server; a twin sampled in the same seconds
    # does not. A server that did not recover is slower than its twin in every round; a dip is not: up to
    # RECOVERY_ROUNDS, the best round counts, and the order alternates so neither always runs first.
    twin = lab.server()
    warm_up(lab, twin)
    rounds: list[tuple[float, float]] = []
    while len(rounds) < RECOVERY_ROUNDS and max((a / b for a, b in rounds), default=0.0) < RECOVERED_SHARE:
        order = (server, twin) if len(rounds) % 2 == 0 else (twin, server)
        speed = {each.port: capacity(lab, each, RECOVERY_SAMPLE_S) for each in order}
        rounds.append((speed[server.port], speed[twin.port]))
    best = max(rounds, key=lambda pair: pair[0] / pair[1])
    recovered = best[0] / best[1] >= RECOVERED_SHARE
    # The kernel, not the server, decides which worker accepts each of the 48 connections: now and then one
    # worker holds more connections than its queue admits and sheds some of their requests (a shed keeps its
    # connection, so the imbalance lasts): 0.00-0.12 % of requests in the runs on record, bound at 0.5 %.
    return Result(
        "overload, 3x the saturating concurrency",
        sample.errors == shed and shed <= SHED_SHARE_BOUND_3X * sample.total and live == 200 and recovered,
        {
            "capacity req/s": round(baseline),
            "served under overload req/s": round(sample.rps),
            "requests": sample.total,
            "shed (503 + Retry-After)": shed,
            "other non-2xx or socket errors": sample.errors - shed,
            "p50 ms": round(sample.p50_ms, 2),
            "p99 ms": round(sample.p99_ms, 2),
            "capacity after req/s, overloaded server / fresh twin, by round": [
                f"{round(a)} / {round(b)}" for a, b in rounds
            ],
            "share of the twin's speed (best round)": f"{best[0] / best[1]:.0%} (floor {RECOVERED_SHARE:.0%})",
        },
        "3x is within what the workers' queues (MODEL_SERVER_MAX_QUEUE each) absorb: every answer is a 200, "
        "except at most 0.5 % shed while the kernel has handed one worker more connections than its queue "
        "holds. Past it the server sheds (the 16x scenario). Afterwards it must serve at 90 % of the speed of a "
        "fresh server of the same configuration, measured in turns with it.",
    )


def _status_script(scratch: Path) -> Path:
    """wrk's own body script plus per-status counts, printed at the end."""
    from bench.harness import wrk_script

    script = scratch / "statuses.lua"
    script.write_text(
        wrk_script(scratch, "v1", 1).read_text() + "local threads = {}\n"
        "function setup(thread) table.insert(threads, thread) end\n"
        "function init(args) statuses = {} end\n"
        "function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end\n"
        "function done(summary, latency, requests)\n"
        "  local total = {}\n"
        "  for _, t in ipairs(threads) do\n"
        "    for k, v in pairs(t:get('statuses')) do total[k] = (total[k] or 0) + v end\n"
        "  end\n"
        "  for k, v in pairs(total) do io.write(string.format('status %d %d\\n', k, v)) end\n"
        "end\n"
    )
    return script


# Predictions served under 16x overload, as a share of the unloaded maximum. The lock-out guard trades a few
# points of it for fairness (the sheds rotate among more connections): eight runs here read 81-94 % with it,
# 85-93 % without, and CI once read 78 % against a single high baseline sample; the floor catches a collapse.
GOODPUT_FLOOR = 0.75
ADMITTED_P99_BOUND_MS = 250.0  # p99 of an admitted prediction's latency under 16x overload
# Of the sampling clients' attempts, the share admitted. Each waits 200 ms after a 503; a server that lets the
# connections it just served take their places again locks them out. With SAMPLING_CLIENTS clients, ~105
# attempts a run: 47 to 59 % admitted over eight runs with the worker's lock-out guard, 0 to 10 % over three
# without it (one client's ~55 attempts read 50 % in CI: too few to put the floor near the middle).
SAMPLED_ADMITTED_FLOOR = 0.35
SAMPLING_CLIENTS = 2
SHED_P99_BOUND_MS = 50.0  # p99 of the time a shed request waits for its 503


def overload_16x(lab: Lab, seconds: int = 15) -> Result:
    """16 times the benchmark's concurrency: only 200s and fast 503s, probes prompt, admitted p99 bounded,
    and most of the unloaded throughput still spent on predictions (goodput)."""
    import subprocess

    server = lab.server()
    warm_up(lab, server, seconds=2)
    unloaded_before = run_wrk(server, "v1", 1, lab.scratch, seconds=5)
    before = local.rss_mib(worker_pids(server))
    ticks_before = sum(server.cpu_ticks().values())
    connections = 16 * 16
    wrk = subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(_status_script(lab.scratch)),
         server.url("v1")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1)
    probes: list[tuple[int | str, float]] = []
    admitted: list[float] = []
    shed_ms: list[float] = []
    statuses: dict[int | str, int] = {}
    deadline = time.monotonic() + seconds - 2

    lock = threading.Lock()

    def sample_predictions() -> None:
        # More clients beside wrk's, one request at a time each: the latency an admitted (or shed) request sees.
        session = requests.Session()
        while time.monotonic() < deadline:
            status, elapsed = timed_predict(session, f"{server.base}/predict")
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                (admitted if status == 200 else shed_ms).append(elapsed * 1000)
            if status == 503:
                # A client honouring Retry-After a little; longer than the pause the worker takes before it
                # reads this connection again, so the next sample measures the server, not that pause.
                time.sleep(0.2)

    samplers = [threading.Thread(target=sample_predictions) for _ in range(SAMPLING_CLIENTS)]
    for sampler in samplers:
        sampler.start()
    while time.monotonic() < deadline:
        probes.append(timed_get(f"{server.base}/v2/health/live"))
        time.sleep(0.2)
    for sampler in samplers:
        sampler.join(30)
    out, _ = wrk.communicate(timeout=seconds + 60)
    cpu_s = (sum(server.cpu_ticks().values()) - ticks_before) / CLOCK_TICK
    after = local.rss_mib(worker_pids(server))
    # The unloaded maximum brackets the overload, one 5 s sample before and one after: wrk shares the 2 cores
    # with the server (and in CI with whatever else runs), so one sample drifts. CI once read 8999 req/s
    # before an overload that served 6990 (78 %), where runs here read 7200-8000 before and served 6600-7300.
    unloaded_after = run_wrk(server, "v1", 1, lab.scratch, seconds=5)
    unloaded = statistics.fmean((unloaded_before.rps, unloaded_after.rps))
    unloaded_cpu_us = statistics.fmean((unloaded_before.cpu_us, unloaded_after.cpu_us))
    counts = {int(k): int(v) for k, v in re.findall(r"^status (\d+) (\d+)$", out, re.MULTILINE)}
    socket_errors = re.search(r"Socket errors: (.*)", out)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    shed = metric(server, "model_server_shed_requests_total")
    slowest_probe = max(seconds for _, seconds in probes)
    growth = max((a - b) / b for a, b in zip(after, before, strict=True))
    p99_admitted = _p99(admitted)
    p99_shed = _p99(shed_ms)
    goodput = counts.get(200, 0) / seconds
    share = goodput / unloaded
    # What a shed costs: the run's server CPU less what its predictions cost at the unloaded rate, per shed.
    served, shed_count = counts.get(200, 0), counts.get(503, 0)
    per_shed_us = (cpu_s - served * unloaded_cpu_us / 1e6) / shed_count * 1e6 if shed_count else float("nan")
    only_200_503 = set(counts) <= {200, 503} and set(statuses) <= {200, 503}
    sampled_share = len(admitted) / max(1, len(admitted) + len(shed_ms))
    return Result(
        "overload, 16x the benchmark's concurrency",
        only_200_503
        and socket_errors is None
        and all(status == 200 for status, _ in probes)
        and slowest_probe < 1
        and growth <= 0.5
        and share >= GOODPUT_FLOOR
        and p99_admitted < ADMITTED_P99_BOUND_MS
        and sampled_share >= SAMPLED_ADMITTED_FLOOR
        and (not shed_ms or p99_shed < SHED_P99_BOUND_MS),
        {
            "connections": connections,
            "unloaded maximum (16 connections) req/s": (
                f"{unloaded:.0f} (before {unloaded_before.rps:.0f}, after {unloaded_after.rps:.0f})"
            ),
            "predictions served under 16x req/s": round(goodput),
            "goodput": f"{share:.0%} of the unloaded maximum (floor {GOODPUT_FLOOR:.0%})",
            "server CPU per prediction, unloaded µs": round(unloaded_cpu_us),
            "server CPU per shed, estimated µs": round(per_shed_us),
            "answers by status": dict(sorted(counts.items())),
            "socket errors": socket_errors.group(1) if socket_errors else 0,
            "p50 / p99 of all answers ms": f"{percentiles.get('50')} / {percentiles.get('99')}",
            "p99 of admitted (200) predictions, sampled ms": (
                f"{p99_admitted:.2f} of {len(admitted)} (bound {ADMITTED_P99_BOUND_MS:g})"
            ),
            "sampled client admitted": (
                f"{len(admitted)} of {len(admitted) + len(shed_ms)} (floor {SAMPLED_ADMITTED_FLOOR:.0%})"
            ),
            "p99 of shed (503) answers, sampled ms": f"{p99_shed:.2f} of {len(shed_ms)} (bound {SHED_P99_BOUND_MS:g})",
            "shed (503 + Retry-After), from /metrics": round(shed),
            "liveness probes": len(probes),
            "slowest probe s": round(slowest_probe, 3),
            "RSS per worker before / after MiB": f"{[round(x) for x in before]} / {[round(x) for x in after]}",
        },
        "Each worker queues at most MODEL_SERVER_MAX_QUEUE predictions; past that the worker answers a request "
        "with a ready-made 503 + Retry-After: 1 as soon as its head is parsed (no WSGI request, no body read), and "
        "reads that connection's next request only after a 100 ms pause, so clients that retry at once cannot "
        "turn the worker's time into sheds; while connections are being shed, the ones just served leave a "
        "quarter of the queue to them, so no client is locked out. Probes never queue. The admitted and shed "
        "latencies are from clients sending one request at a time each beside wrk's load.",
    )


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 20 else (max(values) if values else float("nan"))
