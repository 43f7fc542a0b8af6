"""Keep-alive fairness for gevent workers: gunicorn.conf.py installs this as the post_request hook.

A gevent worker serves each keep-alive connection in its own greenlet, which reads and answers the
connection's next request as soon as it has arrived. Under load it usually has, so without a yield
one connection is served back to back while the worker's other connections starve.

``gevent.sleep(0)`` is not enough. It re-queues the greenlet as a loop callback, and gevent runs
callbacks in streaks, looking at the clock only every 50 of them: busy connections keep passing
the turn among themselves while a connection whose request arrived in the meantime waits on its
I/O watcher until the streak ends. With 1-row requests that was ~18 ms per streak, and it was the
whole p99 at saturation (``scripts/bench``). A timer of any positive length resumes the greenlet
only in the loop's next iteration, after the poll, so every connection with a request waiting gets
one turn per iteration: round robin across the worker's connections.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from gunicorn.http.message import Request
    from gunicorn.http.wsgi import Response
    from gunicorn.workers.base import Worker

# Any positive delay means "after the next poll"; the smallest one adds no measurable wait.
_NEXT_LOOP_ITERATION_S = 1e-6


def next_turn() -> None:
    """Let every other connection of this worker with a request waiting go first."""
    gevent.sleep(_NEXT_LOOP_ITERATION_S)


def yield_to_other_connections(worker: Worker, req: Request, environ: MutableMapping[str, Any], resp: Response) -> None:
    """post_request hook: let every other ready connection of this worker go first."""
    next_turn()
