"""gRPC's own threads as real OS threads inside a gevent worker; its handlers run in the worker's greenlets.

grpcio's gevent integration (``grpc.experimental.gevent``) hands every completion-queue event from a native
thread back to gevent's hub, and that is most of what a call cost: with it, ``scripts/bench --grpc`` measured
ours at 1905-1924 calls/s (2026-12-07, docs/performance.md), 1.2x KServe's gRPC. So in the gevent worker gRPC
runs as it would in an unpatched process, and only the handler crosses over:

* grpcio's sync server (``grpc._server``) makes its poller thread, its per-call conditions and its stop
  events with the ``threading`` module. gevent patched that module in place (its threads became greenlets,
  its locks gevent's), and a greenlet blocked in gRPC's C poll would stop the whole worker. ``install()``
  gives ``grpc._server`` a private copy of ``threading`` built on the original ``_thread`` primitives gevent
  saved, so its threads are the OS threads it expects. That reaches into grpcio's private module, pinned
  with grpcio in image/requirements.txt; ``install()`` refuses a grpcio whose module has moved.
* Calls run on ``Executor``'s OS threads: grpc's unary path waits there for the request message. Each
  handler then hands its work to the hub (``HubBridge``: gevent's thread-safe callback, then a greenlet) and
  waits on a native lock, so the work itself (guard, decoding, the prediction queue with its batching and
  shedding, metrics) runs where an HTTP request's runs, beside it. A slow client holds one of these threads
  while its message arrives, never the hub.

Tried and dropped (throwaway experiments, docs/grpc.md): the calls run as greenlets outright, with grpc's
per-call conditions made waitable from the hub; and a call's thread that stops waiting once its handler is
handed over. Both cost as much server CPU per call and served 10-20 % fewer calls/s.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import Any

_native: types.ModuleType | None = None


def native_threading() -> types.ModuleType:
    """A copy of ``threading`` whose threads and locks are the operating system's, in a gevent-patched
    process (gevent saved the originals of what it patched in ``_thread``)."""
    global _native
    if _native is None:
        import _thread

        from gevent import monkey

        original = types.ModuleType("_thread")
        original.__dict__.update(vars(_thread))
        for name in [name for name in vars(_thread) if not name.startswith("__")]:
            setattr(original, name, monkey.get_original("_thread", name))
        spec = importlib.util.find_spec("threading")
        if spec is None or spec.loader is None:
            raise RuntimeError("the threading module's source cannot be found to copy")
        module = importlib.util.module_from_spec(spec)
        patched, sys.modules["_thread"] = sys.modules["_thread"], original
        try:  # the copy binds _thread's functions as it is executed, so it takes the originals
            spec.loader.exec_module(module)
        finally:
            sys.modules["_thread"] = patched
        _native = module
    return _native


def install() -> None:
    """Point grpcio's sync server at native threads (the module's doc). Call before creating a server."""
    import grpc
    from grpc import _observability, _server

    if not hasattr(_server, "threading") or not hasattr(_observability, "_plugin_lock"):
        raise RuntimeError(
            f"grpcio {grpc.__version__} no longer has grpc._server.threading: "
            "model_server/transport/rpc/threads.py needs a look before gRPC can run in a gevent worker"
        )
    native = native_threading()
    _server.threading = native
    # Created when grpc was imported (after gevent's patching, so gevent's); taken on gRPC's own threads.
    _observability._plugin_lock = native.RLock()


class _Submitted:
    """What ``Executor.submit`` returns: grpc's server only adds a done callback (its count of active calls)."""

    __slots__ = ("_callbacks", "_done", "_lock")

    def __init__(self, lock: Any) -> None:
        self._callbacks: list[Callable[[Any], None]] = []
        self._done = False
        self._lock = lock

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


class Executor:
    """A pool of up to ``max_workers`` native threads, started as calls need them, for ``grpc.server``.
    (``concurrent.futures.ThreadPoolExecutor`` would take gevent's patched threads and queue.)"""

    def __init__(self, max_workers: int, name: str = "grpc", idle_exit_s: float = 60.0) -> None:
        self._threading = native_threading()
        self._allocate_lock = self._threading.Lock
        self._ready = self._threading.Condition(self._threading.Lock())
        self._work: deque[tuple[_Submitted, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._idle = 0
        self._threads = 0
        self._max = max_workers
        self._name = name
        # A thread idle this long ends: a burst of slow calls (up to the worker's connection cap) does not leave
        # that many threads behind for the worker's life.
        self._idle_exit_s = idle_exit_s

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Submitted:
        submitted = _Submitted(self._allocate_lock())
        with self._ready:
            self._work.append((submitted, fn, args))
            if self._idle:
                self._ready.notify()
            elif self._threads < self._max:
                self._threads += 1
                name = f"{self._name}-{self._threads}"
                self._threading.Thread(target=self._serve, name=name, daemon=True).start()
        return submitted

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._work:
                    self._idle += 1
                    woken = self._ready.wait(self._idle_exit_s)
                    self._idle -= 1
                    if not woken and not self._work:
                        self._threads -= 1
                        return
                submitted, fn, args = self._work.popleft()
            try:
                fn(*args)  # grpc's own wrapper: it reports its exceptions itself
            finally:
                submitted.finish()


class HubBridge:
    """Runs functions in a greenlet of the hub that created it, for callers on other OS threads."""

    def __init__(self) -> None:
        import gevent

        self._spawn = gevent.spawn
        self._soon = gevent.get_hub().loop.run_callback_threadsafe
        self._allocate_lock = native_threading().Lock

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run in a new greenlet; its result, or its exception raised here. Blocks this OS thread
        (never the hub's: call it only from another thread)."""
        finished = self._allocate_lock()
        finished.acquire()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed to the calling thread, which raises it
                outcome.append((False, exc))
            finally:
                finished.release()

        self._soon(self._spawn, run)
        finished.acquire()
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value

    def threadsafe(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """``fn`` as a callback another thread may call: it runs on the hub, soon."""

        def callback(*args: Any) -> None:
            self._soon(fn, *args)

        return callback

    def unary(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """A unary gRPC handler whose body runs in the hub."""
        return lambda request, context: self.call(handler, request, context)

    def stream(self, handler: Callable[[Any, Any], Generator[Any, None, None]]) -> Callable[[Any, Any], Iterator[Any]]:
        """A streaming gRPC handler whose generator advances in the hub, one message at a time, and is closed
        there when gRPC stops asking (the client went): its ``finally`` blocks run in the hub, not here."""
        end = object()

        def call(request: Any, context: Any) -> Iterator[Any]:
            messages = self.call(handler, request, context)
            try:
                while True:
                    message = self.call(next, messages, end)
                    if message is end:
                        return
                    yield message
            finally:
                self.call(messages.close)

        return call
