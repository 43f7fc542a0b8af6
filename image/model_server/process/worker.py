"""The gevent worker, made safe for hostile clients and for shutdown under keep-alive load.

gunicorn.conf.py runs this class for MODEL_SERVER_WORKER_CLASS=gevent. What it changes in gunicorn's
GeventWorker, and why:

* **Deadlines.** A new connection gets MODEL_SERVER_HEADER_TIMEOUT seconds to send its request
  line and headers, else 408 and close (slow-header clients cannot hold a connection for long);
  later requests on a keep-alive connection keep the keep-alive limit, as before. Reading the body
  and writing the answer get the header timeout plus a second per 64 KiB of the body limit.
* **Connections never starve the probes.** gunicorn's worker stops accepting once it holds
  worker_connections connections, and the rest wait in the kernel's backlog, health checks among
  them, until a slot frees. Here connections are always accepted; past the cap a connection has a
  second to show its request line: a probe (``/v2/health/*``) or ``/metrics`` is answered, anything
  else gets 503 with ``Retry-After`` at once and is closed. With MODEL_SERVER_HEALTH_PORT the probes
  have a listener of their own that neither the cap, the queue nor the main port's deadlines touch.
* **Cheap shedding.** A prediction that this worker's full queue would refuse is answered from a
  ready-made 503 as soon as its head is parsed: no WSGI environ, no middleware, no body read. Its
  connection's next request is then read only after a pause well inside the ``Retry-After`` it was
  given: a client that retries at once (most do) would otherwise be shed again on every loop turn,
  and under overload the sheds, however cheap, would crowd out the predictions.
* **No lock-out.** With a plain full-queue check, the connections just served take the places they
  free again (their clients send the next request at once), and a client that was shed finds the
  queue full whenever it comes back: under 16x overload (scripts/reliability) a client sending one
  request at a time was admitted for 0 to 33 % of its attempts. While connections are being shed, a
  connection whose last request was served stops a quarter of the queue short of full (at most one
  place per shed connection), so the sheds rotate among the clients: about half admitted (47 to 70 %
  over thirteen runs).
* **Drain without dropping a request.** On SIGTERM the worker keeps each open connection until its
  next request, which is answered with ``Connection: close``, or until it closes or stays idle for
  the keep-alive limit, within the graceful timeout. When the whole server stops (the master has
  let go of the listening socket) the worker also takes every connection already waiting to be
  accepted and stops the socket, so new connections are refused, not reset. When only this worker
  leaves (a TERM to it, HUP, TTOU, max_requests) the socket is the siblings' too and stays open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from functools import partial
from importlib import metadata
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Group
from gevent.server import StreamServer
from gunicorn import http, util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.ggevent import GeventWorker

from .. import metrics
from ..config import Settings
from ..errors import RequestTimeout
from ..logs import GunicornJsonLogger
from ..security.tls import ServerTls
from ..transport.admission import CLOSE_CONNECTION_ENVIRON_KEY
from ..transport.fastpath import EXTENSION
from . import fairness

BODY_BYTES_PER_SECOND = 64 * 1024  # the slowest upload the body deadline allows for, at the body limit
OVER_CAP_GRACE_S = 1.0  # how long a connection past the cap may take to show its request line
OVER_CAP_HANDLERS = 64  # connections past the cap being looked at at once; more are closed unread
PROBE_PATHS = (b"/v2/health/", b"/metrics")
# The health listener serves kubelet and Prometheus: a few connections, small requests, no bodies.
HEALTH_CONNECTIONS = 64
HEALTH_HEADER_TIMEOUT_S = 5.0
# A connection closed with a request body unread: how long its remaining bytes are read and dropped so the
# client sees the answer instead of a reset (the kernel resets a connection closed with unread data).
LINGER_S = 1.0
_ACCEPT_PER_TURN = 4
_HEARTBEAT_S = 1.0  # how often the worker tells the master it is alive
_POLL_S = 0.05  # how often the drain looks for connections still open
_SHED_KEEPALIVE_MAX_BODY = 64 * 1024  # a shed request's body up to this is skipped; longer ones close
# After a shed, the connection's next request waits this long (its Retry-After says 1 s). Measured with 256
# keep-alive connections against 2 workers (docs/reliability.md): without it, sheds ran at ~20 000/s and
# the predictions served fell to a tenth of the unloaded rate.
SHED_PAUSE_S = 0.1
LOCKOUT_GUARD_SHARE = 4  # one place in this many of the queue is kept for connections just shed


def _plain_response(status: str, message: bytes, extra: bytes = b"") -> bytes:
    body = b'{"error": "' + message + b'"}'
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_OVER_CAPACITY = _plain_response(
    "503 Service Unavailable", b"this worker holds its most connections; retry in a moment", b"Retry-After: 1\r\n"
)
_HEADER_TIMEOUT = _plain_response("408 Request Timeout", b"the request headers did not arrive in time")
_HEALTH_ONLY = _plain_response(
    "404 Not Found", b"this port answers only GET /v2/health/live, /v2/health/ready and /metrics"
)


def _quiet_timeout(seconds: float) -> gevent.Timeout:
    """A deadline that, when it passes, ends its ``with`` block quietly instead of raising."""
    # gevent documents False as the silent exception; its stub admits only exceptions.
    return gevent.Timeout(seconds, False)  # type: ignore[arg-type]


def master_holds(listener: socket.socket, master_pid: int) -> bool:
    """Whether process ``master_pid`` still has ``listener`` open. gunicorn's master closes its listeners
    before it signals the workers to stop the whole server, and keeps them when one worker leaves (HUP,
    TTOU, a signal to that worker, max_requests). Where /proc cannot tell, True: never take the socket
    away from the siblings."""
    try:
        wanted = f"socket:[{os.fstat(listener.fileno()).st_ino}]"
        entries = list(os.scandir(f"/proc/{master_pid}/fd"))
    except OSError:
        return True
    for entry in entries:
        with contextlib.suppress(OSError):
            if os.readlink(entry.path) == wanted:
                return True
    return False


class _Server(StreamServer):
    def do_read(self) -> Any:
        try:
            return super().do_read()
        except OSError as exc:
            # Another worker took the shared socket out of listening (drain): stop, quietly.
            if exc.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSOCK):
                self.stop_accepting()
                return None
            raise


class ModelServerWorker(GeventWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = Settings.from_env()
        self.connection_cap = settings.worker_connections
        self.header_timeout = settings.header_timeout
        self.health_port = settings.health_port
        self.request_deadline = settings.header_timeout + settings.max_body_bytes / BODY_BYTES_PER_SECOND
        self.open_connections = 0
        # Under shedding, a connection whose last request was served may fill the queue only up to this many
        # places short of full: the rest are for connections whose last request was shed (the module's doc).
        self.lockout_guard = settings.max_queue // LOCKOUT_GUARD_SHARE
        self.shed_connections = 0  # open connections whose last request was shed
        self.health_connections = 0
        self.over_cap = 0
        self.drain_deadline = float("inf")
        self.connections = Group()
        self.fastpath: Any = None  # the app's fastpath.PredictionFastPath, found in run()
        # TLS on both ports when configured (security/tls.py); each worker builds its own contexts after the
        # fork (gevent's patched ssl) and rebuilds them when the certificate files change.
        self.tls = ServerTls.from_settings(settings)
        self._stopping: Event | None = None
        self.early_signal: int | None = None  # a stop signal that came before gunicorn's handlers (hold_early_signals)

    def hold_early_signals(self) -> None:
        """Right after the fork (gunicorn.conf.py's post_fork), until gunicorn installs this worker's own
        handlers: the master's handlers are still in place, and they put a signal in the master's queue, in
        this process a copy nobody reads. A SIGTERM in those first ~60 ms (gevent's patching, the worker's
        setup) was lost, and the server stopped only when the master killed the worker at the graceful
        timeout: 20 s for a server stopped just after it answered its first prediction. Kept here, it is
        acted on as soon as the worker runs."""
        for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(stop, self._hold)

    def _hold(self, sig: int, frame: Any) -> None:
        self.early_signal = sig

    def patch(self) -> None:
        """gunicorn's monkey-patching, with gevent's plugin look-ups answered from one scan.

        While it patches, gevent asks importlib.metadata for the entry points of its plugin groups 25 times,
        and each call reads the metadata of every installed distribution: 170 ms of a worker's start, at every
        start, for a first prediction that otherwise comes ~10 ms after the fork. Nothing is installed in
        between, so one scan answers every call, whichever groups they name."""
        with _entry_points_scanned_once():
            super().patch()

    # ---- serving -------------------------------------------------------------------------------------

    def run(self) -> None:
        # The app's fast path sheds and answers predictions straight from gunicorn's request head.
        self.fastpath = getattr(self.wsgi, "extensions", {}).get(EXTENSION)
        servers = []
        for listener in self.sockets:
            listener.setblocking(True)
            # The address is read once, here: drain closes this process's listener while connections it
            # accepted a moment before still wait for their first turn, and they must be served, not reset.
            address = listener.getsockname()
            handle = partial(self.handle_health if self._is_health(address) else self.handle, address)
            # spawn into a Group, not a Pool: accepting never stops; the cap is enforced per connection.
            # type: ignore: mypy cannot match Group.spawn's ParamSpec signature to the stub's spawn protocol.
            server = _Server(  # type: ignore[call-overload]
                listener, handle=handle, spawn=self.connections.spawn
            )
            if self.cfg.workers > 1:
                # gunicorn takes one connection per loop turn so workers share them evenly; a few keep
                # a burst of new connections from waiting many busy turns in the backlog.
                server.max_accept = _ACCEPT_PER_TURN
            server.start()
            servers.append((server, listener))
        self._stopping = Event()
        if self.early_signal is not None:  # stopped while it was starting: drain at once (nothing is open yet)
            self.log.info("worker stopping: signal %s came while it was starting", self.early_signal)
            self.alive = False
        while self.alive:
            self.notify()
            # Certificates and tokens looked at every heartbeat too, not only when a connection or request
            # comes: every worker serves a renewal within a second or two of the Secret's update.
            if self.tls is not None:
                self.tls.refresh()
            if self.fastpath is not None:
                self.fastpath.guard.refresh()
            self._stopping.wait(_HEARTBEAT_S)
        self.drain(servers)

    def _is_health(self, address: Any) -> bool:
        if not self.health_port:
            return False
        return isinstance(address, tuple) and address[1] == self.health_port

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self._stopping is not None:
            self._stopping.set()  # start draining now, not at the next heartbeat

    def handle(self, listener_name: Any, client: Any, addr: Any) -> None:
        client.setblocking(1)
        self.open_connections += 1
        try:
            if self.open_connections > self.connection_cap:
                if self.tls is not None:
                    # Past the cap a TLS connection is closed before its handshake (the handshake is what the cap
                    # saves): nothing can be read of it without one. Probes go to the health port.
                    metrics.shed("connections").inc()
                    util.close(client)
                else:
                    self._over_capacity(listener_name, client, addr)
                return
            if self.tls is not None:
                client = self._handshake(client, self.tls.main_context(), self.header_timeout)
                if client is None:
                    return
            self._serve(listener_name, client, addr)
        finally:
            self.open_connections -= 1

    def handle_health(self, listener_name: Any, client: Any, addr: Any) -> None:
        """A connection to the health listener: probes and /metrics only, under limits of its own."""
        client.setblocking(1)
        self.health_connections += 1
        try:
            if self.health_connections > HEALTH_CONNECTIONS:
                util.close(client)
                return
            if self.tls is not None:
                client = self._handshake(client, self.tls.health_context(), HEALTH_HEADER_TIMEOUT_S)
                if client is None:
                    return
            self._serve(listener_name, client, addr, health=True)
        finally:
            self.health_connections -= 1

    def _handshake(self, client: Any, context: ssl.SSLContext, seconds: float) -> Any:
        """The connection with TLS established within ``seconds``, or None (closed, the failure counted): no
        client certificate where one is required, a certificate the CA did not sign, plaintext, a stall."""
        reason = "timeout"
        secured = None
        with _quiet_timeout(seconds):
            try:
                secured = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
                secured.do_handshake()
                return secured
            except ssl.SSLError as exc:
                reason = _handshake_failure(exc)
            except OSError:
                reason = "connection"
        metrics.tls_handshake_failure(reason).inc()
        util.close(secured if secured is not None else client)
        return None

    def _serve(self, listener_name: Any, client: Any, addr: Any, health: bool = False) -> None:
        parser = http.get_parser(self.cfg, client, addr)
        first = True
        linger = False
        shed_last = False  # whether this connection's last request was shed (counted in shed_connections)
        try:
            while True:
                req = self._next_request(parser, first, HEALTH_HEADER_TIMEOUT_S if health else self.header_timeout)
                if req is None:
                    if first:
                        self._reply(client, _HEADER_TIMEOUT)
                    return
                served_before, first = not first, False
                if health and not (req.method in ("GET", "HEAD") and req.path.encode().startswith(PROBE_PATHS)):
                    self._reply(client, _HEALTH_ONLY)
                    return
                fast = None if health else self.fastpath
                # A connection whose last request was served leaves places for connections whose last was shed.
                reserved = min(self.shed_connections, self.lockout_guard) if served_before and not shed_last else 0
                refused = None if fast is None else fast.refusal(req.method, req.path, req.headers, reserved)
                if shed_last != (refused is not None):
                    self.shed_connections += 1 if refused is not None else -1
                    shed_last = refused is not None
                if refused is not None:
                    self._reply(client, refused)
                    if req.should_close() or not _body_skippable(req):
                        linger = True
                        return
                    if self.alive:
                        gevent.sleep(SHED_PAUSE_S)
                    continue
                answered = None if fast is None else self._answer_direct(fast, req, client, addr)
                if answered is not None:
                    if answered.close:
                        linger = not _body_consumed(req)
                        return
                    continue
                self.handle_request(listener_name, req, client, addr)
                if req.must_close and not _body_consumed(req):
                    linger = True
                    return
                if not self.cfg.keepalive:
                    return
        except NoMoreData:
            self.log.debug("client closed the connection")
        except StopIteration:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("socket error while serving a connection")
        except Exception as exc:
            self.handle_error(None, client, addr, exc)
        finally:
            if shed_last:
                self.shed_connections -= 1
            if linger:
                _linger(client)
            util.close(client)

    def _next_request(self, parser: Any, first: bool, header_timeout: float) -> Any:
        """The next request's head within its deadline, or None when it did not come in time."""
        # After the first, the keep-alive idle limit. While draining too (capped by the graceful deadline): a
        # client still using the connection sends within it and is answered with Connection: close.
        limit = header_timeout if first else min(self.cfg.keepalive, max(0.0, self.drain_deadline - time.monotonic()))
        with _quiet_timeout(limit):
            return next(parser)
        return None

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        # The body must arrive, and the answer be taken, within the request deadline: a client that
        # trickles either cannot hold the connection. Inside the app it surfaces as a 408.
        with gevent.Timeout(self.request_deadline, RequestTimeout("the request body did not arrive in time")):
            return super().handle_request(listener_name, req, sock, addr)

    def _answer_direct(self, fast: Any, req: Any, client: Any, addr: Any) -> Any:
        """A prediction answered by the app's fast path without WSGI (fastpath.PredictionFastPath.direct), under
        the same deadline, request count, access log and per-request yield as gunicorn's own path; None when
        the fast path does not take it."""
        started = time.perf_counter()
        keep_alive = bool(self.alive and self.cfg.keepalive and not req.should_close())
        with gevent.Timeout(self.request_deadline, RequestTimeout("the request body did not arrive in time")):
            answer = fast.direct(req, keep_alive, getattr(client, "getpeercert", _no_certificate))
            if answer is None:
                return None
            try:
                client.sendall(answer.data)
            except RequestTimeout:
                raise StopIteration from None  # the client does not take its answer: close
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        remote = addr[0] if isinstance(addr, tuple) else None
        if isinstance(self.log, GunicornJsonLogger):
            self.log.access_direct(
                req,
                remote,
                answer.status,
                time.perf_counter() - started,
                answer.body_bytes,
                answer.request_id,
                answer.audit,
            )
        if not answer.close and self.cfg.keepalive:
            fairness.next_turn()
        return answer

    def _over_capacity(self, listener_name: Any, client: Any, addr: Any) -> None:
        """Past the cap: answer a probe or /metrics, refuse anything else quickly."""
        self.over_cap += 1
        try:
            if self.over_cap > OVER_CAP_HANDLERS:
                metrics.shed("connections").inc()
                return
            line = b""
            with _quiet_timeout(OVER_CAP_GRACE_S):
                line = client.recv(1024, socket.MSG_PEEK)
            parts = line.split(b" ", 2)
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].startswith(PROBE_PATHS):
                self._serve(listener_name, client, addr)
                return
            metrics.shed("connections").inc()
            self._reply(client, _OVER_CAPACITY)
        except OSError:
            pass
        finally:
            self.over_cap -= 1
            util.close(client)

    @staticmethod
    def _reply(client: Any, response: bytes) -> None:
        with contextlib.suppress(OSError):
            client.sendall(response)

    # ---- shutdown ------------------------------------------------------------------------------------

    def drain(self, servers: list[tuple[StreamServer, Any]]) -> None:
        """Stop taking connections without resetting any, then let every open connection finish."""
        self.drain_deadline = time.monotonic() + self.cfg.graceful_timeout
        grpc_stopped = None
        if "model_server.transport.rpc.server" in sys.modules:
            # gRPC refuses new calls now and finishes those in flight alongside the HTTP connections.
            grpc_stopped = sys.modules["model_server.transport.rpc.server"].stop(self.cfg.graceful_timeout)
        for server, listener in servers:
            server.stop_accepting()
            if not master_holds(listener, self.ppid):
                # The whole server is stopping: serve what completed its handshake already, then take the
                # socket out of listening for every process that shares it, so a new connection is refused
                # (the client tries elsewhere) instead of waiting in a backlog nobody reads. Another worker
                # may have done it already.
                self._accept_waiting(server, listener)
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RD)
            # Otherwise only this worker leaves: the master and the siblings keep the socket listening,
            # and closing this process's descriptor leaves theirs untouched.
            util.close(listener)
        while self.connections and time.monotonic() < self.drain_deadline:
            self.notify()
            gevent.sleep(_POLL_S)
        if self.connections:
            self.log.warning("graceful timeout: closing %d connections", len(self.connections))
            self.connections.kill(timeout=1)
        if grpc_stopped is not None:
            grpc_stopped.wait(max(0.0, self.drain_deadline - time.monotonic()))

    def _accept_waiting(self, server: StreamServer, listener: Any) -> None:
        """Serve the connections that completed their handshake but were not accepted yet, as ``server`` serves
        the ones it accepts (its handler, in the connections group)."""
        listener.setblocking(False)
        while True:
            try:
                client, addr = listener.accept()
            except OSError:  # nothing waiting (EAGAIN), or the socket already stopped listening
                return
            server.do_handle(client, addr)


@contextlib.contextmanager
def _entry_points_scanned_once() -> Iterator[None]:
    """importlib.metadata.entry_points answered from one scan of the installed distributions, for this block."""
    scan = metadata.entry_points
    installed = scan()

    def entry_points(**params: Any) -> Any:
        return installed.select(**params) if params else installed

    metadata.entry_points = entry_points
    try:
        yield
    finally:
        metadata.entry_points = scan


def after_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    """gunicorn's post_request hook for this worker: close the connection when the app refused a body it did
    not read (its rest would otherwise be read and dropped before the next request), then let the worker's
    other connections have their turn (fairness.py)."""
    if environ.get(CLOSE_CONNECTION_ENVIRON_KEY):
        req.must_close = True
    if worker.cfg.keepalive:
        fairness.yield_to_other_connections(worker, req, environ, resp)


def _header(req: Any, name: str) -> str | None:
    for key, value in req.headers:
        if key == name:
            return str(value)
    return None


def _body_skippable(req: Any) -> bool:
    """Whether a refused request's unread body is short enough to skip and keep the connection: a declared
    length, small, and no client waiting for ``100 Continue`` before it sends it."""
    if _header(req, "EXPECT") is not None or _header(req, "TRANSFER-ENCODING") is not None:
        return False
    length = _header(req, "CONTENT-LENGTH")
    return length is None or (length.isdigit() and int(length) <= _SHED_KEEPALIVE_MAX_BODY)


def _body_consumed(req: Any) -> bool:
    reader = getattr(getattr(req, "body", None), "reader", None)
    return getattr(reader, "length", 1) == 0


def _linger(client: Any) -> None:
    """Stop sending, then read and drop what the client is still sending for a moment, so it reads the
    answer instead of a reset."""
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)
        with _quiet_timeout(LINGER_S):
            while client.recv(65536):
                pass


def _no_certificate() -> None:
    return None


def _handshake_failure(exc: ssl.SSLError) -> str:
    """A bounded label for a failed handshake (the metric's reason): what the client did wrong."""
    text = f"{exc.reason or ''} {exc}".upper()
    if "CERTIFICATE_REQUIRED" in text or "PEER DID NOT RETURN A CERTIFICATE" in text:
        return "no client certificate"
    if "CERTIFICATE" in text or "UNKNOWN_CA" in text:
        return "bad client certificate"
    if "HTTP_REQUEST" in text or "WRONG_VERSION_NUMBER" in text or "RECORD" in text:
        return "not TLS"
    if "VERSION" in text or "PROTOCOL" in text or "CIPHER" in text:
        return "protocol or cipher refused"
    return "other"
