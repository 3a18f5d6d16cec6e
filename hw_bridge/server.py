"""`PlantServer`: serves any `runtime.Plant` over protocol v1 (docs/protocol.md).

One ROUTER socket, bound by the plant side; clients connect DEALER sockets. A single socket
keeps one address per plant (`--bind tcp://HOST:PORT`), lets the server know who sent what
(the ROUTER identity), and carries the handshake, the state stream, commands and heartbeats
alike. Latest value wins: the server sends state without blocking (a slow reader's queue fills
and ZeroMQ drops frames for it; the plant is never delayed) and clients drain to the newest.

The protocol logic is `hw_bridge.core.ServerCore` (no sockets, time injected). `PlantServer`
wraps it in a single-threaded event loop: in `realtime` mode it ticks at the plant's rate
(watchdog check, observe, publish; just after the plant's own tick when the plant paces itself
and says when, as `MujocoPlant.next_tick_ns` does) and hands each valid command to the plant
the moment it arrives; in `lockstep` mode each valid command steps the plant once and the new
state goes out at once (the plant's time stands still between commands, so the watchdog has
nothing to guard there and stays off).
"""

from __future__ import annotations

import select
import threading
from pathlib import Path
from typing import Any, Literal, cast

import zmq

from hw_bridge.core import (
    COUNTER_NAMES,
    HasSafeAction,
    SafetyEvent,
    ServerConfig,
    ServerCore,
)
from hw_bridge.zmqctx import new_context
from runtime.clock import MonotonicClock
from runtime.protocols import Clock, Plant
from runtime.rt import GcPolicy

__all__ = [
    "COUNTER_NAMES",
    "HasSafeAction",
    "PlantServer",
    "SafetyEvent",
    "ServerConfig",
    "ServerCore",
]

# plain ints: pyzmq's enum members cost microseconds per operation on the control path
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_RCVMORE, _SNDMORE = int(zmq.RCVMORE), int(zmq.SNDMORE)
_ALIGN_NS = 150_000  # tick this long after a self-paced plant's own tick
_RECHECK_NS = 100_000  # then look again this often until its new state is there
# Frames handled before the loop looks at its clock again: ~64 frames are 0.1-0.5 ms of work,
# so a flood delays a tick by at most that much, while a burst of legitimate frames still
# goes through in one call.
DRAIN_BATCH = 64


class PlantServer:
    """Serve `plant` on `bind` until `stop()`.

    Example:
        server = PlantServer(FirstOrderMotor(), bind="tcp://127.0.0.1:*", mode="realtime")
        print(server.address)        # the bound endpoint, port resolved
        threading.Thread(target=server.serve_forever).start(); ...; server.stop()

    `keys_dir` turns CurveZMQ on (see `hw_bridge.keys`): the server uses the key pair in it and
    admits only clients whose public key is in `keys_dir/authorized_clients/`.
    """

    def __init__(
        self,
        plant: Plant,
        *,
        bind: str,
        mode: Literal["lockstep", "realtime"] = "lockstep",
        watchdog_ms: float = 100.0,
        lease_ms: float = 1000.0,
        keys_dir: str | Path | None = None,
        seed: int | None = None,
        clock: Clock | None = None,
        config: ServerConfig | None = None,
        gc_mode: Literal["default", "frozen"] = "frozen",
    ) -> None:
        self.config = config or ServerConfig(
            mode=mode, watchdog_ms=watchdog_ms, lease_ms=lease_ms, seed=seed
        )
        self.clock: Clock = clock if clock is not None else MonotonicClock(spin_ns=0)
        self.core = ServerCore(plant, self.config, clock=self.clock)
        self._stop = threading.Event()
        self._ctx = new_context()
        self._auth: Any = None
        self.sock = self._ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 64)
        self.sock.setsockopt(zmq.RCVHWM, 1024)
        # a frame for a peer whose queue is full (or who left) raises instead of vanishing,
        # so `send_dropped` counts it
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A frame far over the protocol limit is refused by libzmq itself (the peer is
        # disconnected); frames up to this size reach `decode`, which rejects and counts them.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 16 * self.config.max_msg_bytes)
        if keys_dir is not None:
            from hw_bridge.keys import server_auth

            self._auth = server_auth(self._ctx, self.sock, Path(keys_dir))
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot bind {bind}: {exc}") from exc
        self.address: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._fd = int(self.sock.getsockopt(zmq.FD))
        self.serving = threading.Event()
        self._paced = False
        # A full collection over a heap holding numpy, zmq (and MuJoCo when served) stalls the
        # serving thread for milliseconds, a gap in the state stream: freeze the start-up heap
        # and collect only in the slack before the next tick (`runtime.rt.GcPolicy`).
        self.gc = GcPolicy(gc_mode)

    @property
    def counters(self) -> dict[str, int]:
        return self.core.all_counters()

    @property
    def events(self) -> list[SafetyEvent]:
        return self.core.events

    def _drain(self) -> None:
        """Handle queued frames, at most `DRAIN_BATCH` per call (under a flood the loop
        returns to its clock between batches, so ticks keep their time). Called when one is
        most likely there (EVENTS said so or the fd fired): reads at once, and after each
        message asks EVENTS whether more wait (cheaper than ending on an Again).
        recv/getsockopt with plain-int flags, not recv_multipart (whose RCVMORE enum costs
        microseconds per frame)."""
        sock, core = self.sock, self.core
        for _ in range(DRAIN_BATCH):
            try:
                ident = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            # the rest of a multipart message is there once its first frame is
            payload = sock.recv(_NOBLOCK) if sock.getsockopt(_RCVMORE) else None
            if payload is None or sock.getsockopt(_RCVMORE):
                # a DEALER sends exactly one frame; an empty or extra-framed one is malformed
                while sock.getsockopt(_RCVMORE):
                    sock.recv(_NOBLOCK)
                core.refuse_multipart(ident)
                self._flush()
            else:
                core.handle(ident, payload)
                if core.outbox:
                    self._flush()
            if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                return

    def _flush(self) -> None:
        sock, more = self.sock, _NOBLOCK | _SNDMORE
        for ident, payload in self.core.outbox:
            try:  # two plain sends: send_multipart's per-call type checks and enum flags cost
                sock.send(ident, more)
                sock.send(payload, _NOBLOCK)
            except zmq.Again:
                self.core.counters["send_dropped"] += 1
            except zmq.ZMQError:  # host unreachable etc.: the frame is lost, the loop goes on
                self.core.counters["send_dropped"] += 1
        self.core.outbox.clear()

    def _wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a frame; False when none came (nothing to drain).

        zmq's poll timeout is whole milliseconds, too coarse for a 1 kHz tick; select() on the
        socket's (edge-triggered) fd takes seconds as a float, after a check of EVENTS (which
        also re-arms the fd: a frame arriving after it wakes the select)."""
        if cast(int, self.sock.getsockopt(_EVENTS)) & _POLLIN:
            return True
        return bool(select.select([self._fd], [], [], max(timeout_s, 0.0))[0])

    def serve_forever(self) -> None:
        core, clock = self.core, self.clock
        core.start()
        # whether the plant paces itself (says when it steps next), asked once rather than by a
        # failing attribute lookup every tick
        self._paced = hasattr(core.plant, "next_tick_ns")
        self.gc.start()
        self.serving.set()
        period = core.spec.period_ns
        next_tick = clock.now_ns() + period
        realtime = self.config.mode == "realtime"
        last_house = clock.now_ns()
        try:
            while not self._stop.is_set():
                now = clock.now_ns()
                if realtime:
                    if now >= next_tick:
                        published = core.tick()
                        self._flush()
                        next_tick = self._next_tick(now, next_tick, published)
                        continue
                    wake = next_tick
                    due = core.watchdog.due_ns
                    if due is not None and due < wake:  # a silent controller: trip on time
                        if now >= due:
                            core.check_watchdog(now)
                            self._flush()
                            continue
                        wake = due
                    slack = wake - now
                    if self.gc.collect_in_slack(slack):
                        continue  # the collection took time: look at the clock again
                    if self._wait(slack * 1e-9):
                        self._drain()
                else:
                    if now - last_house > 50_000_000:
                        core.housekeeping(now)
                        last_house = now
                        self.gc.collect_in_slack(self.gc.slack_min_ns)
                    if self._wait(0.05):
                        self._drain()
        finally:
            self.gc.stop()
            self._goodbye()
            self.serving.clear()

    def _next_tick(self, now: int, prev: int, published: bool) -> int:
        period = self.core.spec.period_ns
        # A plant that paces itself (MujocoPlant in realtime) says when it steps next: tick just
        # after it, so a new state goes out within ~`_ALIGN_NS` of being computed; if it was not
        # there yet, look again shortly (for at most two periods, then wait for the next one).
        aligned = getattr(self.core.plant, "next_tick_ns", None) if self._paced else None
        if isinstance(aligned, int):
            if not published and now - self.core.last_publish_ns < 2 * period:
                return now + _RECHECK_NS
            if aligned + _ALIGN_NS > now:
                return aligned + _ALIGN_NS
            return now + period
        nxt = prev + period
        if now - nxt > period:
            self.core.counters["overruns"] += 1
            nxt = now + period
        return nxt

    def _goodbye(self) -> None:
        for ident in list(self.core.peers):
            self.core._send(ident, "goodbye", reason="server stopping")
        self._flush()

    def stop(self) -> None:
        """Ask `serve_forever` to return (from any thread); it does within one period or 50 ms."""
        self._stop.set()

    def close(self) -> None:
        """Close the socket and the context; call after `serve_forever` returned."""
        self.sock.close(linger=100)  # let the goodbyes go out
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def __enter__(self) -> PlantServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
