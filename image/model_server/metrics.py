"""Prometheus metrics, correct across gunicorn workers.

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the app is imported,
so every worker writes its samples there and ``/metrics`` aggregates them on each scrape.
"""

from __future__ import annotations

import functools

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "model_server_requests_total", "HTTP requests by route, method and status.", ["route", "method", "status"]
)
LATENCY = Histogram(
    "model_server_request_duration_seconds",
    "Request latency by route, from the app's view (excludes socket time).",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ROWS_PREDICTED = Counter("model_server_predicted_rows_total", "Rows predicted, by protocol.", ["protocol"])
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


@functools.cache
def rows_predicted(protocol: str) -> Counter:
    """The rows counter for one protocol (v1 or v2), looked up once."""
    return ROWS_PREDICTED.labels(protocol=protocol)


def exposition(multiprocess_dir: str) -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, aggregated over all workers when multiprocess."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int, multiprocess_dir: str) -> None:
    """Called by gunicorn's child_exit hook so a dead worker's live gauges stop counting."""
    if multiprocess_dir:
        multiprocess.mark_process_dead(pid, multiprocess_dir)
