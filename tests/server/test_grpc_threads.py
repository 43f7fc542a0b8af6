"""gRPC's native threads inside a gevent worker (model_server/transport/rpc/threads.py): what they block and
what they do not, handlers handed to the hub, the call threads' pool, and the refusal of a grpcio whose
private module moved. Each case runs in a fresh interpreter patched by gevent, as a worker is."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

PATCHED = """
from gevent import monkey
monkey.patch_all()
import gevent, threading, time
from model_server.transport.rpc import threads
"""


def run_patched(body: str) -> list[str]:
    """``body`` run after gevent's patching in a fresh interpreter; the lines it printed."""
    done = subprocess.run(
        [sys.executable, "-c", PATCHED + textwrap.dedent(body)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "image")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


# A thread that blocks in C on a native lock for 0.3 s while a greenlet ticks every 10 ms: how many ticks.
BLOCKING_THREAD = """
native = threads.native_threading()
held = native.Lock()
held.acquire()
ticks = []
def ticker():
    while True:
        ticks.append(1)
        gevent.sleep(0.01)
gevent.spawn(ticker)
gevent.sleep(0.05)
worker = {kind}.Thread(target=lambda: held.acquire(True, 0.3))
before = len(ticks)
worker.start()
while worker.is_alive():  # (a native join would block this thread, the loop with it)
    gevent.sleep(0.01)
print(len(ticks) - before)
"""


def test_the_copys_threads_block_in_c_without_stopping_gevents_loop():
    # gRPC's poller blocks in C exactly like this. On the copy's OS thread the greenlets keep ticking (~30 in
    # 0.3 s); on the patched module's thread (a greenlet) the same block stops the whole loop: the failure the
    # copy exists for, and the control that this test can tell the two apart.
    (native_ticks,) = run_patched(BLOCKING_THREAD.format(kind="native"))
    (patched_ticks,) = run_patched(BLOCKING_THREAD.format(kind="threading"))
    assert int(native_ticks) >= 15, native_ticks
    assert int(patched_ticks) <= 2, patched_ticks


def test_the_bridge_runs_handlers_in_a_greenlet_of_the_hub_and_hands_back_results_and_exceptions():
    printed = run_patched(
        """
        native = threads.native_threading()
        bridge = threads.HubBridge()
        hub_thread = native.get_ident()
        seen = []
        def handler(request, context):
            seen.append((native.get_ident() == hub_thread, gevent.getcurrent() is not gevent.get_hub()))
            gevent.sleep(0.01)  # a handler may wait cooperatively, as the prediction queue does
            if request == "bad":
                raise ValueError("refused: " + context)
            return request * 2
        closed_on = []
        def stream(request, context):
            try:
                for n in range(request):
                    gevent.sleep(0)
                    yield n
            finally:
                closed_on.append(native.get_ident() == hub_thread)
        answers = []
        def caller():
            unary = bridge.unary(handler)
            answers.append(unary("ab", "ctx"))
            try:
                unary("bad", "ctx")
            except ValueError as exc:
                answers.append(str(exc))
            answers.append(list(bridge.stream(stream)(3, None)))
            abandoned = bridge.stream(stream)(3, None)
            next(abandoned)  # the client goes after one message: gRPC stops asking and drops the iterator
            del abandoned
            gone = gevent.event.Event()
            bridge.threadsafe(gone.set)()  # from this OS thread: set in the hub
            answers.append(gone.wait(2))
        import gevent.event
        thread = native.Thread(target=caller)
        thread.start()
        while thread.is_alive():
            gevent.sleep(0.01)
        print(answers[0], answers[1].replace(" ", "_"), answers[2], answers[3], closed_on, seen)
        """
    )
    assert printed[:5] == ["abab", "refused:_ctx", "[0,", "1,", "2]"]
    assert printed[5] == "True"
    # both streams' generators finished on the hub's thread, the abandoned one closed there too
    assert "".join(printed[6:8]) == "[True,True]"
    assert "".join(printed[8:]) == "[(True,True),(True,True)]"  # both calls: the hub's OS thread, not the hub


def test_the_executor_runs_calls_on_os_threads_up_to_its_limit_and_reports_each_done():
    printed = run_patched(
        """
        native = threads.native_threading()
        executor = threads.Executor(max_workers=3, idle_exit_s=0.5)
        gate = native.Event()
        running, done = [], []
        def call(n):
            running.append(native.get_ident())
            gate.wait(5)
        for n in range(5):
            executor.submit(call, n).add_done_callback(lambda submitted: done.append(1))
        deadline = time.monotonic() + 5
        while len(running) < 3 and time.monotonic() < deadline:
            gevent.sleep(0.01)  # three block at the gate on their own OS threads; the loop still runs
        at_limit = len(running)
        gate.set()
        while len(done) < 5 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        late = []
        executor.submit(lambda: None).add_done_callback(lambda submitted: late.append(1))
        while not late and time.monotonic() < deadline:
            gevent.sleep(0.01)
        reused = executor._threads
        while executor._threads and time.monotonic() < deadline + 5:
            gevent.sleep(0.05)  # idle past idle_exit_s: the threads end
        after_idle = executor._threads
        executor.submit(lambda: None).add_done_callback(lambda submitted: late.append(1))
        while len(late) < 2 and time.monotonic() < deadline + 5:
            gevent.sleep(0.01)
        print(at_limit, len(done), len(set(running)), len(late), reused, after_idle, native.active_count())
        """
    )
    # 3 running at once (the limit), all 5 done on 3 distinct OS threads, a later call done on one of them;
    # idle, the threads end (only the main thread is left), and the next call starts one again
    assert printed == ["3", "5", "3", "2", "3", "0", "2"]


def test_install_refuses_a_grpcio_whose_private_module_moved():
    printed = run_patched(
        """
        from grpc import _server
        del _server.threading
        try:
            threads.install()
        except RuntimeError as exc:
            print(str(exc).replace(" ", "_"))
        """
    )
    assert printed[0].startswith("grpcio_1."), printed
    assert "no_longer_has_grpc._server.threading" in printed[0]
