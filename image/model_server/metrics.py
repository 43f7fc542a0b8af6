"""Prometheus metrics, correct across gunicorn workers.

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the app is imported,
so every worker writes its samples there and ``/metrics`` aggregates them on each scrape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

from . import pid

# Multiprocess values ask which process they are in on every update, several per request: answered without a
# getpid system call each (pid.py). Set before any metric below is created.
if getattr(values.ValueClass, "_multiprocess", False):
    _multiprocess_value: Callable[..., Any] = values.MultiProcessValue  # untyped in prometheus_client
    values.ValueClass = _multiprocess_value(process_identifier=pid.current)

REQUESTS = Counter(
    "model_server_requests_total", "HTTP requests by route, method and status.", ["route", "method", "status"]
)
LATENCY = Histogram(
    "model_server_request_duration_seconds",
    "Request latency by route, from the app's view (excludes socket time).",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ROWS_PREDICTED = Counter(
    "model_server_predicted_rows_total", "Rows predicted, by protocol (v1, v2, grpc).", ["protocol"]
)
MODEL_INFO = Gauge(
    "model_server_model_info",
    "The loaded model's name and version (value 1).",
    ["name", "version"],
    multiprocess_mode="max",
)
MODEL_READY = Gauge(
    "model_server_model_ready",
    "1 when a verified model is loaded and answering, 0 while none is (the artifact was refused).",
    multiprocess_mode="livemax",
)
MODEL_LOAD_FAILURES = Counter(
    "model_server_model_load_failures_total", "Attempts to load a model artifact that failed."
)


DRIFT_WINDOW_ROWS = Gauge(
    "model_server_drift_window_rows",
    "Rows of each worker's recent window per input column and drift bin (summed over live workers); "
    "model_server_feature_drift is computed from these.",
    ["column", "bin"],
    multiprocess_mode="livesum",
)
SHED_REQUESTS = Counter(
    "model_server_shed_requests_total",
    "Requests refused with 503 and Retry-After to keep latency bounded: the worker's prediction queue was "
    "full (reason=queue) or it held its most connections (reason=connections).",
    ["reason"],
)
QUEUE_WAIT = Histogram(
    "model_server_queue_wait_seconds",
    "Time a prediction waited in its worker's queue before the model ran it.",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BATCH_ROWS = Histogram(
    "model_server_batch_rows",
    "Rows per model call: several requests' rows when adaptive batching merged them.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10000),
)
BATCH_REQUESTS = Histogram(
    "model_server_batch_requests",
    "Requests answered by one model call (1: not merged).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_SPLITS = Counter(
    "model_server_batch_splits_total",
    "Merged model calls that failed (usually one request's bad input) and were answered one request at a "
    "time, so each request got its own answer or error.",
)
TLS_HANDSHAKE_FAILURES = Counter(
    "model_server_tls_handshake_failures_total",
    "TLS handshakes refused or abandoned, by reason: no client certificate where mutual TLS requires one, a "
    "client certificate the CA did not sign, plaintext to a TLS port, a protocol or cipher refused, a stall.",
    ["reason"],
)
FEATURE_DRIFT = "model_server_feature_drift"
FEATURE_DRIFT_HELP = (
    "Population stability index (PSI) of each input column: its distribution over the recent window "
    "against the training distribution. Under 0.1 calm, 0.1-0.25 moderate, over 0.25 a large shift."
)


@functools.cache
def drift_bin(column: str, label: str) -> Gauge:
    """The window-rows gauge of one column's bin (columns and bins come from the artifact: bounded)."""
    return DRIFT_WINDOW_ROWS.labels(column=column, bin=label)


@functools.cache
def shed(reason: str) -> Counter:
    """The shed-requests counter for one reason (queue or connections)."""
    return SHED_REQUESTS.labels(reason=reason)


@functools.cache
def tls_handshake_failure(reason: str) -> Counter:
    """The handshake-failures counter for one reason (a fixed set: worker._handshake_failure)."""
    return TLS_HANDSHAKE_FAILURES.labels(reason=reason)


@functools.cache
def rows_predicted(protocol: str) -> Counter:
    """The rows counter for one protocol (v1, v2 or grpc), looked up once."""
    return ROWS_PREDICTED.labels(protocol=protocol)


def exposition(multiprocess_dir: str, drift_scores: DriftScores | None = None) -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, aggregated over all workers when multiprocess;
    with ``drift_scores``, the PSI per column computed from the aggregated window counts."""
    if multiprocess_dir:
        registry: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    families = list(registry.collect())
    if drift_scores is not None:
        counts = {
            (s.labels["column"], s.labels["bin"]): s.value
            for family in families
            if family.name == DRIFT_WINDOW_ROWS._name
            for s in family.samples
        }
        drift = GaugeMetricFamily(FEATURE_DRIFT, FEATURE_DRIFT_HELP, labels=["column"])
        for column, score in drift_scores(counts):
            drift.add_metric([column], score)
        families.append(drift)
    return generate_latest(_Families(families)), CONTENT_TYPE_LATEST


DriftScores = Callable[[dict[tuple[str, str], float]], Iterable[tuple[str, float]]]


class _Families:
    """Metric families already collected, in the shape generate_latest reads."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterable[Any]:
        return iter(self._families)


def worker_exited(pid: int, multiprocess_dir: str) -> None:
    """Called by gunicorn's child_exit hook so a dead worker's live gauges stop counting."""
    if multiprocess_dir:
        multiprocess.mark_process_dead(pid, multiprocess_dir)
