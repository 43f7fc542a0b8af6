"""Structured JSON logs: one object per line for application and access logs alike."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gunicorn.glogging import Logger as GunicornBaseLogger

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
        return json.dumps(entry, default=str)


class GunicornJsonLogger(GunicornBaseLogger):
    """gunicorn's logger with JSON error and access logs (set as ``logger_class`` in gunicorn.conf.py)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(formatter)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict or self.cfg.syslog):
            return
        self.access_log.info(
            "request",
            extra={
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": getattr(resp, "status_code", None) or str(resp.status).split(" ", 1)[0],
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "bytes": getattr(resp, "sent", None),
                "remote": environ.get("REMOTE_ADDR"),
                "request_id": environ.get(REQUEST_ID_ENVIRON_KEY),
                "user_agent": environ.get("HTTP_USER_AGENT"),
            },
        )


def configure(level: str) -> None:
    """Route the package's own loggers to stderr as JSON (under gunicorn and in tests alike)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("model_server")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
