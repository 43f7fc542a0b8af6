"""What a worker lets in before any prediction work: request bodies within a byte budget.

A body is read whole before it is parsed, so every connection in the middle of sending one holds its
bytes. Without a bound, a few hundred clients that declare a maximal body, send most of it and stall
hold gigabytes between them (measured: 300 such connections took a 2-worker server from 473 to 1431
MiB). Each worker therefore holds at most MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES of large request
bodies at once, counted from the moment a body starts being read until its request is answered; a
body that would pass it is refused with 503 and ``Retry-After`` before a byte of it is read, and
its connection is closed (its unread rest would otherwise have to be read to find the next request).

Small bodies (up to 64 KiB: a 1-row request is ~200 bytes, a 100-row one ~20 KiB) are not counted.
Otherwise a handful of stalled maximal uploads would hold the whole budget for their body deadline
and every ordinary request would be refused behind them; the connection cap already bounds what
small bodies can hold (MODEL_SERVER_WORKER_CONNECTIONS x 64 KiB).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.types import WSGIEnvironment

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_content_length

from .. import metrics
from ..errors import BodyBudgetExceeded

# Set in the environ when the connection must close after the answer: the request's body was refused
# unread. worker.after_request (gunicorn's post_request hook) acts on it.
CLOSE_CONNECTION_ENVIRON_KEY = "model_server.close_connection"
_CHUNK = 64 * 1024  # a body without a declared length is read this much at a time
SMALL_BODY_BYTES = 64 * 1024  # bodies up to this size are not counted against the budget


class BodyBudget:
    """The request-body bytes one worker process may hold at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()  # gthread workers read bodies on several threads

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size


def _refuse_unread(environ: WSGIEnvironment, error: Exception) -> Exception:
    environ[CLOSE_CONNECTION_ENVIRON_KEY] = True
    return error


@contextmanager
def request_body(environ: WSGIEnvironment, max_body_bytes: int, budget: BodyBudget) -> Iterator[bytes]:
    """The request body, held against ``budget`` until the ``with`` block ends (the request is answered).

    RequestEntityTooLarge past ``max_body_bytes``; BodyBudgetExceeded when the worker holds too many
    bytes of other bodies. Werkzeug's own pieces read it: ``get_content_length`` (none when absent or
    chunked; 0 when malformed or negative) and ``LimitedStream`` (a body that ends short of its length
    is ClientDisconnected, 400). A chunked body past the limit is refused, where Werkzeug's read
    stops at the limit and returns the body cut short. Both the Flask views and the fast path read
    bodies here, so they answer alike.
    """
    length = get_content_length(environ)
    stream = environ["wsgi.input"]
    held = 0
    try:
        if length is not None:
            if length > max_body_bytes:
                raise _refuse_unread(environ, RequestEntityTooLarge())
            if length > SMALL_BODY_BYTES:
                if not budget.take(length):
                    raise _refuse_unread(environ, _over_budget(budget))
                held = length
            data = LimitedStream(stream, length).read()
        elif "wsgi.input_terminated" not in environ:
            data = b""  # no length and a stream the server does not end: WSGI says there is no body to read
        else:
            limited = LimitedStream(stream, max_body_bytes + 1, is_max=True)  # one byte past the limit tells
            pieces: list[bytes] = []
            size = 0
            while chunk := limited.read(_CHUNK):
                size += len(chunk)
                if size > max_body_bytes:
                    raise _refuse_unread(environ, RequestEntityTooLarge())
                if size > SMALL_BODY_BYTES:
                    # Past the small allowance the whole body counts, from its first byte.
                    if not budget.take(size - held):
                        raise _refuse_unread(environ, _over_budget(budget))
                    held = size
                pieces.append(chunk)
            data = b"".join(pieces)
        yield data
    finally:
        if held:
            budget.give(held)


def _over_budget(budget: BodyBudget) -> BodyBudgetExceeded:
    metrics.shed("body_budget").inc()
    return BodyBudgetExceeded(
        f"this worker already holds {budget.held} bytes of request bodies (MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES="
        f"{budget.limit}); retry in a moment"
    )
