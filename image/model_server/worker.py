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
  else gets 503 with ``Retry-After`` at once and is closed.
* **Drain without dropping a request.** On SIGTERM the worker takes every connection already
  waiting to be accepted, then stops the listening socket (new connections are refused, not
  reset), and keeps each open connection until its next request, which is answered with
  ``Connection: close``, or until it closes or stays idle for the keep-alive limit, within the
  graceful timeout.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from functools import partial
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Group
from gevent.server import StreamServer
from gunicorn import http, util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.ggevent import GeventWorker

from . import metrics
from .config import Settings
from .errors import RequestTimeout

BODY_BYTES_PER_SECOND = 64 * 1024  # the slowest upload the body deadline allows for, at the body limit
OVER_CAP_GRACE_S = 1.0  # how long a connection past the cap may take to show its request line
OVER_CAP_HANDLERS = 64  # connections past the cap being looked at at once; more are closed unread
PROBE_PATHS = (b"/v2/health/", b"/metrics")
_ACCEPT_PER_TURN = 4
_HEARTBEAT_S = 1.0  # how often the worker tells the master it is alive
_POLL_S = 0.05  # how often the drain looks for connections still open


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


def _quiet_timeout(seconds: float) -> gevent.Timeout:
    """A deadline that, when it passes, ends its ``with`` block quietly instead of raising."""
    # gevent documents False as the silent exception; its stub admits only exceptions.
    return gevent.Timeout(seconds, False)  # type: ignore[arg-type]


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
        self.request_deadline = settings.header_timeout + settings.max_body_bytes / BODY_BYTES_PER_SECOND
        self.open_connections = 0
        self.over_cap = 0
        self.drain_deadline = float("inf")
        self.connections = Group()
        self._stopping: Event | None = None

    # ---- serving -------------------------------------------------------------------------------------

    def run(self) -> None:
        servers = []
        for listener in self.sockets:
            listener.setblocking(True)
            # spawn into a Group, not a Pool: accepting never stops; the cap is enforced per connection.
            # type: ignore: mypy cannot match Group.spawn's ParamSpec signature to the stub's spawn protocol.
            server = _Server(  # type: ignore[call-overload]
                listener, handle=partial(self.handle, listener), spawn=self.connections.spawn
            )
            if self.cfg.workers > 1:
                # gunicorn takes one connection per loop turn so workers share them evenly; a few keep
                # a burst of new connections from waiting many busy turns in the backlog.
                server.max_accept = _ACCEPT_PER_TURN
            server.start()
            servers.append((server, listener))
        self._stopping = Event()
        while self.alive:
            self.notify()
            self._stopping.wait(_HEARTBEAT_S)
        self.drain(servers)

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self._stopping is not None:
            self._stopping.set()  # start draining now, not at the next heartbeat

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        client.setblocking(1)
        self.open_connections += 1
        try:
            if self.open_connections > self.connection_cap:
                self._over_capacity(listener, client, addr)
            else:
                self._serve(listener, client, addr)
        finally:
            self.open_connections -= 1

    def _serve(self, listener: Any, client: Any, addr: Any) -> None:
        parser = http.get_parser(self.cfg, client, addr)
        listener_name = listener.getsockname()
        first = True
        try:
            while True:
                req = self._next_request(parser, first)
                if req is None:
                    if first:
                        self._reply(client, _HEADER_TIMEOUT)
                    return
                first = False
                self.handle_request(listener_name, req, client, addr)
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
            util.close(client)

    def _next_request(self, parser: Any, first: bool) -> Any:
        """The next request's head within its deadline, or None when it did not come in time."""
        if first:
            limit = self.header_timeout
        else:
            # Keep-alive: the usual idle limit. While draining too (capped by the graceful deadline): a
            # client still using the connection sends within it and is answered with Connection: close.
            limit = min(self.cfg.keepalive, max(0.0, self.drain_deadline - time.monotonic()))
        with _quiet_timeout(limit):
            return next(parser)
        return None

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        # The body must arrive, and the answer be taken, within the request deadline: a client that
        # trickles either cannot hold the connection. Inside the app it surfaces as a 408.
        with gevent.Timeout(self.request_deadline, RequestTimeout("the request body did not arrive in time")):
            return super().handle_request(listener_name, req, sock, addr)

    def _over_capacity(self, listener: Any, client: Any, addr: Any) -> None:
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
                self._serve(listener, client, addr)
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
        for server, listener in servers:
            server.stop_accepting()
            self._accept_waiting(listener)
            # Takes the socket out of listening for every process that shares it: a new connection is
            # refused (the client tries elsewhere) instead of waiting in a backlog nobody reads. Another
            # worker may have done it already.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RD)
            util.close(listener)
        while self.connections and time.monotonic() < self.drain_deadline:
            self.notify()
            gevent.sleep(_POLL_S)
        if self.connections:
            self.log.warning("graceful timeout: closing %d connections", len(self.connections))
            self.connections.kill(timeout=1)

    def _accept_waiting(self, listener: Any) -> None:
        """Serve the connections that completed their handshake but were not accepted yet."""
        listener.setblocking(False)
        while True:
            try:
                client, addr = listener.accept()
            except OSError:  # nothing waiting (EAGAIN), or the socket already stopped listening
                return
            self.connections.spawn(self.handle, listener, client, addr)
