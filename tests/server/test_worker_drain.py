"""A stopping server serves the connections waiting in its backlog before it stops listening.

Unit level, on a real listening socket: the connections below completed their handshake in the kernel but
were never accepted, which is where a client's request sits when the whole server is told to stop.
"""

import socket

import gevent
import gevent.pool
import gevent.server
from model_server.process.worker import ModelServerWorker


def test_connections_waiting_in_the_backlog_are_served_by_the_servers_handler_then_closed():
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[tuple[str, int]] = []
    kept: list[socket.socket] = []  # held, so only the server's close-when-done can close them

    def handle(client: socket.socket, address: tuple[str, int]) -> None:
        served.append(address)
        kept.append(client)
        client.recv(64)
        client.sendall(b"answered")

    connections = gevent.pool.Group()
    server = gevent.server.StreamServer(listener, handle=handle, spawn=connections.spawn)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(2)]
    names = sorted(client.getsockname() for client in clients)
    try:
        for client in clients:
            client.sendall(b"request")
        # No self: draining the backlog needs only the server and its socket.
        ModelServerWorker._accept_waiting(None, server, listener)  # type: ignore[arg-type]
        connections.join(timeout=5)
        answers = [client.recv(64) for client in clients]
        after = [client.recv(64) for client in clients]  # b"" once the server closed its end
    finally:
        for client in clients:
            client.close()
        listener.close()
    assert sorted(served) == names, "each waiting connection is handed to the handler with its own address"
    assert answers == [b"answered", b"answered"]
    assert after == [b"", b""], "a served connection must be closed when its handler returns"


def test_a_socket_with_nothing_waiting_returns_at_once():
    listener = socket.create_server(("127.0.0.1", 0))
    server = gevent.server.StreamServer(listener, handle=lambda *_: None)
    try:
        with gevent.Timeout(2):
            ModelServerWorker._accept_waiting(None, server, listener)  # type: ignore[arg-type]
    finally:
        listener.close()
