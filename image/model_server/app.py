"""The Flask application: request IDs, JSON errors, metrics around every request, and the routes."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from . import logs, metrics, routes
from .config import Settings
from .errors import ClientError
from .model import ModelHolder
from .routes import json_response

log = logging.getLogger("model_server.app")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings: Settings | None = None, holder: ModelHolder | None = None) -> Flask:
    """Build the app. The model is loaded here, once per process, before the first request."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    if holder is None:
        holder = ModelHolder(
            settings.model_dir,
            trust_pickle=settings.trust_pickle,
            name_override=settings.model_name,
            reload_interval=settings.reload_interval,
        )
        holder.load()

    app = Flask("model_server")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["model_server"] = holder

    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.environ[logs.REQUEST_ID_ENVIRON_KEY] = g.request_id

    # Label children cached per (route, method, status): labels() costs a locked lookup per call.
    # Routes come from the URL map and methods from a fixed set, so a client cannot grow the series.
    series: dict[tuple[str, str, int], tuple] = {}

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        key = (route, method, response.status_code)
        children = series.get(key)
        if children is None:
            children = series[key] = (
                metrics.REQUESTS.labels(route=route, method=method, status=str(response.status_code)),
                metrics.LATENCY.labels(route=route),
            )
        children[0].inc()
        if "started" in g:
            children[1].observe(time.perf_counter() - g.started)
        return response

    @app.errorhandler(ClientError)
    def client_error(exc: ClientError) -> Response:
        return json_response({"error": exc.message}, exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = json_response({"error": f"{exc.name}: {exc.description}"}, exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": "internal server error"}, 500)

    routes.register(app, holder, settings)
    return app
