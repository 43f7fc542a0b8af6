"""Where prediction work waits its turn: one bounded queue per worker, served by one executor greenlet
that merges concurrent requests into one model call where that pays.

In a gevent worker every connection's greenlet parses its request, then hands the checked batch to
this worker's queue and waits; one executor greenlet runs the queued work in turns. The queue
length is the worker's backlog, so it can be bounded: past MODEL_SERVER_MAX_QUEUE a request is
refused at once with 503 and ``Retry-After`` instead of waiting behind work it would only add
latency to. Health checks and metrics never enter the queue, so they answer within one turn.

**Adaptive batching.** A model call has a fixed cost (a forest walks every tree whatever the row
count) and a cost per row. Where the fixed cost dominates, the executor concatenates the rows of
the requests waiting for the same outputs (up to MODEL_SERVER_MAX_BATCH_SIZE rows), calls the model
once and splits the answer back; with MODEL_SERVER_MAX_BATCH_DELAY_MS it may wait that long for
company. A merged call that fails is retried request by request, so one bad request fails alone.
Whether batching pays is measured when the model loads (``batching_pays``): for the linear fast
path the model call is a few microseconds, less than merging and splitting, so it stays off.

Outside a gevent worker (sync or gthread workers, tests through Flask's client) there is no event
loop to wait in: work runs inline in the request's own thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import columns, metrics
from .columns import Batch
from .errors import Overloaded
from .runner import ModelRunner

if TYPE_CHECKING:
    from gevent import Greenlet
    from gevent.event import AsyncResult, Event

log = logging.getLogger("model_server.scheduler")

# Any positive delay resumes a greenlet after the event loop's next poll (see fairness.py): between
# two turns, every connection whose request has arrived gets to queue it (or be shed).
_NEXT_LOOP_ITERATION_S = 1e-6
# Batching pays when a call's fixed cost is more than what merging and splitting a request costs.
FIXED_COST_WORTH_BATCHING_S = 100e-6
DEFAULT_BATCH_ROWS = 64


@dataclass(eq=False)
class Job:
    runner: ModelRunner
    batch: Batch
    outputs: tuple[str, ...]
    done: AsyncResult[dict[str, np.ndarray]]
    queued_at: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # the client's greenlet gave up waiting (a deadline fired): skip it


def cooperative() -> bool:
    """True inside a gevent worker (monkey-patched sockets): work can wait in an event loop."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


def batching_pays(runner: ModelRunner, outputs: tuple[str, ...], repeats: int = 5) -> tuple[bool, float]:
    """Time the model on 1 and 32 example rows: (whether a call's fixed cost is worth merging calls
    for, that fixed cost in seconds)."""

    def best(rows: int) -> float:
        batch = runner.example_batch(rows)
        runner.run(batch, outputs)  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            runner.run(batch, outputs)
            times.append(time.perf_counter() - started)
        return min(times)

    one, many = best(1), best(32)
    fixed = one - (many - one) / 31
    return fixed > FIXED_COST_WORTH_BATCHING_S, fixed


class Scheduler:
    def __init__(self, max_queue: int, max_batch_rows: int = 1, max_batch_delay_s: float = 0.0) -> None:
        self.max_queue = max_queue
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay_s = max_batch_delay_s
        self._queue: deque[Job] = deque()
        self._wake: Event | None = None
        self._executor: Greenlet[[Event], None] | None = None

    def admit(self) -> None:
        """Refuse at once (Overloaded) when the queue is full: called before a request's body is read or
        parsed, so shedding costs as little as it can."""
        if len(self._queue) >= self.max_queue and cooperative():
            metrics.shed("queue").inc()
            raise Overloaded(
                f"{len(self._queue)} requests are already waiting in this worker (MODEL_SERVER_MAX_QUEUE); "
                "retry in a moment"
            )

    def run(self, runner: ModelRunner, batch: Batch, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The outputs for ``batch``, computed in turn; Overloaded when the queue is full."""
        if not cooperative():
            return runner.run(batch, outputs)
        self.admit()
        from gevent.event import AsyncResult

        wake = self._start()
        job = Job(runner, batch, outputs, AsyncResult())
        self._queue.append(job)
        wake.set()
        try:
            result = job.done.get()
        except BaseException:
            job.abandoned = True  # a deadline or a kill: the executor will not compute it
            raise
        assert result is not None  # the executor sets every job's outputs or its exception
        return result

    def _start(self) -> Event:
        """The executor's wake-up event, the executor started first where it is not running."""
        if self._wake is None or self._executor is None or self._executor.dead:
            import gevent
            from gevent.event import Event

            self._wake = Event()
            self._executor = gevent.spawn(self._serve, self._wake)
        return self._wake

    def _serve(self, wake: Event) -> None:
        import gevent

        while True:
            if not self._queue:
                wake.clear()
                wake.wait()
                continue
            if self.max_batch_delay_s and self._queue_rows() < self.max_batch_rows:
                # Let company arrive, but no request waits longer than the delay in all.
                oldest = self._queue[0].queued_at
                gevent.sleep(max(0.0, oldest + self.max_batch_delay_s - time.perf_counter()))
            # One turn serves what is queued now (at most max_queue jobs), then lets every connection
            # with a request waiting queue it, be shed, or get its probe answered.
            waiting = [self._queue.popleft() for _ in range(len(self._queue))]
            try:
                for group in self._groups([job for job in waiting if not job.abandoned]):
                    self._run(group)
            except Exception as exc:  # a bug in the executor itself: fail this turn's requests, keep serving
                log.exception("prediction executor failed a turn")
                for job in waiting:
                    if not job.done.ready():
                        job.done.set_exception(exc)
            gevent.sleep(_NEXT_LOOP_ITERATION_S)

    def _queue_rows(self) -> int:
        return sum(job.batch.rows for job in self._queue)

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs for the same model and outputs, merged up to the batch size; in queue order otherwise."""
        groups: list[list[Job]] = []
        open_groups: dict[tuple[int, tuple[str, ...]], tuple[list[Job], int]] = {}
        for job in jobs:
            key = (id(job.runner), job.outputs)
            current = open_groups.get(key)
            if current is not None and current[1] + job.batch.rows <= self.max_batch_rows:
                current[0].append(job)
                open_groups[key] = (current[0], current[1] + job.batch.rows)
                continue
            group = [job]
            groups.append(group)
            open_groups[key] = (group, job.batch.rows)
        return groups

    def _run(self, group: list[Job]) -> None:
        now = time.perf_counter()
        for job in group:
            metrics.QUEUE_WAIT.observe(now - job.queued_at)
        if len(group) > 1:
            runner, outputs = group[0].runner, group[0].outputs
            try:
                merged = runner.run(columns.concat([job.batch for job in group], runner.signature), outputs)
            except Exception:
                metrics.BATCH_SPLITS.inc()
                log.debug("a merged batch of %d requests failed; running them one by one", len(group))
            else:
                metrics.BATCH_ROWS.observe(sum(job.batch.rows for job in group))
                metrics.BATCH_REQUESTS.observe(len(group))
                start = 0
                for job in group:
                    end = start + job.batch.rows
                    job.done.set({name: values[start:end] for name, values in merged.items()})
                    start = end
                return
        for job in group:
            metrics.BATCH_ROWS.observe(job.batch.rows)
            metrics.BATCH_REQUESTS.observe(1)
            try:
                job.done.set(job.runner.run(job.batch, job.outputs))
            except Exception as exc:  # the job's own error (a 4xx, or a bug): its request reports it
                job.done.set_exception(exc)
