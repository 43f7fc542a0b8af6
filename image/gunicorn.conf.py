"""gunicorn configuration for the model server: every knob comes from model_server.config.Settings.

Run as ``gunicorn -c gunicorn.conf.py model_server.process.wsgi:app`` from this directory (the image's WORKDIR).
"""

import gc
import os
import shutil
import ssl
import sys
import tempfile

from model_server.config import ConfigError, Settings
from model_server.security.tls import ServerTls

# No cyclic garbage collection while the master imports and loads (until pre_fork): it creates ~300 000
# objects that all live as long as the server, and the ~460 collections they trigger (three of them full) free
# about a thousand and cost ~0.2 s of the time to the first prediction (scripts/bench --cold-start).
gc.disable()

try:
    settings = Settings.from_env()
    # Certificate files checked now, in the master: a key that does not match, an unreadable file, stop the
    # server with one line naming the file instead of workers failing each handshake.
    tls = ServerTls.from_settings(settings)
except ConfigError as exc:
    sys.exit(f"model-server: {exc}")

# Workers share metrics through files; a fresh directory per server start so counters restart at zero.
metrics_dir = settings.metrics_dir or os.path.join(tempfile.gettempdir(), "model-server-metrics")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
# Created here, not in on_starting: preload_app imports the app (and its metrics) before that hook. Only
# once per master: a HUP reads this file again while the workers still write their counters there.
if os.environ.get("_MODEL_SERVER_METRICS_DIR_OWNER") != str(os.getpid()):
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.environ["_MODEL_SERVER_METRICS_DIR_OWNER"] = str(os.getpid())
os.makedirs(metrics_dir, exist_ok=True)
# One BLAS thread per worker: workers are the parallelism; more threads only contend for the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# gRPC's core serves accepted connections on its older TCP endpoints rather than its EventEngine listener's:
# each call then crosses fewer of gRPC's internal threads, about 10 % less CPU per call and 14 % more calls/s
# (docs/performance.md, 2026-12-07). Read once, when a worker first imports grpc (after the fork); an operator's
# own GRPC_EXPERIMENTS wins.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")

wsgi_app = "model_server.process.wsgi:app"
if tls is not None:
    # gunicorn's own TLS settings: requests see the https scheme, and the sync and gthread worker classes wrap
    # their connections with the context below. The gevent worker (the default) does its own handshakes with
    # the same contexts (model_server/process/worker.py).
    certfile, keyfile = settings.tls_cert_file, settings.tls_key_file
    if settings.tls_client_ca_file:
        ca_certs, cert_reqs = settings.tls_client_ca_file, ssl.CERT_REQUIRED

    def ssl_context(config, default_ssl_context_factory):
        # Asked once per connection by the sync and gthread workers: the reloading context (security/tls.py).
        return tls.main_context()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The main port, and the health port (probes and /metrics only; model_server/process/worker.py) when set.
bind = [_address(settings.host, settings.port)]
if settings.health_port:
    bind.append(_address(settings.host, settings.health_port))
workers = settings.workers
# gevent by default: keep-alive connections skip a TCP handshake per request, and a slow client
# waits in a greenlet instead of holding a whole worker (the sync worker's weakness). Our subclass of
# gunicorn's gevent worker adds header/body deadlines, a connection cap that probes get past, and a
# drain that refuses new connections instead of resetting them (model_server/process/worker.py).
worker_class = (
    "model_server.process.worker.ModelServerWorker" if settings.worker_class == "gevent" else settings.worker_class
)
worker_connections = settings.worker_connections
threads = settings.threads
timeout = settings.timeout
graceful_timeout = settings.graceful_timeout
keepalive = settings.keepalive
# The model is loaded once in the master and shared copy-on-write by every worker.
preload_app = True
# Heartbeat files live in RAM, not on the (read-only) root filesystem.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()  # noqa: S108 - RAM-backed by design
# Header limits: hostile clients get 400/431 from gunicorn before the app sees anything.
limit_request_line = 4094
limit_request_fields = 64
limit_request_field_size = 8190
loglevel = settings.log_level
errorlog = "-"
accesslog = "-" if settings.access_log else None
logger_class = "model_server.logs.GunicornJsonLogger"
proc_name = "model-server"
# gunicorn 24+ opens a control socket under $HOME by default; the root filesystem is read-only.
control_socket_disable = True


def child_exit(server, worker):
    from model_server import metrics
    from model_server.core import outcomes

    metrics.worker_exited(worker.pid, metrics_dir)
    outcomes.forget(worker.pid, metrics_dir)


if settings.worker_class == "gevent":
    # Closes a connection whose refused body was left unread; then, with keep-alive, one turn per
    # connection per event-loop iteration, or busy keep-alive connections starve the rest of the
    # worker's (model_server/process/fairness.py).
    from model_server.process.worker import after_request as post_request  # noqa: F401 - gunicorn reads it by name


def post_fork(server, worker):
    # The first thing a worker does: keep a stop signal that comes before gunicorn's own handlers are in place.
    if hasattr(worker, "hold_early_signals"):
        worker.hold_early_signals()


def pre_fork(server, worker):
    # Everything the master imported and loaded (numpy, scikit-learn, the model) lives as long as the
    # workers do: moving it out of the collector's reach keeps full collections short (no multi-ms
    # pauses in the latency tail) and keeps copy-on-write pages shared with the master. The collector, off
    # while the master started (above), is back on for everything created from here. What the start left
    # unreachable is frozen with the rest rather than collected: 0.4-1.3 MB, where a full collection of the
    # loaded heap costs 0.15 s of the cold start (measured for the pipeline, hgb and forest demo models).
    gc.freeze()
    gc.enable()


if settings.grpc_port:

    def post_worker_init(worker):
        # gRPC after the fork, in each worker (model_server/transport/rpc/server.py): never in the master.
        from model_server.transport.rpc import server as rpc

        rpc.start(worker.wsgi, settings, worker.log.access_rpc)


def worker_exit(server, worker):
    if settings.grpc_port:
        # The gevent worker stopped gRPC when it began to drain; the sync and gthread workers stop it here.
        from model_server.transport.rpc import server as rpc

        stopped = rpc.stop(settings.graceful_timeout)
        if stopped is not None:
            stopped.wait(settings.graceful_timeout)
    # A gevent worker's interpreter teardown trips over logging's weakref callbacks after gevent's
    # patched threading module is gone, printing a non-JSON traceback per worker exit. Nothing is
    # lost at that point: silence only those final "exception ignored" reports.
    import sys

    sys.unraisablehook = lambda unraisable: None
