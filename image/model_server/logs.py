"""Structured JSON logs: one object per line for application and access logs alike."""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from gunicorn.glogging import Logger as GunicornBaseLogger

if TYPE_CHECKING:
    from gunicorn.config import Config
    from gunicorn.http.message import Request
    from gunicorn.http.wsgi import Response

REQUEST_ID_ENVIRON_KEY = "model_server.request_id"
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Renders a record as one JSON line; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class GunicornJsonLogger(GunicornBaseLogger):
    """gunicorn's logger with JSON error and access logs (set as ``logger_class`` in gunicorn.conf.py)."""

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(formatter)

    def access(self, resp: Response, req: Request, environ: MutableMapping[str, Any], request_time: timedelta) -> None:
        # The hot path: one line per request, serialised with orjson and written straight to the
        # access log's streams. Through logging.Formatter it cost ~15% of a small prediction's CPU.
        if not self.access_log.handlers:
            return
        now = time.time()
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "level": "info",
            "logger": "gunicorn.access",
            "message": "request",
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": resp.status_code,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "remote": environ.get("REMOTE_ADDR"),
            "request_id": environ.get(REQUEST_ID_ENVIRON_KEY),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        line = orjson.dumps(entry, default=str).decode() + "\n"
        for handler in self.access_log.handlers:
            stream = getattr(handler, "stream", None)
            if stream is None:
                continue
            handler.acquire()
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                handler.handleError(logging.makeLogRecord({"msg": line}))
            finally:
                handler.release()


def configure(level: str) -> None:
    """Route the package's own loggers to stderr as JSON (under gunicorn and in tests alike)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("model_server")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
