"""The prediction routes served at the WSGI layer, in front of Flask.

A prediction spends ~15 us parsing, predicting and encoding, and was spending several times that in
Flask's request/response machinery around it (context push, hooks, Request and Response objects). This layer
answers POSTs to the prediction endpoints straight from the WSGI environ with the same handlers the
Flask views call (``v1_handler`` / ``infer_handler`` in routes.py); the routes themselves stay
in Flask's URL map, which decides what matches, so routing has one source of truth. Everything
else (other routes, other methods, so 405s too) goes to Flask unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Map

from . import v2
from .errors import ClientError
from .middleware import ROUTE_ENVIRON_KEY
from .routes import Handler, read_body, status_and_message

log = logging.getLogger("model_server.fastpath")


def _status_line(code: int) -> str:
    """As Werkzeug writes it, so the fast path and Flask answer byte for byte alike."""
    return f"{code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}"


def _error(status: int, message: str, extra: tuple[tuple[str, str], ...]) -> tuple[str, list[tuple[str, str]], bytes]:
    body = orjson.dumps({"error": message})
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]
    return _status_line(status), headers, body


_OK = _status_line(200)
# The V2 binary extension's header as WSGI names it (Flask reads the same header through request.headers).
_BINARY_HEADER_KEY = "HTTP_" + v2.BINARY_HEADER.upper().replace("-", "_")
_MATCH_CACHE_SIZE = 256


class PredictionFastPath:
    """WSGI middleware: POSTs matching ``handlers``' endpoints in ``url_map`` never reach Flask."""

    def __init__(
        self,
        app: WSGIApplication,
        url_map: Map,
        handlers: dict[str, Handler],
        max_body_bytes: int,
        admit: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.url_map = url_map
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes
        # Raises Overloaded when this worker's queue is full: checked before the body is read or
        # parsed, so a request that will be shed costs as little as possible.
        self.admit = admit
        # PATH_INFO -> (handler, rule, URL args) of prediction routes already matched: matching
        # costs ~20 us, a dict lookup well under one. Only the method (POST) and the path decide a
        # match here (the map has no host or subdomain rules), so the path alone is the key.
        self._matches: dict[str, tuple[Handler, str, Mapping[str, str | None]]] = {}

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
        handler, route, args = matched
        environ[ROUTE_ENVIRON_KEY] = route
        try:
            self.admit()
            raw = read_body(environ, self.max_body_bytes)
            content_type = environ.get("CONTENT_TYPE", "")
            mimetype = content_type.split(";", 1)[0].strip().lower()
            body, headers = handler(raw, mimetype, environ.get(_BINARY_HEADER_KEY), args)
            status = _OK
            headers.append(("Content-Length", str(len(body))))
        except Exception as exc:
            if not isinstance(exc, ClientError | HTTPException):
                log.exception("unhandled error on POST %s", environ.get("PATH_INFO"))
            status, headers, body = _error(*status_and_message(exc))
        start_response(status, headers)
        return [body]
