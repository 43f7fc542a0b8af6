"""The prediction routes served in front of Flask: at the WSGI layer, and straight from the gevent worker.

A prediction spends ~15 us parsing, predicting and encoding, and was spending several times that in
Flask's request/response machinery around it (context push, hooks, Request and Response objects). This layer
answers POSTs to the prediction endpoints with the same handlers the Flask views call (``v1_handler`` /
``infer_handler`` in routes.py); the routes themselves stay in Flask's URL map, which decides what
matches, so routing has one source of truth. Everything else (other routes, other methods, so 405s
too) goes to Flask unchanged.

Two doors lead to the same ``serve``. ``__call__`` is WSGI middleware (sync and gthread workers, and
the first request to each path). ``direct`` is what the gevent worker (worker.py) calls with gunicorn's
parsed request head: it skips building a WSGI environ, the middleware stack and gunicorn's response
object, which together cost as much again as the prediction (profiled: ~70 us of a ~250 us request),
and returns the whole HTTP answer as one buffer. Both record the same metrics and answer the same
bytes but for the Date and Server headers (tests/server/test_fastpath.py holds them to it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Map

from .. import metrics
from ..core.scheduler import OVERLOADED, Scheduler
from ..errors import ClientError, Overloaded
from ..logs import Audit
from ..security.guard import Guard
from . import v2
from .admission import CLOSE_CONNECTION_ENVIRON_KEY, BodyBudget, request_body
from .middleware import ROUTE_ENVIRON_KEY, RequestMetrics, valid_request_id
from .routes import Handler, status_and_message

log = logging.getLogger("model_server.transport.fastpath")

Headers = list[tuple[str, str]]


def _status_line(code: int) -> str:
    """As Werkzeug writes it, so the fast path and Flask answer byte for byte alike."""
    return f"{code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}"


def error(status: int, message: str, extra: tuple[tuple[str, str], ...]) -> tuple[int, Headers, bytes]:
    """A refusal's status, headers and ``{"error": ...}`` body, as both doors send it."""
    body = orjson.dumps({"error": message})
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra], body


_STATUS_LINES: dict[int, str] = {}
# A shed prediction's answer, but for its X-Request-ID: built once, sent by the worker before any WSGI work.
_SHED_BODY = orjson.dumps({"error": OVERLOADED})
_SHED_HEAD = (
    f"HTTP/1.1 {_status_line(Overloaded.status)}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(_SHED_BODY)}\r\n"
    + "".join(f"{name}: {value}\r\n" for name, value in Overloaded.headers)
    + "X-Request-ID: "
).encode()
# The V2 binary extension's header as WSGI names it (Flask reads the same header through request.headers).
_BINARY_HEADER_KEY = "HTTP_" + v2.BINARY_HEADER.upper().replace("-", "_")
# ... and as gunicorn's parser names it (upper case, dashes kept).
_BINARY_HEADER_NAME = v2.BINARY_HEADER.upper()
_MATCH_CACHE_SIZE = 256
_SERVER = b"Server: gunicorn\r\n"


def status_text(code: int) -> str:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = _status_line(code)
    return line


class _HttpDate:
    """The Date header's value, formatted once per second (formatting it costs ~5 us)."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            from email.utils import formatdate

            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._line


@dataclass(frozen=True)
class DirectAnswer:
    """A prediction answered from gunicorn's request head: the whole response, and what the access log says."""

    data: bytes
    status: int
    request_id: str
    body_bytes: int
    close: bool  # the connection closes after it (the client asked, the worker drains, or a body went unread)
    audit: Audit  # (caller, model)


# The key under which the app offers the fast path to the gevent worker (process/worker.py).
EXTENSION = "model_server.fastpath"
_UNREAD_BODY_KEPT = 64 * 1024  # a refused request's unread body up to this is skipped; a longer one closes


class PredictionFastPath:
    """WSGI middleware: POSTs matching ``handlers``' endpoints in ``url_map`` never reach Flask."""

    def __init__(
        self,
        app: WSGIApplication,
        url_map: Map,
        handlers: dict[str, Handler],
        max_body_bytes: int,
        budget: BodyBudget,
        scheduler: Callable[[], Scheduler | None] = lambda: None,
        request_metrics: RequestMetrics | None = None,
        guard: Guard | None = None,
        served: Callable[[], str] = lambda: "",
    ) -> None:
        self.app = app
        self.url_map = url_map
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        # This worker's prediction queue (None while no model is loaded): a full one sheds a request before
        # its body is read or parsed, so a request that will be shed costs as little as possible.
        self.scheduler = scheduler
        # The direct door records its requests itself (the WSGI door is recorded by the middleware around it).
        self.request_metrics = request_metrics or RequestMetrics()
        # The security guard (security/guard.py), which the direct door runs itself; the WSGI door is behind
        # the Guarded middleware. ``served``: the name of the model served, which /predict is about.
        self.guard = guard or Guard()
        self.served = served
        self._shed_series = metrics.shed("queue")
        self._date = _HttpDate()
        # PATH_INFO -> (handler, rule, URL args) of prediction routes already matched: matching
        # costs ~20 us, a dict lookup well under one. Only the method (POST) and the path decide a
        # match here (the map has no host or subdomain rules), so the path alone is the key.
        self._matches: dict[str, tuple[Handler, str, Mapping[str, str | None]]] = {}

    # ---- the core both doors share ------------------------------------------------------------------

    def serve(
        self,
        matched: tuple[Handler, str, Mapping[str, str | None]],
        body_environ: WSGIEnvironment,
        content_type: str,
        binary_header: str | None,
        path: str,
    ) -> tuple[int, Headers, bytes]:
        """Admit, read the body (within the budget), run the handler; any refusal as its status and message."""
        handler, _, args = matched
        try:
            scheduler = self.scheduler()
            if scheduler is not None:
                scheduler.admit()
            with request_body(body_environ, self.max_body_bytes, self.budget) as raw:
                mimetype = content_type.split(";", 1)[0].strip().lower()
                body, headers = handler(raw, mimetype, binary_header, args)
            headers.append(("Content-Length", str(len(body))))
            return 200, headers, body
        except Exception as exc:
            if not isinstance(exc, ClientError | HTTPException):
                log.exception("unhandled error on POST %s", path)
            return error(*status_and_message(exc))

    # ---- the WSGI door ------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        matched = self._matches.get(path)
        if matched is None:
            try:
                rule, args = self.url_map.bind_to_environ(environ).match(return_rule=True)
            except HTTPException:
                return self.app(environ, start_response)  # Flask answers the 404/405 in its usual shape
            if rule.endpoint not in self.handlers:
                return self.app(environ, start_response)
            if len(self._matches) >= _MATCH_CACHE_SIZE:
                self._matches.clear()  # clients choose paths: keep the cache bounded
            matched = self._matches[path] = (self.handlers[rule.endpoint], rule.rule, args)
        environ[ROUTE_ENVIRON_KEY] = matched[1]
        status, headers, body = self.serve(
            matched, environ, environ.get("CONTENT_TYPE", ""), environ.get(_BINARY_HEADER_KEY), path
        )
        start_response(status_text(status), headers)
        return [body]

    # ---- the worker's door --------------------------------------------------------------------------

    def direct(self, req: Any, keep_alive: bool, peer: Callable[[], Any] = lambda: None) -> DirectAnswer | None:
        """Answer gunicorn's parsed request ``req`` (its body still unread) as one HTTP/1.1 response, or None
        when it is not a prediction this door takes: then the worker serves it through WSGI as usual. Taken:
        HTTP/1.1 POSTs to a path already matched (so a percent-free path, equal to its PATH_INFO), without
        ``Expect``. ``keep_alive``: whether the worker would keep the connection after it; ``peer``: the client
        certificate of a mutual-TLS connection."""
        if req.method != "POST" or req.version != (1, 1):
            return None
        path = req.path
        matched = self._matches.get(path)
        if matched is None or "%" in path:
            return None
        started = time.perf_counter()
        content_type = rid = ""
        binary_header = length = authorization = None
        chunked = False
        for name, value in req.headers:
            if name == "CONTENT-TYPE":
                content_type = value
            elif name == "CONTENT-LENGTH":
                length = value
            elif name == "X-REQUEST-ID":
                rid = value
            elif name == "AUTHORIZATION":
                authorization = value
            elif name == _BINARY_HEADER_NAME:
                binary_header = value
            elif name == "TRANSFER-ENCODING":
                chunked = True
            elif name == "EXPECT":
                return None  # gunicorn's WSGI path sends the interim 100 Continue
        rid = valid_request_id(rid)
        body_environ: dict[str, Any] = {"wsgi.input": req.body}
        if length is not None:
            body_environ["CONTENT_LENGTH"] = length
        elif chunked:
            body_environ["wsgi.input_terminated"] = True
        try:
            caller, model = self.guard.check(path, authorization, peer, self.served())
        except ClientError as refused:
            status, headers, body = error(*status_and_message(refused))
            audit: Audit = (refused.caller, refused.model)
            unread_kept = length is not None and length.isdigit() and int(length) <= _UNREAD_BODY_KEPT
            close = not keep_alive or not unread_kept
        else:
            audit = (caller.id if caller is not None else "anonymous", model)
            status, headers, body = self.serve(matched, body_environ, content_type, binary_header, path)
            close = not keep_alive or bool(body_environ.get(CLOSE_CONNECTION_ENVIRON_KEY))
        head = [
            f"HTTP/1.1 {status_text(status)}\r\n".encode(),
            _SERVER,
            self._date.line(),
            b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n",
            *(f"{name}: {value}\r\n".encode() for name, value in headers),
            f"X-Request-ID: {rid}\r\n\r\n".encode(),
            body,
        ]
        self.request_metrics.record(matched[1], "POST", str(status), time.perf_counter() - started)
        return DirectAnswer(b"".join(head), status, rid, len(body), close, audit)

    def refusal(self, method: str, path: str, headers: Headers, reserved: int = 0) -> bytes | None:
        """The whole HTTP answer shedding this request, when it is a prediction this worker's full queue would
        refuse (``reserved`` places of it kept for others); else None (serve it). The worker asks before it
        builds a WSGI environ: a shed then costs the parse of its head and one write. Counted like any shed
        (model_server_shed_requests_total); the request counter is left to requests that were served."""
        if method != "POST" or path not in self._matches:
            return None
        scheduler = self.scheduler()
        if scheduler is None or not scheduler.full(reserved):
            return None
        self._shed_series.inc()
        rid = next((value for name, value in headers if name == "X-REQUEST-ID"), "")
        return _SHED_HEAD + valid_request_id(rid).encode() + b"\r\n\r\n" + _SHED_BODY
