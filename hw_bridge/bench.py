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
import select
import sys
import threading
from multiprocessing.queues import Queue
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, cast

import msgpack
import numpy as np
import zmq

from hw_bridge.client import BridgeError, RemotePlant
from hw_bridge.driver import FirstOrderMotor
from hw_bridge.server import PlantServer
from runtime.clock import MonotonicClock
from runtime.protocols import Command
from runtime.rt import GcPolicy

_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
RATE_HZ = 1000.0
WARMUP_S = 0.5


def _quantiles_us(samples_ns: np.ndarray[Any, Any]) -> dict[str, float]:
    if samples_ns.size == 0:
        return {
            "n": 0,
            "p50": float("nan"),
            "p99": float("nan"),
            "p999": float("nan"),
            "max": float("nan"),
        }
    us = samples_ns.astype(np.float64) / 1e3
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return {
        "n": int(us.size),
        "p50": round(float(p50), 1),
        "p99": round(float(p99), 1),
        "p999": round(float(p999), 1),
        "max": round(float(us.max()), 1),
    }


# --- server processes -----------------------------------------------------------------------


def _bare_server(address: str, seconds: float, out: Queue[Any]) -> None:
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


def _bridge_server(address: str, seconds: float, out: Queue[Any]) -> None:
    motor = FirstOrderMotor(mode="realtime", rate_hz=RATE_HZ)
    server = PlantServer(motor, bind=address, mode="realtime", watchdog_ms=1000.0)
    out.put(server.address)
    timer = threading.Timer(seconds + WARMUP_S, server.stop)
    timer.start()
    server.serve_forever()
    timer.cancel()
    rtts = np.asarray(server.core.reaction_ns, dtype=np.int64)
    skip = int(WARMUP_S * RATE_HZ)
    out.put(rtts[skip:].tobytes())
    out.put(json.dumps(server.counters))
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
    gc_policy = GcPolicy("frozen")  # as `rtdiff run` does in realtime: collect in slack only
    gc_policy.start()
    try:
        while clock.now_ns() < end:
            obs = plant.next_observation(0.2)
            if obs.stale:
                continue
            rx = plant.last_state_rx_ns
            if rx - t0 > WARMUP_S * 1e9:
                arrivals.append(rx)
                ages.append(rx - obs.t_ns)
            plant.apply(Command(seq=k, t_ns=rx, action=action, deadline_ns=rx + period))
            k += 1
            gc_policy.collect_in_slack(rx + period - clock.now_ns())
    finally:
        gc_policy.stop()
        superseded = plant.counts["superseded"]
        plant.close()
    return {
        "ages": np.asarray(ages, dtype=np.int64),
        "gaps": np.diff(np.asarray(arrivals, dtype=np.int64)),
        "superseded": superseded,
        "period_ns": period,
    }


def _run(kind: str, address: str, seconds: float) -> dict[str, Any]:
    """One server process + this process as client; raw samples back."""
    ctx = mp.get_context("spawn")
    q: Queue[Any] = ctx.Queue()
    target = _bare_server if kind == "bare" else _bridge_server
    proc = ctx.Process(target=target, args=(address, seconds, q), daemon=True)
    proc.start()
    try:
        bound = q.get(timeout=60)
        result: dict[str, Any] = {}
        if kind == "bare":
            _bare_client(bound)
        else:
            result["stream"] = _bridge_client(bound, seconds)
        result["rtts"] = np.frombuffer(q.get(timeout=60), dtype=np.int64)
        if kind == "bridge":
            result["server"] = json.loads(q.get(timeout=60))
        proc.join(10)
        return result
    finally:
        if proc.is_alive():
            proc.kill()


def run_bench(seconds: float, *, rounds: int = 3) -> dict[str, Any]:
    """Per transport, `rounds` alternations of bare then bridge, `seconds / rounds` each (at
    least 1 s), samples pooled: both links then see the same background load on average."""
    each_s = max(1.0, seconds / rounds)
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
    }
    with TemporaryDirectory() as tmp:
        for transport, address in (
            ("tcp", "tcp://127.0.0.1:*"),
            ("ipc", f"ipc://{Path(tmp) / 'bench.sock'}"),
        ):
            bare_rtts, bridge_rtts, ages, gaps = [], [], [], []
            superseded = 0
            server = {"applied": 0, "late": 0, "overruns": 0, "send_dropped": 0}
            period_ns = round(1e9 / RATE_HZ)
            for _ in range(rounds):
                bare_rtts.append(_run("bare", address, each_s)["rtts"])
                b = _run("bridge", address, each_s)
                bridge_rtts.append(b["rtts"])
                ages.append(b["stream"]["ages"])
                gaps.append(b["stream"]["gaps"])
                superseded += b["stream"]["superseded"]
                for k in server:
                    server[k] += int(b["server"][k])
            bare_q = _quantiles_us(np.concatenate(bare_rtts))
            bridge_q = _quantiles_us(np.concatenate(bridge_rtts))
            all_gaps = np.concatenate(gaps)
            out[transport] = {
                "bare": {"round_trip_us": bare_q},
                "bridge": {
                    "round_trip_us": bridge_q,
                    "stream": {
                        "delivery_us": _quantiles_us(np.concatenate(ages)),
                        "gap_us": _quantiles_us(all_gaps),
                        "gaps_over_1.5_periods": int(np.sum(all_gaps > (3 * period_ns) // 2)),
                        "superseded": superseded,
                        "period_us": period_ns / 1e3,
                    },
                    "server": server,
                },
                "bridge_over_bare": {q: round(bridge_q[q] / bare_q[q], 2) for q in ("p50", "p99")},
            }
    return out


def cli_bench_bridge(args: argparse.Namespace) -> int:
    """`rtdiff bench bridge [--seconds S] [--json]`."""
    from runtime.cli import CliError

    rt = getattr(args, "rt_priority", None)
    if rt:  # before the server processes start: they inherit the policy
        from runtime.rt import try_realtime

        for line in try_realtime(rt):
            sys.stderr.write(f"bench bridge: {line}\n")
    try:
        res = run_bench(float(args.seconds))
        res["rt_priority"] = rt
    except (BridgeError, OSError, zmq.ZMQError) as exc:
        raise CliError(f"bridge benchmark failed: {exc}") from exc
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
    return 0
