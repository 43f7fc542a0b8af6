"""Server settings, read once from the environment into one typed, validated object.

Nothing else in the package reads ``os.environ``: every knob is a field here, with its
environment variable, default and bounds in one place (the README's configuration table
is generated from ``FIELDS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
WORKER_CLASSES = ("gevent", "sync", "gthread")


class ConfigError(ValueError):
    """An environment variable holds a value the server cannot use."""


@dataclass(frozen=True)
class Field:
    env: str
    default: str
    doc: str
    minimum: int | None = None
    maximum: int | None = None


# name -> (environment variable, default, meaning). Order is the documentation order.
FIELDS: dict[str, Field] = {
    "host": Field("HOST", "127.0.0.1", "Address to bind; the image sets 0.0.0.0."),
    "port": Field("PORT", "8080", "TCP port to bind.", 1, 65535),
    "workers": Field("MODEL_SERVER_WORKERS", "2", "gunicorn worker processes.", 1, 256),
    "worker_class": Field(
        "MODEL_SERVER_WORKER_CLASS",
        "gevent",
        "gunicorn worker type: gevent (keep-alive; a slow client holds no worker), sync, or gthread.",
    ),
    "worker_connections": Field(
        "MODEL_SERVER_WORKER_CONNECTIONS", "100", "Most simultaneous connections per gevent worker.", 1, 100_000
    ),
    "threads": Field("MODEL_SERVER_THREADS", "4", "Threads per worker, for the gthread worker class.", 1, 256),
    "timeout": Field(
        "MODEL_SERVER_TIMEOUT", "30", "Seconds a worker may spend on one request before it is restarted.", 1, 3600
    ),
    "graceful_timeout": Field(
        "MODEL_SERVER_GRACEFUL_TIMEOUT", "20", "Seconds in-flight requests get to finish after SIGTERM.", 1, 3600
    ),
    "keepalive": Field(
        "MODEL_SERVER_KEEPALIVE", "5", "Seconds an idle keep-alive connection is held (gevent, gthread).", 0, 600
    ),
    "max_body_bytes": Field(
        "MODEL_SERVER_MAX_BODY_BYTES", "4194304", "Largest request body accepted; larger gets 413.", 1024, 1 << 30
    ),
    "max_rows": Field(
        "MODEL_SERVER_MAX_ROWS", "10000", "Most rows one request may ask for; more gets 413.", 1, 10_000_000
    ),
    "log_level": Field("MODEL_SERVER_LOG_LEVEL", "info", "Log level: debug, info, warning, error, critical."),
    "access_log": Field("MODEL_SERVER_ACCESS_LOG", "true", "Write one JSON access-log line per request."),
    "model_dir": Field("MODEL_SERVER_MODEL_DIR", "/models/default", "Model artifact directory to serve."),
    "model_name": Field("MODEL_SERVER_MODEL_NAME", "", "Name to serve the model under (default: from its metadata)."),
    "trust_pickle": Field(
        "MODEL_SERVER_TRUST_PICKLE",
        "false",
        "Allow joblib/pickle artifacts. Unpickling runs code: only for artifacts you built yourself.",
    ),
    "reload_interval": Field(
        "MODEL_SERVER_RELOAD_INTERVAL", "5", "Seconds between retries to load an artifact that failed to load.", 1, 3600
    ),
    "metrics_dir": Field(
        "PROMETHEUS_MULTIPROC_DIR", "", "Directory shared by workers for metrics (gunicorn.conf.py sets one in /tmp)."
    ),
}


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    workers: int
    worker_class: str
    worker_connections: int
    threads: int
    timeout: int
    graceful_timeout: int
    keepalive: int
    max_body_bytes: int
    max_rows: int
    log_level: str
    access_log: bool
    model_dir: Path
    model_name: str
    trust_pickle: bool
    reload_interval: int
    metrics_dir: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from ``environ`` (default: os.environ); raise ConfigError naming the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            spec = FIELDS[f.name]
            raw = environ.get(spec.env, spec.default).strip()
            values[f.name] = _convert(f.name, spec, raw)
        return cls(**values)  # type: ignore[arg-type]


def _convert(name: str, spec: Field, raw: str) -> object:
    if spec.minimum is not None:
        try:
            number = int(raw)
        except ValueError:
            raise ConfigError(f"{spec.env}={raw!r} is not a whole number") from None
        if not spec.minimum <= number <= (spec.maximum or number):
            raise ConfigError(f"{spec.env}={number} is out of range {spec.minimum}..{spec.maximum}")
        return number
    if name in ("access_log", "trust_pickle"):
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{spec.env}={raw!r} is not a boolean (true/false)")
    if name == "worker_class":
        if raw.lower() not in WORKER_CLASSES:
            raise ConfigError(f"{spec.env}={raw!r} is not one of {', '.join(WORKER_CLASSES)}")
        return raw.lower()
    if name == "log_level":
        if raw.lower() not in LOG_LEVELS:
            raise ConfigError(f"{spec.env}={raw!r} is not one of {', '.join(LOG_LEVELS)}")
        return raw.lower()
    if name == "model_dir":
        if not raw:
            raise ConfigError(f"{spec.env} is empty")
        return Path(raw)
    return raw


def markdown_table() -> str:
    """The configuration reference README.md shows (scripts/docs writes it; a test keeps it current)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for spec in FIELDS.values():
        default = f"`{spec.default}`" if spec.default else "(empty)"
        bounds = f" Range {spec.minimum}..{spec.maximum}." if spec.minimum is not None else ""
        rows.append(f"| `{spec.env}` | {default} | {spec.doc}{bounds} |")
    return "\n".join(rows)
