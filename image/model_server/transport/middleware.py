"""WSGI middleware around the Flask app: request IDs, latency and request metrics; the security guard.

Done at the WSGI layer, on the environ, rather than in Flask before/after hooks: the hooks reach the
request through context-local proxies at a couple of microseconds per access, which was most of the
per-request cost of a prediction.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import Counter, Histogram

from .. import metrics
from ..core import outcomes
from ..errors import ClientError
from ..logs import CALLER_ENVIRON_KEY, MODEL_ENVIRON_KEY, REQUEST_ID_ENVIRON_KEY
from ..security.guard import Guard

ROUTE_ENVIRON_KEY = "model_server.route"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def valid_request_id(incoming: str) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh one (128 random bits, as hex: what
    uuid4().hex gives, at a fifth of its cost)."""
    return incoming if incoming and _REQUEST_ID.match(incoming) else os.urandom(16).hex()


class RequestMetrics:
    """Each request's route, method, status and latency, into the request counter and latency histogram, and a
    prediction's into the recent outcomes a canary analysis reads (core/outcomes.py)."""

    def __init__(self, recent: outcomes.Recorder | None = None) -> None:
        # Label children cached per (route, method, status): labels() costs a locked lookup per call.
        # Routes come from the URL map and methods from a fixed set, so clients cannot grow the series.
        self._series: dict[tuple[str, str, str], tuple[Counter, Histogram, bool]] = {}
        self.recent = recent

    def record(self, route: str, method: str, status: str, seconds: float) -> None:
        key = (route, method if method in _METHODS else "other", status)
        children = self._series.get(key)
        if children is None:
            children = self._series[key] = (
                metrics.REQUESTS.labels(route=key[0], method=key[1], status=key[2]),
                metrics.LATENCY.labels(route=route),
                outcomes.is_prediction(route),
            )
        children[0].inc()
        children[1].observe(seconds)
        if children[2] and self.recent is not None:
            self.recent.request(seconds, int(status) if status.isdigit() else 500)


class Observability:
    """Echoes or assigns X-Request-ID and records each request's route, method, status and latency."""

    def __init__(self, app: WSGIApplication, request_metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.request_metrics = request_metrics or RequestMetrics()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        rid = valid_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        environ[REQUEST_ID_ENVIRON_KEY] = rid
        status = ["500"]

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = status_line[:3]
            headers.append(("X-Request-ID", rid))
            return start_response(status_line, headers, exc_info)

        body = self.app(environ, start)
        self.request_metrics.record(
            environ.get(ROUTE_ENVIRON_KEY, "unmatched"),
            environ.get("REQUEST_METHOD", ""),
            status[0],
            time.perf_counter() - started,
        )
        return body


def peer_certificate(environ: WSGIEnvironment) -> Any:
    """The client certificate of the request's TLS connection (mutual TLS), or None."""
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    return getpeercert() if getpeercert is not None else None


class Guarded:
    """Runs the guard (security/guard.py) before the app: a refused request never reaches a handler. The
    caller's id and the model the request is about go into the environ for the audit (access) log."""

    def __init__(self, app: WSGIApplication, guard: Guard, served: Callable[[], str], refuse: Refuse) -> None:
        self.app, self.guard, self.served, self.refuse = app, guard, served, refuse

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            caller, model = self.guard.check(
                environ.get("PATH_INFO", ""),
                environ.get("HTTP_AUTHORIZATION"),
                lambda: peer_certificate(environ),
                self.served(),
            )
        except ClientError as exc:
            environ[CALLER_ENVIRON_KEY], environ[MODEL_ENVIRON_KEY] = exc.caller, exc.model
            return self.refuse(exc, start_response)
        environ[CALLER_ENVIRON_KEY] = caller.id if caller is not None else "anonymous"
        environ[MODEL_ENVIRON_KEY] = model
        return self.app(environ, start_response)


Refuse = Callable[[ClientError, StartResponse], Iterable[bytes]]
