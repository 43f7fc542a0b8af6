"""The Flask application: JSON errors, the routes, and the middleware that adds request IDs and metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from wsgiref.types import StartResponse

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .. import logs
from ..config import Settings
from ..core.model import ModelHolder, configure_scikit_learn
from ..core.scheduler import Scheduler
from ..errors import ClientError
from ..security.guard import Guard
from . import fastpath, routes
from .admission import BodyBudget
from .fastpath import PredictionFastPath
from .middleware import ROUTE_ENVIRON_KEY, Guarded, Observability, RequestMetrics
from .routes import json_response, status_and_message

log = logging.getLogger("model_server.transport.app")


def create_app(settings: Settings | None = None, holder: ModelHolder | None = None) -> Flask:
    """Build the app. The model is loaded here, once per process, before the first request."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    # Who may call what: built first, in the master, so a bad tokens file or key set stops the server at
    # start (ConfigError naming the file and line) before anything loads.
    guard = Guard.from_settings(settings)
    configure_scikit_learn()
    if holder is None:
        holder = ModelHolder(settings)
        holder.load()

    app = Flask("model_server")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["model_server"] = holder

    @app.before_request
    def remember_route() -> None:
        # The metrics label is the URL rule (bounded), not the raw path; Flask clears its request
        # from the environ before the middleware could read the rule itself. _get_current_object is the
        # proxy's own method, which Flask's annotation of ``request`` (the Request it stands for) lacks.
        current = request._get_current_object()  # type: ignore[attr-defined]
        if current.url_rule is not None:
            current.environ[ROUTE_ENVIRON_KEY] = current.url_rule.rule

    def error_response(exc: Exception) -> Response:
        status, message, headers = status_and_message(exc)
        response = json_response({"error": message}, status)
        response.headers.extend(headers)
        return response

    app.register_error_handler(ClientError, error_response)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = error_response(exc)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(exc)

    budget = BodyBudget(settings.max_inflight_body_bytes)
    handlers = routes.register(app, holder, settings, budget)

    def scheduler() -> Scheduler | None:
        served = holder.served
        return served.scheduler if served is not None else None

    def served() -> str:
        return holder.name

    request_metrics = RequestMetrics(holder.outcomes)
    fast = PredictionFastPath(
        app.wsgi_app,
        app.url_map,
        handlers,
        settings.max_body_bytes,
        budget,
        scheduler,
        request_metrics,
        guard,
        served,
    )
    # The gevent worker (process/worker.py) sheds predictions, and answers them, from gunicorn's request head
    # through the fast path, before any WSGI request is built.
    app.extensions[fastpath.EXTENSION] = fast

    def refuse(exc: ClientError, start_response: StartResponse) -> Iterable[bytes]:
        status, headers, body = fastpath.error(*status_and_message(exc))
        start_response(fastpath.status_text(status), headers)
        return [body]

    # Flask's documented way to put WSGI middleware in front; mypy sees the assignment of a method.
    app.wsgi_app = Observability(Guarded(fast, guard, served, refuse), request_metrics)  # type: ignore[method-assign]
    return app
