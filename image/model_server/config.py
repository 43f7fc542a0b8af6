"""Server settings, read once from the environment into one typed, validated object.

Nothing else in the package reads ``os.environ``: every knob is a ``Setting`` here that holds its
environment variable, default, meaning and parser together (the README's configuration table is
generated from ``FIELDS``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
WORKER_CLASSES = ("gevent", "sync", "gthread")
# The estimator methods a model may be asked for, and every output a request may name (explanations:
# per-column contributions and their baseline, where the model has an exact decomposition).
MODEL_METHODS = ("predict", "predict_proba", "decision_function", "score_samples", "transform")
OUTPUT_METHODS = (*MODEL_METHODS, "contributions", "baseline")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """An environment variable holds a value the server cannot use."""


Parser = Callable[[str, str], object]  # (variable, raw value) -> typed value, or ConfigError


@runtime_checkable
class Described(Protocol):
    """A parser that adds its accepted values to the setting's documentation."""

    def describe(self) -> str: ...


def text(env: str, raw: str) -> str:
    return raw


def boolean(env: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{env}={raw!r} is not a boolean (true/false)")


def directory(env: str, raw: str) -> Path:
    if not raw:
        raise ConfigError(f"{env} is empty")
    return Path(raw)


@dataclass(frozen=True)
class Integer:
    minimum: int
    maximum: int

    def __call__(self, env: str, raw: str) -> int:
        try:
            number = int(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a whole number") from None
        if not self.minimum <= number <= self.maximum:
            raise ConfigError(f"{env}={number} is out of range {self.minimum}..{self.maximum}")
        return number

    def describe(self) -> str:
        return f" Range {self.minimum}..{self.maximum}."


@dataclass(frozen=True)
class AutoOrInteger:
    """``auto`` (None: decided when the model loads) or a whole number in range."""

    minimum: int
    maximum: int

    def __call__(self, env: str, raw: str) -> int | None:
        return None if raw.lower() == "auto" else Integer(self.minimum, self.maximum)(env, raw)

    def describe(self) -> str:
        return f" `auto` or {self.minimum}..{self.maximum}."


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def __call__(self, env: str, raw: str) -> str:
        if raw.lower() not in self.options:
            raise ConfigError(f"{env}={raw!r} is not one of {', '.join(self.options)}")
        return raw.lower()


@dataclass(frozen=True)
class NameList:
    """A comma-separated list; each entry must be one of ``allowed`` when that is given."""

    allowed: tuple[str, ...] = ()
    non_empty: bool = False

    def __call__(self, env: str, raw: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in raw.split(",") if part.strip())
        if self.non_empty and not names:
            raise ConfigError(f"{env} is empty; name at least one of {', '.join(self.allowed)}")
        unknown = [name for name in names if self.allowed and name not in self.allowed]
        if unknown:
            raise ConfigError(f"{env} names {', '.join(unknown)}; known: {', '.join(self.allowed)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"{env}={raw!r} names an entry twice")
        return names


def sha256_hex(env: str, raw: str) -> str:
    if raw and not _SHA256.match(raw.lower()):
        raise ConfigError(f"{env}={raw!r} is not a sha256 (64 hexadecimal characters)")
    return raw.lower()


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    doc: str
    parse: Parser = text

    def describe(self) -> str:
        return self.doc + (self.parse.describe() if isinstance(self.parse, Described) else "")


# Field name -> setting. Order is the documentation order.
FIELDS: dict[str, Setting] = {
    "host": Setting("HOST", "127.0.0.1", "Address to bind; the image sets 0.0.0.0."),
    "port": Setting("PORT", "8080", "TCP port to bind.", Integer(1, 65535)),
    "health_port": Setting(
        "MODEL_SERVER_HEALTH_PORT",
        "0",
        "A second TCP port that answers only the health probes and /metrics, untouched by the main port's "
        "connection cap, queue and deadlines, so a flooded main port cannot fail the probes (the main port keeps "
        "answering them too); 0: none (gevent workers).",
        Integer(0, 65535),
    ),
    "grpc_port": Setting(
        "MODEL_SERVER_GRPC_PORT",
        "0",
        "TCP port of the Open Inference Protocol's gRPC binding (inference.GRPCInferenceService) and the standard "
        "grpc.health.v1 service, served by every worker (SO_REUSEPORT) with the same model, auth, TLS, limits and "
        "queue as REST; 0: off (scripts/serve and the chart use 8081).",
        Integer(0, 65535),
    ),
    "workers": Setting("MODEL_SERVER_WORKERS", "2", "gunicorn worker processes.", Integer(1, 256)),
    "worker_class": Setting(
        "MODEL_SERVER_WORKER_CLASS",
        "gevent",
        "gunicorn worker type: gevent (keep-alive; a slow client holds no worker), sync, or gthread.",
        Choice(WORKER_CLASSES),
    ),
    "worker_connections": Setting(
        "MODEL_SERVER_WORKER_CONNECTIONS",
        "1000",
        "Most open connections per gevent worker; past it a new connection gets 503 at once (probes and "
        "/metrics are still answered).",
        Integer(1, 100_000),
    ),
    "threads": Setting(
        "MODEL_SERVER_THREADS", "4", "Threads per worker, for the gthread worker class.", Integer(1, 256)
    ),
    "timeout": Setting(
        "MODEL_SERVER_TIMEOUT",
        "30",
        "Seconds a worker may spend on one request before it is restarted.",
        Integer(1, 3600),
    ),
    "graceful_timeout": Setting(
        "MODEL_SERVER_GRACEFUL_TIMEOUT",
        "20",
        "Seconds in-flight requests get to finish after SIGTERM.",
        Integer(1, 3600),
    ),
    "header_timeout": Setting(
        "MODEL_SERVER_HEADER_TIMEOUT",
        "10",
        "Seconds a new connection has to send its request's headers (408, then closed); the body then has "
        "this plus one second per 64 KiB of MODEL_SERVER_MAX_BODY_BYTES (gevent workers).",
        Integer(1, 600),
    ),
    "max_queue": Setting(
        "MODEL_SERVER_MAX_QUEUE",
        "32",
        "Most predictions waiting in one worker's queue; past it a request gets 503 with Retry-After at once "
        "(gevent workers).",
        Integer(1, 100_000),
    ),
    "compiled": Setting(
        "MODEL_SERVER_COMPILED",
        "true",
        "Serve models through the rebuilt arithmetic of compiled.py where it is proved equal at load; false "
        "serves every model through scikit-learn's own methods.",
        boolean,
    ),
    "max_batch_size": Setting(
        "MODEL_SERVER_MAX_BATCH_SIZE",
        "auto",
        "Most rows one model call may merge from concurrent requests; 1 turns batching off; auto: 64 where "
        "a load-time measurement shows the model's per-call cost is worth merging for, else 1 (gevent workers).",
        AutoOrInteger(1, 100_000),
    ),
    "max_batch_delay_ms": Setting(
        "MODEL_SERVER_MAX_BATCH_DELAY_MS",
        "0",
        "Milliseconds a request may wait for company before its batch runs; 0 merges only what is already waiting.",
        Integer(0, 1000),
    ),
    "keepalive": Setting(
        "MODEL_SERVER_KEEPALIVE",
        "5",
        "Seconds an idle keep-alive connection is held (gevent, gthread).",
        Integer(0, 600),
    ),
    "max_body_bytes": Setting(
        "MODEL_SERVER_MAX_BODY_BYTES",
        "4194304",
        "Largest request body accepted; larger gets 413.",
        Integer(1024, 1 << 30),
    ),
    "max_inflight_body_bytes": Setting(
        "MODEL_SERVER_MAX_INFLIGHT_BODY_BYTES",
        "33554432",
        "Most request-body bytes one worker holds at once, summed over its requests being read or served; "
        "a body that would pass it gets 503 with Retry-After before it is read (a body over "
        "MODEL_SERVER_MAX_BODY_BYTES still gets 413). At least MODEL_SERVER_MAX_BODY_BYTES.",
        Integer(1024, 1 << 34),
    ),
    "max_rows": Setting(
        "MODEL_SERVER_MAX_ROWS", "10000", "Most rows one request may ask for; more gets 413.", Integer(1, 10_000_000)
    ),
    "log_level": Setting(
        "MODEL_SERVER_LOG_LEVEL", "info", "Log level: debug, info, warning, error, critical.", Choice(LOG_LEVELS)
    ),
    "access_log": Setting("MODEL_SERVER_ACCESS_LOG", "true", "Write one JSON access-log line per request.", boolean),
    "model_dir": Setting("MODEL_SERVER_MODEL_DIR", "/models/default", "Model artifact directory to serve.", directory),
    "model_name": Setting("MODEL_SERVER_MODEL_NAME", "", "Name to serve the model under (default: from its metadata)."),
    "expected_version": Setting(
        "MODEL_SERVER_EXPECTED_VERSION",
        "",
        "Model version the artifact must carry, or it is refused (stays not ready); empty accepts any.",
    ),
    "expected_sha256": Setting(
        "MODEL_SERVER_EXPECTED_SHA256",
        "",
        "sha256 the artifact's model file must have, or it is refused (stays not ready); empty accepts any.",
        sha256_hex,
    ),
    "default_outputs": Setting(
        "MODEL_SERVER_DEFAULT_OUTPUTS",
        "predict",
        "Outputs answered when a request names none, comma-separated (the first is V1's `predictions`): "
        + ", ".join(OUTPUT_METHODS)
        + ".",
        NameList(OUTPUT_METHODS, non_empty=True),
    ),
    "trust_pickle": Setting(
        "MODEL_SERVER_TRUST_PICKLE",
        "false",
        "Allow joblib/pickle artifacts. Unpickling runs code: only for artifacts you built yourself.",
        boolean,
    ),
    "trusted_types": Setting(
        "MODEL_SERVER_TRUSTED_TYPES",
        "",
        "Extra types a skops artifact may contain, comma-separated, beyond the built-in list "
        "(never read from the artifact itself).",
        NameList(),
    ),
    "drift_window": Setting(
        "MODEL_SERVER_DRIFT_WINDOW",
        "1000",
        "Rows per worker over which each input column's drift (PSI against the training distribution) is "
        "measured; 0 turns drift accounting off.",
        Integer(0, 1_000_000),
    ),
    "reload_interval": Setting(
        "MODEL_SERVER_RELOAD_INTERVAL",
        "5",
        "Seconds between retries to load an artifact that failed to load.",
        Integer(1, 3600),
    ),
    "tls_cert_file": Setting(
        "MODEL_SERVER_TLS_CERT_FILE",
        "",
        "PEM certificate (chain) the server presents; with MODEL_SERVER_TLS_KEY_FILE it serves HTTPS only (TLS "
        "1.2+, forward-secret AEAD suites), on both ports. Re-read when the file changes: new connections get the "
        "new certificate, open ones keep theirs.",
    ),
    "tls_key_file": Setting(
        "MODEL_SERVER_TLS_KEY_FILE", "", "PEM private key of MODEL_SERVER_TLS_CERT_FILE, unencrypted."
    ),
    "tls_client_ca_file": Setting(
        "MODEL_SERVER_TLS_CLIENT_CA_FILE",
        "",
        "PEM CA certificates: the main port then requires a client certificate one of them signed (mutual TLS; a "
        "client without one is refused in the handshake). The health port never asks for one.",
    ),
    "auth_tokens_file": Setting(
        "MODEL_SERVER_AUTH_TOKENS_FILE",
        "",
        "Bearer tokens, one line per caller: `<id> sha256:<hex digest> <scopes>` (scopes: model names, `*` for "
        "every model, `metrics`); model-server-token writes one. Several files: a comma list. Re-read when they "
        "change. Setting any "
        "MODEL_SERVER_AUTH_* identity turns authentication on for every endpoint but the health checks.",
    ),
    "auth_service_accounts": Setting(
        "MODEL_SERVER_AUTH_SERVICE_ACCOUNTS",
        "",
        "Kubernetes ServiceAccounts whose projected tokens are accepted: `namespace/name=scope,scope;...`. Tokens "
        "are verified offline against the keys of MODEL_SERVER_AUTH_JWKS_FILE or MODEL_SERVER_AUTH_JWKS_URL.",
    ),
    "auth_audience": Setting(
        "MODEL_SERVER_AUTH_AUDIENCE",
        "model-server",
        "The audience a ServiceAccount token must be issued for (the client pod's projected token volume).",
    ),
    "auth_issuer": Setting(
        "MODEL_SERVER_AUTH_ISSUER",
        "https://kubernetes.default.svc.cluster.local",
        "The issuer a ServiceAccount token must name (the API server's --service-account-issuer).",
    ),
    "auth_jwks_file": Setting(
        "MODEL_SERVER_AUTH_JWKS_FILE",
        "",
        "The API server's signing keys as a JWKS file (`kubectl get --raw /openid/v1/jwks`, in a ConfigMap); "
        "re-read when it changes.",
    ),
    "auth_jwks_url": Setting(
        "MODEL_SERVER_AUTH_JWKS_URL",
        "",
        "Where to fetch the signing keys instead (e.g. https://kubernetes.default.svc/openid/v1/jwks); cached, "
        "refetched every 5 minutes and when a token names an unknown key.",
    ),
    "auth_jwks_ca_file": Setting(
        "MODEL_SERVER_AUTH_JWKS_CA_FILE",
        "",
        "CA bundle to verify MODEL_SERVER_AUTH_JWKS_URL with (default: system CAs).",
    ),
    "auth_jwks_token_file": Setting(
        "MODEL_SERVER_AUTH_JWKS_TOKEN_FILE",
        "",
        "Bearer token file sent when fetching MODEL_SERVER_AUTH_JWKS_URL (the server pod's own ServiceAccount token).",
    ),
    "auth_client_certificates": Setting(
        "MODEL_SERVER_AUTH_CLIENT_CERTIFICATES",
        "",
        "Client certificates that stand in for a token under mutual TLS: `name=scope,scope;...`, `name` matched "
        "against the certificate's subject CN and its DNS and URI names.",
    ),
    "metrics_dir": Setting(
        "PROMETHEUS_MULTIPROC_DIR", "", "Directory shared by workers for metrics (gunicorn.conf.py sets one in /tmp)."
    ),
}


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    health_port: int
    grpc_port: int
    workers: int
    worker_class: str
    worker_connections: int
    threads: int
    timeout: int
    graceful_timeout: int
    header_timeout: int
    max_queue: int
    compiled: bool
    max_batch_size: int | None
    max_batch_delay_ms: int
    keepalive: int
    max_body_bytes: int
    max_inflight_body_bytes: int
    max_rows: int
    log_level: str
    access_log: bool
    model_dir: Path
    model_name: str
    expected_version: str
    expected_sha256: str
    default_outputs: tuple[str, ...]
    trust_pickle: bool
    trusted_types: tuple[str, ...]
    drift_window: int
    reload_interval: int
    tls_cert_file: str
    tls_key_file: str
    tls_client_ca_file: str
    auth_tokens_file: str
    auth_service_accounts: str
    auth_audience: str
    auth_issuer: str
    auth_jwks_file: str
    auth_jwks_url: str
    auth_jwks_ca_file: str
    auth_jwks_token_file: str
    auth_client_certificates: str
    metrics_dir: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from ``environ`` (default: os.environ); raise ConfigError naming the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            setting = FIELDS[f.name]
            values[f.name] = setting.parse(setting.env, environ.get(setting.env, setting.default).strip())
        _check_together(values)
        # Each value has its field's type by construction (the field's own setting parsed it), which
        # mypy cannot follow through a dict.
        return cls(**values)  # type: ignore[arg-type]


def _check_together(values: Mapping[str, object]) -> None:
    """Settings that are each valid alone but cannot work together: ConfigError naming both."""

    def env(name: str) -> str:
        return FIELDS[name].env

    if values["health_port"] and values["health_port"] == values["port"]:
        raise ConfigError(f"{env('health_port')}={values['health_port']} is the same port as {env('port')}")
    if values["health_port"] and values["worker_class"] != "gevent":
        raise ConfigError(
            f"{env('health_port')} needs {env('worker_class')}=gevent: a {values['worker_class']} worker busy with "
            "a request cannot answer a probe on any port"
        )
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError(f"{env('tls_cert_file')} and {env('tls_key_file')} go together: set both or neither")
    if values["grpc_port"] and values["grpc_port"] in (values["port"], values["health_port"]):
        raise ConfigError(f"{env('grpc_port')}={values['grpc_port']} is already the REST or health port")
    if values["tls_client_ca_file"] and not values["tls_cert_file"]:
        raise ConfigError(f"{env('tls_client_ca_file')} needs {env('tls_cert_file')}: mutual TLS is TLS first")
    body, budget = values["max_body_bytes"], values["max_inflight_body_bytes"]
    assert isinstance(body, int)
    assert isinstance(budget, int)
    if budget < body:
        raise ConfigError(
            f"{env('max_inflight_body_bytes')}={budget} is less than {env('max_body_bytes')}={body}: "
            "a body the limit allows could never be read"
        )


def markdown_table() -> str:
    """The configuration reference README.md shows (scripts/docs writes it; a test keeps it current)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for setting in FIELDS.values():
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.env}` | {default} | {setting.describe()} |")
    return "\n".join(rows)
