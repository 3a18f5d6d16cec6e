"""ZeroMQ contexts whose I/O thread outranks the thread that sends.

Every message leaves and arrives through the context's I/O thread. Created after
`runtime.rt.try_realtime`, that thread inherits the caller's SCHED_FIFO priority, and under
SCHED_FIFO equal priorities do not preempt each other: a command handed to ZeroMQ waits until
the control thread blocks (or another core is free) before it is written to the socket, and a
frame that arrives waits the same way before the serving thread hears of it: on a 2-core
machine the send-to-plant time of a controller that computes for most of each tick (the 100 Hz
rolling planner) is markedly longer than that of one that computes for 0.1 ms (the MLP). One
level above the caller, the bridge's round trip moves towards the bare ping-pong's; the effect
is small against the run-to-run spread of a shared VM (docs/benchmarks.md, "ZeroMQ's I/O
thread one SCHED_FIFO level above the caller").

`new_context()` asks libzmq (`ZMQ_THREAD_SCHED_POLICY`, `ZMQ_THREAD_PRIORITY`) to start the I/O
thread one SCHED_FIFO level above the calling thread, so a message moves as soon as it is
there. Only when the caller runs under SCHED_FIFO/RR and the OS would allow the higher level:
libzmq aborts the process if it cannot apply the policy, so the level is tried on the calling
thread first (and put back), and anything short of success leaves the context as it was.
"""

from __future__ import annotations

import os
from typing import Any

import zmq


def io_thread_priority() -> int | None:
    """The SCHED_FIFO priority the I/O thread should get, or None to leave it alone."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    try:
        policy = os.sched_getscheduler(0)
        if policy not in (os.SCHED_FIFO, os.SCHED_RR):
            return None
        prio = os.sched_getparam(0).sched_priority
        if prio >= os.sched_get_priority_max(os.SCHED_FIFO):
            return None
        # can this process raise a thread to prio + 1? Try on ourselves, then put it back.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio + 1))
        os.sched_setscheduler(0, policy, os.sched_param(prio))
    except OSError:
        return None
    return prio + 1


def new_context() -> zmq.Context[Any]:
    """A `zmq.Context` whose I/O thread (started with the first socket) runs one SCHED_FIFO
    level above the calling thread when it runs under SCHED_FIFO and may; otherwise plain."""
    ctx: zmq.Context[Any] = zmq.Context()
    prio = io_thread_priority()
    if prio is not None:
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
        ctx.set(zmq.THREAD_PRIORITY, prio)
    return ctx
