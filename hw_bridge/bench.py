"""`rtdiff bench bridge`: the bridge's state-to-command round trip beside a bare ping-pong.

What is measured, per transport (loopback TCP, IPC), in one run:

- **bare**: a paced 1 kHz ping-pong written directly on pyzmq + msgpack (ROUTER bound in a
  server process, DEALER in this one; a ping carries a seq, a timestamp and a 16-byte state,
  the pong a seq and an 8-byte action). Round trip = ping packed -> pong received, on the
  server's clock. The floor that any msgpack-over-zmq link pays on this machine.
- **bridge**: a `PlantServer` (realtime, a `FirstOrderMotor` at 1 kHz) in a server process and
  a `RemotePlant` here that answers every new state with a command. Round trip = state
  published -> command naming that state (`obs_seq`) received (`ServerCore.reaction_ns`), so it
  includes both codecs, validation, the client's `observe`/`apply` paths and the transport.
- **stream** (from the bridge run, at the client): delivery latency of each state (arrival -
  measurement time, mapped through the clock offset) and the gaps between arrivals; a gap over
  1.5 periods means the client held a value older than one period.
- **platform baseline** (`stream.baseline`, during each bridge run): a third process, under the
  same scheduling policy (and CPU pin, if any, as the client), that only sleeps to each 1 ms
  deadline with `select()` (the call the client waits in) and records how late it woke. A
  wake-up more than 0.5 period late is a *stall*: the platform held a process that did nothing
  but wait off the CPU for as long as a stream gap over 1.5 periods. Same window as the stream.
  (The timer loop, steal and context-switch readings and the attribution: `hw_bridge.platform`.)

New `stream` keys, for attributing the gaps (all over the measured windows, runs pooled):
`gaps` (each gap over 1.5 periods: `run`, `t_ms` since its run's window opened, `gap_us`,
`baseline_stall` (a stall's late interval overlaps the gap), `steal` (the steal counter rose
between the baseline's samples bracketing the gap)); `gaps_with_baseline_stall`,
`gaps_with_steal`;
`baseline` (`wakeups`, `late_over_0.5_period`, `lateness_us` quantiles, `stalls`: the first 100
as `run`, `t_ms`, `late_us`); `steal` (`/proc/stat` "cpu" line, 8th field, read by the client
at the window's ends: `jiffies`, `ms`; resolution one jiffy, 1/CLK_TCK s, 10 ms here; null
where unreadable) and `steal_samples_with_increase` (the baseline samples it every 10 ms);
`nivcsw` (involuntary context switches over the windows: `client_thread` (the loop's thread),
`client_process`, `server_process`). The window opens with the first state after the warm-up
and closes at the last state received (steal and the client's context switches are read when
its loop ends, at most 0.2 s later; the server's cover its whole serve loop).

Mitigations (`run_bench(mlock=, pin=)`; top-level `mitigations` says what each got):
`mlock` calls libc `mlockall(MCL_CURRENT|MCL_FUTURE)` in every process (a failure is reported,
not fatal; costs resident memory); `pin` puts the server process on one CPU and the client and
its baseline on another (costs: neither can move to an idle core). The bridge client always
freezes its heap and collects in slack (`runtime.rt.GcPolicy("frozen")`, like the server).

Both ends run in separate processes (separate GILs), as a controller and a plant would. Bare
and bridge runs alternate (`rounds`, default 3) and their samples are pooled, so on a shared
machine both see the same background load on average. The first 0.5 s of each run is discarded
(warm-up). Quantiles are p50/p99/p99.9/max in microseconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import select
import sys
import threading
from collections.abc import Sequence
from multiprocessing.queues import Queue
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, cast

import msgpack
import numpy as np
import zmq

from hw_bridge.client import BridgeError, RemotePlant
from hw_bridge.driver import FirstOrderMotor
from hw_bridge.platform import (
    attribute_runs,
    munlockall,
    nivcsw,
    pin_plan,
    quantiles_us,
    read_steal_jiffies,
    select_sleep,
    setup_process,
    stream_window,
    timer_loop,
    try_mlockall,
)
from hw_bridge.server import PlantServer
from runtime.clock import MonotonicClock
from runtime.protocols import Command
from runtime.rt import GcPolicy

_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
RATE_HZ = 1000.0
WARMUP_S = 0.5


def _baseline_proc(mlock: bool, cpus: set[int] | None, stop: Any, out: Queue[Any]) -> None:
    setup_process(mlock, cpus)
    clock = MonotonicClock(spin_ns=0)
    out.put("ready")
    res = timer_loop(clock.now_ns, select_sleep, round(1e9 / RATE_HZ), stop.is_set)
    out.put({k: np.asarray(v, dtype=np.int64).tobytes() for k, v in res.items()})


# --- server processes -----------------------------------------------------------------------


def _bare_server(
    address: str, seconds: float, out: Queue[Any], mlock: bool, cpus: set[int] | None
) -> None:
    setup_process(mlock, cpus)
    clock = MonotonicClock(spin_ns=0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    out.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    fd = int(sock.getsockopt(zmq.FD))
    ident, _ = sock.recv_multipart()  # the client's hello
    period = round(1e9 / RATE_HZ)
    state = np.zeros(2).tobytes()
    sent: dict[int, int] = {}
    rtts: list[int] = []
    seq = 0
    start = clock.now_ns()
    end = start + round(seconds * 1e9)
    next_ns = start + period
    while True:
        now = clock.now_ns()
        if now >= end:
            break
        if now >= next_ns:
            seq += 1
            t = clock.now_ns()
            sent[seq] = t
            sock.send_multipart([ident, msgpack.packb({"seq": seq, "t_ns": t, "state": state})])
            next_ns += period
            if now - next_ns > period:
                next_ns = now + period
            continue
        if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            select.select([fd], [], [], (next_ns - now) * 1e-9)
        while True:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                break
            t_rx = clock.now_ns()
            reply = msgpack.unpackb(frames[1])
            t_tx = sent.pop(reply["seq"], None)
            if t_tx is not None and t_tx - start > WARMUP_S * 1e9:
                rtts.append(t_rx - t_tx)
    sock.send_multipart([ident, msgpack.packb({"seq": -1})])
    out.put(np.asarray(rtts, dtype=np.int64).tobytes())
    sock.close()
    ctx.term()


def _bridge_server(
    address: str, seconds: float, out: Queue[Any], mlock: bool, cpus: set[int] | None
) -> None:
    setup_process(mlock, cpus)
    motor = FirstOrderMotor(mode="realtime", rate_hz=RATE_HZ)
    server = PlantServer(motor, bind=address, mode="realtime", watchdog_ms=1000.0)
    out.put(server.address)
    timer = threading.Timer(seconds + WARMUP_S, server.stop)
    timer.start()
    csw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    server.serve_forever()
    csw1 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    timer.cancel()
    rtts = server.core.reaction_ns.values()
    skip = int(WARMUP_S * RATE_HZ)
    out.put(rtts[skip:].tobytes())
    out.put(json.dumps({**server.counters, "nivcsw": csw1 - csw0}))
    server.close()


# --- clients ---------------------------------------------------------------------------------


def _bare_client(address: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(b"hello")
    action = np.zeros(1).tobytes()
    while True:
        if not sock.poll(5000):
            break
        ping = msgpack.unpackb(sock.recv())
        if ping["seq"] < 0:
            break
        sock.send(msgpack.packb({"seq": ping["seq"], "action": action}))
    sock.close()
    ctx.term()


def _bridge_client(address: str, seconds: float) -> dict[str, Any]:
    """Answer every new state with a command; raw stream samples (ns) for pooling."""
    plant = RemotePlant(address, timeout_s=2.0, connect_timeout_s=20.0)
    period = plant.spec().period_ns
    action = np.array([0.0])
    arrivals: list[int] = []
    ages: list[int] = []
    clock = plant.clock
    t0 = clock.now_ns()
    end = t0 + round((seconds + WARMUP_S) * 1e9)
    k = 0
    win0 = t0 + round(WARMUP_S * 1e9)
    steal0 = csw0 = None
    gc_policy = GcPolicy("frozen")  # as `rtdiff run` does in realtime: collect in slack only
    gc_policy.start()
    try:
        while clock.now_ns() < end:
            obs = plant.next_observation(0.2)
            if obs.stale:
                continue
            rx = plant.last_state_rx_ns
            if rx > win0:
                if csw0 is None:  # the window opens (read here, not on the hot path)
                    steal0, csw0 = read_steal_jiffies(), nivcsw()
                arrivals.append(rx)
                ages.append(rx - obs.t_ns)
            plant.apply(Command(seq=k, t_ns=rx, action=action, deadline_ns=rx + period))
            k += 1
            gc_policy.collect_in_slack(rx + period - clock.now_ns())
    finally:
        t1 = clock.now_ns()
        steal1, csw1 = read_steal_jiffies(), nivcsw()
        gc_policy.stop()
        superseded = plant.counts["superseded"]
        plant.close()
    return {
        "ages": np.asarray(ages, dtype=np.int64),
        "arrivals": np.asarray(arrivals, dtype=np.int64),
        "window": stream_window(win0, arrivals, t1),
        "steal": None if steal0 is None or steal1 is None else steal1 - steal0,
        "nivcsw": (0, 0) if csw0 is None else (csw1[0] - csw0[0], csw1[1] - csw0[1]),
        "superseded": superseded,
        "period_ns": period,
    }


def _run(
    kind: str,
    address: str,
    seconds: float,
    *,
    mlock: bool = False,
    pin: tuple[set[int], set[int]] | None = None,
    baseline: bool = True,
) -> dict[str, Any]:
    """One server process + this process as client (+ for the bridge, the baseline process,
    running before the server starts until the client is done); raw samples back."""
    ctx = mp.get_context("spawn")
    q: Queue[Any] = ctx.Queue()
    procs = []
    base_q: Queue[Any] | None = None
    stop = ctx.Event()
    if kind == "bridge" and baseline:
        base_q = ctx.Queue()
        cpus = pin[1] if pin else None
        procs.append(
            ctx.Process(target=_baseline_proc, args=(mlock, cpus, stop, base_q), daemon=True)
        )
        procs[-1].start()
        base_q.get(timeout=60)
    target = _bare_server if kind == "bare" else _bridge_server
    server_cpus = pin[0] if pin else None
    procs.append(
        ctx.Process(target=target, args=(address, seconds, q, mlock, server_cpus), daemon=True)
    )
    procs[-1].start()
    try:
        bound = q.get(timeout=60)
        result: dict[str, Any] = {}
        if kind == "bare":
            _bare_client(bound)
        else:
            result["stream"] = _bridge_client(bound, seconds)
        stop.set()
        result["rtts"] = np.frombuffer(q.get(timeout=60), dtype=np.int64)
        if kind == "bridge":
            result["server"] = json.loads(q.get(timeout=60))
        if base_q is not None:
            raw = base_q.get(timeout=60)
            result["baseline"] = {k: np.frombuffer(v, dtype=np.int64) for k, v in raw.items()}
        for proc in procs:
            proc.join(10)
        return result
    finally:
        stop.set()
        for proc in procs:
            if proc.is_alive():
                proc.kill()


def run_bench(
    seconds: float,
    *,
    rounds: int = 3,
    transports: Sequence[str] = ("tcp", "ipc"),
    bare: bool = True,
    baseline: bool = True,
    mlock: bool = False,
    pin: bool = False,
) -> dict[str, Any]:
    """Per transport, `rounds` alternations of bare then bridge, `seconds / rounds` each (at
    least 1 s), samples pooled: both links then see the same background load on average.
    `bare=False` runs the bridge (and its stream and baseline) alone; `mlock`, `pin`: the
    mitigations in the module docstring."""
    each_s = max(1.0, seconds / rounds)
    plan = pin_plan() if pin else None
    old_cpus = os.sched_getaffinity(0) if plan else None
    pinned: Any = None
    if pin:
        pinned = {"server": sorted(plan[0]), "client": sorted(plan[1])} if plan else "< 2 CPUs"
    mitigations = {
        "client_gc": "frozen",
        "mlockall": try_mlockall() if mlock else None,
        "pin": pinned,
    }
    if plan:
        os.sched_setaffinity(0, plan[1])
    try:
        return _run_bench(
            seconds, each_s, rounds, transports, bare, baseline, mlock, plan, mitigations
        )
    finally:
        if old_cpus:
            os.sched_setaffinity(0, old_cpus)
        if mitigations["mlockall"] == "locked":
            munlockall()


def _run_bench(
    seconds: float,
    each_s: float,
    rounds: int,
    transports: Sequence[str],
    bare: bool,
    baseline: bool,
    mlock: bool,
    plan: tuple[set[int], set[int]] | None,
    mitigations: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rate_hz": RATE_HZ,
        "seconds": seconds,
        "rounds": rounds,
        "seconds_per_run": each_s,
        "warmup_s": WARMUP_S,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)),
        },
        "mitigations": mitigations,
    }
    with TemporaryDirectory() as tmp:
        addresses = {"tcp": "tcp://127.0.0.1:*", "ipc": f"ipc://{Path(tmp) / 'bench.sock'}"}
        for transport in transports:
            address = addresses[transport]
            bare_rtts, bridge_rtts, ages, gaps = [], [], [], []
            superseded = 0
            server = {"applied": 0, "late": 0, "overruns": 0, "send_dropped": 0, "nivcsw": 0}
            period_ns = round(1e9 / RATE_HZ)
            runs = []
            for _ in range(rounds):
                if bare:
                    bare_rtts.append(_run("bare", address, each_s, mlock=mlock, pin=plan)["rtts"])
                b = _run("bridge", address, each_s, mlock=mlock, pin=plan, baseline=baseline)
                bridge_rtts.append(b["rtts"])
                ages.append(b["stream"]["ages"])
                gaps.append(np.diff(b["stream"]["arrivals"]))
                superseded += b["stream"]["superseded"]
                for k in server:
                    server[k] += int(b["server"][k])
                runs.append(b)
            bridge_q = quantiles_us(np.concatenate(bridge_rtts))
            all_gaps = np.concatenate(gaps)
            stream = {
                "delivery_us": quantiles_us(np.concatenate(ages)),
                "gap_us": quantiles_us(all_gaps),
                "gaps_over_1.5_periods": int(np.sum(all_gaps > (3 * period_ns) // 2)),
                "superseded": superseded,
                "period_us": period_ns / 1e3,
                **attribute_runs(runs, period_ns),
            }
            out[transport] = {
                "bridge": {"round_trip_us": bridge_q, "stream": stream, "server": server}
            }
            if bare:
                bare_q = quantiles_us(np.concatenate(bare_rtts))
                out[transport]["bare"] = {"round_trip_us": bare_q}
                out[transport]["bridge_over_bare"] = {
                    q: round(bridge_q[q] / bare_q[q], 2) for q in ("p50", "p99")
                }
    return out


class BenchError(RuntimeError):
    """The bridge benchmark failed (a server process, the link or a socket); the message is one
    line for the user."""


def bench_bridge_from_args(args: argparse.Namespace) -> int:
    """`rtdiff bench bridge [--seconds S] [--json] [--rt-priority P]`; `args.mlock` and
    `args.pin` (the mitigations, off unless the parser provides them). Raises `BenchError`
    (one line) when the benchmark fails.
    """
    rt = getattr(args, "rt_priority", None)
    if rt:  # before the server processes start: they inherit the policy
        from runtime.rt import try_realtime

        for line in try_realtime(rt):
            sys.stderr.write(f"bench bridge: {line}\n")
    try:
        res = run_bench(
            float(args.seconds),
            mlock=bool(getattr(args, "mlock", False)),
            pin=bool(getattr(args, "pin", False)),
        )
        res["rt_priority"] = rt
    except (BridgeError, OSError, zmq.ZMQError) as exc:
        raise BenchError(f"bridge benchmark failed: {exc}") from exc
    if args.json:
        print(json.dumps(res))
        return 0
    w = sys.stdout.write
    w(f"bridge round trip at {RATE_HZ:g} Hz, {args.seconds:g} s per run (us)\n")
    for transport in ("tcp", "ipc"):
        r = res[transport]
        for kind in ("bare", "bridge"):
            q = r[kind]["round_trip_us"]
            w(
                f"  {transport:4s} {kind:7s} p50 {q['p50']:8.1f}  p99 {q['p99']:8.1f}  "
                f"p99.9 {q['p999']:8.1f}  max {q['max']:8.1f}  (n={q['n']})\n"
            )
        s = r["bridge"]["stream"]
        w(
            f"  {transport:4s} ratio   p50 {r['bridge_over_bare']['p50']:.2f}x  "
            f"p99 {r['bridge_over_bare']['p99']:.2f}x;  stream: delivery p99 "
            f"{s['delivery_us']['p99']:.1f} us, gap max {s['gap_us']['max']:.1f} us, "
            f"{s['gaps_over_1.5_periods']} gaps > 1.5 periods\n"
        )
        if "baseline" in s:
            b = s["baseline"]
            w(
                f"  {transport:4s} baseline timer loop: {b['late_over_0.5_period']} of "
                f"{b['wakeups']} wake-ups > 0.5 period late (max {b['lateness_us']['max']:.1f} "
                f"us); gaps with a baseline stall {s['gaps_with_baseline_stall']}, with steal "
                f"{s['gaps_with_steal']}; steal {s['steal']['jiffies']} jiffies\n"
            )
    return 0
