"""`hw_bridge.zmqctx`: the ZeroMQ I/O thread one SCHED_FIFO level above the caller."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hw_bridge.zmqctx import io_thread_priority, new_context

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        print("no-fifo"); sys.exit(0)
    import zmq
    from hw_bridge.zmqctx import new_context
    ctx = new_context()
    sock = ctx.socket(zmq.DEALER)  # the first socket starts the I/O thread
    sock.bind("inproc://x")
    time.sleep(0.05)
    me = os.sched_getparam(0).sched_priority
    others = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        if tid != os.getpid():
            others[tid] = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
    print(me, sorted(p for pol, p in others.values() if pol == os.SCHED_FIFO))
    sock.close(); ctx.term()
    """
)


def test_a_plain_caller_gets_a_plain_context() -> None:
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the test process itself runs under a real-time policy")
    assert io_thread_priority() is None  # nothing to outrank: the context is left as libzmq's
    new_context().term()


def test_under_sched_fifo_the_io_thread_runs_one_level_above_the_caller() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no-fifo":
        pytest.skip("this machine does not allow SCHED_FIFO")
    me, fifo = out.stdout.split(" ", 1)
    assert int(me) == 10  # the caller was put back where it was
    assert "11" in fifo.strip("[]\n").split(", "), out.stdout  # zmq's I/O thread
