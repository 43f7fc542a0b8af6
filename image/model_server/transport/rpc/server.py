"""One gRPC server per gunicorn worker, created after the fork, on the shared port (SO_REUSEPORT).

gRPC's core keeps threads and polling state that do not survive a fork, so nothing of it may exist in the
master: this module is imported only in a worker (gunicorn.conf.py's post_worker_init). Each worker binds
MODEL_SERVER_GRPC_PORT with SO_REUSEPORT (gRPC's own multiprocessing pattern) and the kernel spreads new
connections over the workers, as it does REST's; the calls run in the worker beside its REST requests,
with the same model, queue and guard. Chosen over one gRPC process of its own: that process would be one
core and one interpreter for every gRPC call while the workers' cores idle, and a second copy of the
model and its queue to keep consistent.

In a gevent worker gRPC keeps its own native threads and only the handlers run on gevent's loop, in
greenlets (threads.py, and why not grpcio's gevent integration), so a call waits in the worker's
prediction queue like an HTTP request does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...config import Settings
from ...core.scheduler import cooperative
from ...security.tls import TlsError, check_files

log = logging.getLogger("model_server.transport.rpc")
_running: Any = None  # this worker's grpc.Server, once started
_service: Any = None  # and its handlers (service.Service)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start(app: Any, settings: Settings, access: Callable[..., None] | None = None) -> Any:
    """Serve gRPC in this worker with ``app``'s model, guard and metrics; the started grpc.Server."""
    global _running, _service
    import grpc

    from ..fastpath import EXTENSION
    from . import threads
    from .service import Service

    limit = settings.worker_connections  # calls in flight per worker: REST's connection cap
    bridge = None
    executor: Any = None
    if cooperative():
        threads.install()  # before the server exists: its poller and conditions are native (threads.py)
        bridge = threads.HubBridge()
        executor = threads.Executor(limit)
    else:
        executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="grpc")
    fast = app.extensions[EXTENSION]
    service = Service(app.extensions["model_server"], settings, fast.guard, fast.request_metrics, access, bridge)
    server = grpc.server(
        executor,
        handlers=service.handlers(),
        options=[
            ("grpc.so_reuseport", 1),
            # A message past the body limit is refused by gRPC itself (RESOURCE_EXHAUSTED) before it is read whole.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ],
        maximum_concurrent_rpcs=limit,
    )
    where = address(settings.host, settings.grpc_port)
    credentials = server_credentials(settings)
    bound = server.add_secure_port(where, credentials) if credentials else server.add_insecure_port(where)
    if not bound:
        raise RuntimeError(f"gRPC could not bind {where} (MODEL_SERVER_GRPC_PORT)")
    server.start()
    _running, _service = server, service
    log.info("gRPC serving", extra={"address": where, "tls": credentials is not None, "pid": os.getpid()})
    return server


def stop(grace: float) -> Stopping | None:
    """Refuse new calls, let calls in flight finish within ``grace`` seconds; what to wait on for the end (None
    when gRPC is not running here)."""
    global _running, _service
    server, service, _running, _service = _running, _service, None, None
    if service is not None:
        service.stopping.set()  # open health Watch streams say NOT_SERVING and end now, not at the grace's end
    return Stopping(server.stop(grace)) if server is not None else None


class Stopping:
    """The end of a server's stop, waited for without blocking gevent's loop: grpc sets a native event from its
    own thread once the last call finished, and those calls run in this worker's greenlets."""

    POLL_S = 0.02

    def __init__(self, stopped: Any) -> None:
        self.stopped = stopped

    def wait(self, timeout: float) -> bool:
        """Whether every call finished within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.POLL_S, left))  # gevent's sleep in a gevent worker: the calls keep running
        return True


def server_credentials(settings: Settings) -> Any:
    """TLS (mutual with a client CA) from the REST port's files, reloaded when they change; None: plaintext."""
    if not settings.tls_cert_file:
        return None
    import grpc

    files = [
        settings.tls_cert_file,
        settings.tls_key_file,
        *([settings.tls_client_ca_file] if settings.tls_client_ca_file else []),
    ]

    def stamp() -> tuple[tuple[int, int], ...]:
        stats = []
        for path in files:
            try:
                info = os.stat(path)
            except OSError:
                stats.append((-1, -1))
            else:
                stats.append((info.st_mtime_ns, info.st_size))
        return tuple(stats)

    def configuration() -> Any:
        check_files(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        with open(settings.tls_key_file, "rb") as key, open(settings.tls_cert_file, "rb") as cert:
            pair = (key.read(), cert.read())
        ca = None
        if settings.tls_client_ca_file:
            with open(settings.tls_client_ca_file, "rb") as file:
                ca = file.read()
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    current = {"stamp": stamp()}

    def fetch() -> Any:
        # Asked by gRPC before new handshakes: a changed, usable set of files replaces the certificate; a
        # changed but unusable one is logged once and the previous certificate kept (as on the REST port).
        now = stamp()
        if now == current["stamp"]:
            return None
        current["stamp"] = now
        try:
            return configuration()
        except (TlsError, OSError) as exc:
            log.warning("TLS files changed but cannot be used; gRPC keeps the previous certificate: %s", exc)
            return None

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=bool(settings.tls_client_ca_file)
    )
