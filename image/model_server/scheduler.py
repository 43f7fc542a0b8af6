"""Where prediction work waits its turn: one bounded queue per worker, served by one executor greenlet.

In a gevent worker every connection's greenlet parses its request, then hands the checked batch to
this worker's queue and waits; one executor greenlet runs the queued work in order. The queue
length is then the worker's backlog, so it can be bounded: past MODEL_SERVER_MAX_QUEUE a request is
refused at once with 503 and ``Retry-After`` instead of waiting behind work it would only add
latency to. Health checks and metrics never enter the queue, so they answer within one executor
step whatever the load.

Outside a gevent worker (sync or gthread workers, tests through Flask's client) there is no event
loop to wait in: work runs inline in the request's own thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from .columns import Batch
from .errors import Overloaded
from .runner import ModelRunner

log = logging.getLogger("model_server.scheduler")

# Any positive delay resumes a greenlet after the event loop's next poll (see fairness.py): between
# two pieces of work, every connection whose request has arrived gets to queue it (or be shed).
_NEXT_LOOP_ITERATION_S = 1e-6


@dataclass(eq=False)
class Job:
    runner: ModelRunner
    batch: Batch
    outputs: tuple[str, ...]
    protocol: str
    done: Any  # gevent.event.AsyncResult
    queued_at: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # the client's greenlet gave up waiting (a deadline fired): skip it


def cooperative() -> bool:
    """True inside a gevent worker (monkey-patched sockets): work can wait in an event loop."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


class Scheduler:
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._queue: deque[Job] = deque()
        self._wake: Any = None
        self._executor: Any = None

    def admit(self) -> None:
        """Refuse at once (Overloaded) when the queue is full: called before a request's body is read or
        parsed, so shedding costs as little as it can."""
        if len(self._queue) >= self.max_queue and cooperative():
            metrics.shed("queue").inc()
            raise Overloaded(
                f"{len(self._queue)} requests are already waiting in this worker (MODEL_SERVER_MAX_QUEUE); "
                "retry in a moment"
            )

    def run(self, runner: ModelRunner, batch: Batch, outputs: tuple[str, ...], protocol: str) -> dict[str, np.ndarray]:
        """The outputs for ``batch``, computed in turn; Overloaded when the queue is full."""
        if not cooperative():
            return runner.run(batch, outputs, protocol)
        self.admit()
        from gevent.event import AsyncResult

        self._start()
        job = Job(runner, batch, outputs, protocol, AsyncResult())
        self._queue.append(job)
        self._wake.set()
        try:
            return job.done.get()
        except BaseException:
            job.abandoned = True  # a deadline or a kill: the executor will not compute it
            raise

    def _start(self) -> None:
        if self._executor is None:
            import gevent
            from gevent.event import Event

            self._wake = Event()
            self._executor = gevent.spawn(self._serve)

    def _serve(self) -> None:
        import gevent

        while True:
            if not self._queue:
                self._wake.clear()
                self._wake.wait()
                continue
            # One turn serves what is queued now (at most max_queue jobs), then lets every connection
            # with a request waiting queue it, be shed, or get its probe answered.
            for _ in range(len(self._queue)):
                job = self._queue.popleft()
                if job.abandoned:
                    continue
                metrics.QUEUE_WAIT.observe(time.perf_counter() - job.queued_at)
                try:
                    job.done.set(job.runner.run(job.batch, job.outputs, job.protocol))
                except Exception as exc:  # the job's own error (a 4xx, or a bug): its request reports it
                    job.done.set_exception(exc)
            gevent.sleep(_NEXT_LOOP_ITERATION_S)
