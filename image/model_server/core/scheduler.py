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
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics, pid
from ..errors import Overloaded
from . import columns
from .columns import Batch
from .runner import ModelRunner

if TYPE_CHECKING:
    from gevent import Greenlet
    from gevent.event import AsyncResult, Event

log = logging.getLogger("model_server.core.scheduler")

# Any positive delay resumes a greenlet after the event loop's next poll (see fairness.py): between
# two turns, every connection whose request has arrived gets to queue it (or be shed).
_NEXT_LOOP_ITERATION_S = 1e-6
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
    """True inside a gevent worker (monkey-patched sockets): work can wait in an event loop. Asked several
    times per request, so answered once per process (a gevent worker patches right after it forks) and
    forgotten in a forked child, without a getpid system call per question."""
    known = _COOPERATIVE.get("answer")
    if known is None:
        try:
            from gevent import monkey
        except ImportError:
            known = False
        else:
            known = bool(monkey.is_module_patched("socket"))
        _COOPERATIVE["answer"] = known
    return known


_COOPERATIVE: dict[str, bool] = {}
os.register_at_fork(after_in_child=_COOPERATIVE.clear)


class Coalesced:
    """``work`` run at most once per ``interval`` seconds however often it is asked for, the last request
    included (a timer, so the end of a burst is not left waiting): requests note cheap state and the work
    does the costly pass. Never two runs at once.

    In a gevent worker the timer is a greenlet. Elsewhere (the sync and gthread workers, tests through Flask's
    client) a request after a quiet interval runs the work at once on its own thread, and one within the
    interval leaves it to a timer thread. (Running it on every request, as it did, cost a gthread worker 10-20 % more
    CPU per gRPC call with drift on, docs/performance.md; and two request threads could count at once.)
    """

    def __init__(self, work: Callable[[], None], interval: float) -> None:
        self.work, self.interval = work, interval
        self._pending = False
        self._last = float("-inf")
        self._lock = threading.Lock()  # the pending flag and the last run, between request threads
        self._running = threading.Lock()  # held by the run in progress
        self._pid = pid.current()

    def request(self) -> None:
        if cooperative():
            if not self._pending:
                import gevent

                self._pending = True
                gevent.spawn_later(max(0.0, self._last + self.interval - time.monotonic()), self._timed_run)
            return
        with self._lock:
            if self._pid != pid.current():  # forked: a timer pending in the parent is not running here
                self._pid, self._pending = pid.current(), False
            if self._pending:
                return
            wait = self._last + self.interval - time.monotonic()
            if wait <= 0:
                self._last = time.monotonic()  # this thread takes the run: others arriving now leave it
            else:
                self._pending = True
        if wait <= 0:
            self.now()
        else:
            timer = threading.Timer(wait, self._timed_run)
            timer.daemon = True
            timer.start()

    def _timed_run(self) -> None:
        """The timer's run (a greenlet in a gevent worker, a thread elsewhere)."""
        with self._lock:
            self._pending = False
            self._last = time.monotonic()
        self.now()

    def now(self) -> None:
        """Run the work at once, alone, for a reader that wants what was noted so far (a scrape); the locks are
        never contended in a gevent worker, where the work does not yield."""
        with self._running:
            self.work()


OVERLOADED = "this worker's prediction queue is full (MODEL_SERVER_MAX_QUEUE requests are waiting); retry in a moment"


def batching_pays(runner: ModelRunner) -> tuple[bool, str]:
    """Whether merging concurrent requests into one model call pays for this model, and why: decided from the
    model and the path that serves it, so every pod serving the same artifact with the same settings decides
    alike. (A load-time timing used to decide; a 100-tree forest's fixed cost measured ~100 us, right at its
    threshold, so pods of one deployment could disagree.)

    A call's cost that does not depend on its rows is what merging shares out: every tree of an ensemble is
    walked whatever the rows, and scikit-learn's own methods check their input (and build a DataFrame)
    per call. Linear arithmetic on the fast path or a compiled plan costs per row (~8 us and ~40 us per call
    in all, measured), less than merging and splitting requests costs.
    """
    from sklearn.base import is_classifier, is_regressor
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    final = runner.final_estimator
    path = runner.description.path
    trees = getattr(final, "n_estimators", None) or getattr(final, "max_iter", None)
    if path.startswith("compiled") or path == "linear fast path":
        if isinstance(final, LinearModel | LinearClassifierMixin):
            return False, f"off: {path} costs per row, and merging would cost more than it shares"
        if isinstance(trees, int) and (is_classifier(final) or is_regressor(final) or hasattr(final, "estimators_")):
            return True, f"up to {DEFAULT_BATCH_ROWS} rows: {path} walks all {trees} trees whatever a call's rows"
    return True, f"up to {DEFAULT_BATCH_ROWS} rows: {path} pays scikit-learn's per-call input checks whatever the rows"


class Scheduler:
    def __init__(self, max_queue: int, max_batch_rows: int = 1, max_batch_delay_s: float = 0.0) -> None:
        self.max_queue = max_queue
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay_s = max_batch_delay_s
        self._queue: deque[Job] = deque()
        self._last_turn_jobs = 0  # jobs the executor's last turn ran: was there company to wait for?
        self._wake: Event | None = None
        self._executor: Greenlet[[Event], None] | None = None

    def full(self, reserved: int = 0) -> bool:
        """Whether a prediction arriving now would be shed (only gevent workers queue); ``reserved`` of the
        queue's places are kept for other requests (the worker's lock-out guard: process/worker.py)."""
        return len(self._queue) >= self.max_queue - reserved and cooperative()

    def admit(self) -> None:
        """Refuse at once (Overloaded) when the queue is full: called before a request's body is read or
        parsed, so shedding costs as little as it can."""
        if self.full():
            metrics.shed("queue").inc()
            raise Overloaded(OVERLOADED)

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
            alone = len(self._queue) == 1 and self._last_turn_jobs <= 1
            if self.max_batch_delay_s and not alone and self._queue_rows() < self.max_batch_rows:
                # Let company arrive, but no request waits longer than the delay in all. A request alone
                # after a turn that was alone too (one client at a time) does not wait: nobody would join.
                oldest = self._queue[0].queued_at
                gevent.sleep(max(0.0, oldest + self.max_batch_delay_s - time.perf_counter()))
            # One turn serves what is queued now (at most max_queue jobs), then lets every connection
            # with a request waiting queue it, be shed, or get its probe answered.
            waiting = [self._queue.popleft() for _ in range(len(self._queue))]
            self._last_turn_jobs = len(waiting)
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
