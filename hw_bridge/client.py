"""`RemotePlant`: a `runtime.Plant` on the far side of protocol v1 (docs/protocol.md).

Single-threaded by design: the control loop owns the socket and every call does a bounded
amount of work, so a tick never waits on a background thread or a lock. Each call first drains
the socket (newest state wins; older ones are counted and dropped), sends a heartbeat when one
is due, and watches the link:

- no message from the server for `timeout_s` -> the link is declared lost (logged), a fresh
  socket is opened and `hello` is re-sent every 250 ms without blocking the caller; until a
  `welcome` arrives, `observe` returns the last state flagged `stale` and `apply` drops (and
  counts) commands. A welcome with a new session id means the server restarted; both cases are
  logged on the `hw_bridge` logger (which reaches stderr even when logging is not configured).
- an `unknown_peer` error (the server restarted and libzmq reconnected underneath us) or a
  server `goodbye` triggers the same re-handshake at once.
- a `stream_tripped` error (the plant's watchdog stopped us) makes the next command start a
  fresh stream, as the plant requires, and says so in the log.

Clock offset: the NTP four-timestamp estimate from the hello/welcome exchange and from every
heartbeat; the sample with the smallest round trip among the last 256 (about 25 s) wins.
Timestamps on the wire are each sender's own monotonic clock; `RemotePlant` maps state times
to its clock and command deadlines to the server's.

Lockstep (the server says so in `welcome.mode`): `apply` waits for the state that acknowledges
the command (the plant stepped), as the `Plant` protocol asks. Realtime: `apply` only sends;
`observe` never blocks; `next_observation` waits for a newer state.

The code, in three layers (one object, one thread): `hw_bridge/link.py` (`_Link`: socket,
handshake, heartbeats, loss and reconnection, the session's messages), `hw_bridge/receive.py`
(`_Receiver`: frame decoding and the newest-state-wins rule, stale copies) and this module
(`RemotePlant`: the `runtime.Plant` calls: `reset`, `observe`, `next_observation`, `apply`,
`counters`, `close`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from hw_bridge.codec import message
from hw_bridge.link import _NOBLOCK, CLIENT_COUNTERS, BridgeError
from hw_bridge.receive import _Receiver
from runtime.planfeed import APPLY_KEYS
from runtime.protocols import Clock, Command, Observation

__all__ = ["CLIENT_COUNTERS", "BridgeError", "RemotePlant"]

_F8 = np.dtype("<f8")


class RemotePlant(_Receiver):
    """Implements `runtime.Plant` over the bridge.

    Example:
        plant = RemotePlant("tcp://127.0.0.1:5555")       # handshakes or raises BridgeError
        obs = plant.reset(seed=0)
        plant.apply(Command(seq=0, t_ns=..., action=np.zeros(plant.spec().action_dim),
                            deadline_ns=...))
        plant.counters()["late"]                           # misses the plant itself saw

    `clock`: the controller's clock, for timestamps, deadlines and timeouts; it must advance on
    its own (a `MonotonicClock`, the default), since waits also happen on the socket.

    `keys_dir`: a directory made by `rtdiff keys` (uses `CLIENT_KEY.key_secret`, default
    `client.key_secret`, and `server.key`); when None, `$RTDIFF_KEYS` is used if set, else the
    link is plain TCP/IPC.

    Control is kept across pauses: if the plant took control away because this client was
    silent past its lease (`not_controller`), the client asks for it again at once (granted
    unless another controller holds the plant); a lockstep `apply`/`reset` refused that way is
    re-sent once after the new handshake.
    """

    def __init__(
        self,
        address: str,
        *,
        clock: Clock | None = None,
        timeout_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        keys_dir: str | Path | None = None,
        role: str = "control",
        takeover: bool = False,
        expect: dict[str, Any] | None = None,
        name: str = "rtdiff",
        auto_resume: bool = True,
        client_key: str = "client",
    ) -> None:
        super().__init__(
            address,
            clock=clock,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            keys_dir=keys_dir,
            role=role,
            takeover=takeover,
            expect=expect,
            name=name,
            auto_resume=auto_resume,
            client_key=client_key,
        )
        self._connect()

    # -- the Plant protocol ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def executes_plans(self) -> bool:
        """`runtime.ExecutesPlans`: a realtime v2 session carries each command's plan to the
        plant side, which applies it on ticks the controller's command misses."""
        return self.mode == "realtime" and self.version >= 2

    def apply_counters(self) -> dict[str, int]:
        """What the plant side applied, by source, and the action-age histogram
        (`runtime.planfeed`), from the server's latest counters."""
        sc = self.server_counters
        return {k: sc.get(f"plant_{k}", 0) + sc.get(k, 0) for k in APPLY_KEYS}

    @property
    def safe(self) -> bool:
        """The plant reports its safe action latched (watchdog or goodbye)."""
        return self._safe

    def reset(self, seed: int | None = None) -> Observation:
        if self.role != "control":
            raise BridgeError("an observer cannot reset the plant")
        for attempt in range(2):  # once more if the server had forgotten our session
            if not self._connected:
                self._wait_connected(self.timeout_ns)
            seq = self._next_seq()
            self._send(message("reset", seq, self.clock.now_ns(), v=self.version, seed=seed))
            if not self._wait_for(
                lambda seq=seq: self._reset_seq >= seq or seq in self._error_refs,
                self.timeout_ns,
            ):
                self.counts["timeouts"] += 1
                raise BridgeError(f"{self.address}: no reply to reset within the timeout")
            code = self._error_refs.get(seq)
            if code is None:
                return self._take()
            if code not in ("unknown_peer", "not_controller") or attempt == 1:
                break
        raise BridgeError(f"{self.address}: reset refused: {code}")

    def observe(self) -> Observation:
        """The newest state; `stale=True` when nothing newer arrived since the last call (the
        state is then the last one received, never invented). Raises BridgeError only when no
        state has ever arrived."""
        self._pump()
        if self._pending_cmd >= 0:
            self._wait_step()
        if self._latest is None:
            self._wait_for(lambda: self._latest is not None, self.timeout_ns)
        return self._take()

    def next_observation(self, timeout_s: float) -> Observation:
        """Wait up to `timeout_s` for a state newer than the last one returned."""
        # `_wait_for` written out: this is the realtime control loop's wait, once per tick
        end = self.clock.now_ns() + round(timeout_s * 1e9)
        while self._latest_state_seq <= self._returned_state_seq:
            left = end - self.clock.now_ns()
            if left <= 0 or self._fatal is not None:
                break
            self._pump(min(left, 20_000_000))
        return self._take()

    def _wait_step(self) -> None:
        seq = self._pending_cmd
        ok = self._wait_for(
            lambda: self._ack_seq >= seq or seq in self._error_refs, self.timeout_ns
        )
        self._pending_cmd = -1
        if not ok:
            self.counts["timeouts"] += 1

    def apply(self, cmd: Command) -> None:
        """Send `cmd` (deadline mapped to the server's clock). Lockstep: return once the plant
        stepped (or refused), at most `timeout_s`. The action must be (Da,) finite; the plant
        enforces its limits and counts what it clamps or rejects. Realtime: does not read the
        socket (the `observe` before it just did), so the command leaves at once."""
        if self.mode == "realtime":  # the per-tick path: send, or count the drop
            if not (self._connected and self.role == "control" and self._send_command(cmd) >= 0):
                self.counts["dropped"] += 1
            return
        lockstep = self.mode == "lockstep"
        for attempt in range(2 if lockstep else 1):
            if lockstep and not self._connected:
                try:  # lockstep blocks anyway: wait (bounded) for the link to come back
                    self._wait_connected(self.timeout_ns)
                except BridgeError:
                    break
            if not self._connected or self.role != "control":
                break
            seq = self._send_command(cmd)
            if seq < 0:
                break
            if not lockstep:
                return
            self._pending_cmd = seq
            self._wait_step()
            if self._error_refs.get(seq) not in ("unknown_peer", "not_controller") or attempt:
                return
            # the server restarted or forgot us, or our lease lapsed: the step did not happen;
            # handshake again and resend once
        self.counts["dropped"] += 1

    def _send_command(self, cmd: Command) -> int:
        """Returns the message seq, or -1 when it could not be queued."""
        sock = self._sock
        if sock is None:
            return -1
        self._seq = seq = self._seq + 1
        dl = cmd.deadline_ns
        # lockstep: the plant waits for us, so deadlines are the controller's to count
        deadline = dl + self.sync.offset_ns if dl > 0 and self.mode != "lockstep" else None
        a = cmd.action
        if not (type(a) is np.ndarray and a.dtype is _F8):
            a = np.ascontiguousarray(a, dtype="<f8")  # (Da,); a wrong shape: the plant refuses
        latest = self._latest
        msg = {  # a literal, not message(**fields): this runs every tick
            "v": self.version,
            "type": "command",
            "seq": seq,
            "t_ns": self.clock.now_ns(),
            "stream": self._stream,
            "tick": cmd.seq,
            "obs_seq": latest.seq if latest is not None else -1,
            "action": {"dtype": "<f8", "shape": list(a.shape), "data": a.tobytes()},
            "deadline_ns": deadline,
            "fallback": cmd.fallback,
        }
        plan = cmd.plan
        if plan is not None and deadline is not None and self.version >= 2:
            off = self.sync.offset_ns  # plan times, like the deadline, on the server's clock
            p = plan if plan.dtype is _F8 and plan.flags.c_contiguous else np.ascontiguousarray(
                plan, dtype="<f8")
            msg["plan"] = {"dtype": "<f8", "shape": list(p.shape), "data": p.tobytes()}
            msg["plan_t0_ns"] = cmd.plan_t0_ns + off
            msg["plan_dt_ns"] = cmd.plan_dt_ns
            msg["plan_obs_t_ns"] = None if cmd.obs_t_ns is None else cmd.obs_t_ns + off
        payload = self._encode(msg)
        try:
            sock.send(payload, _NOBLOCK)
        except zmq.Again:
            return -1
        self.counts["sent"] += 1
        return seq

    @contextlib.contextmanager
    def kept_alive(self, interval_s: float = 0.1) -> Iterator[None]:
        """Keep the session (and the control lease) alive while the caller does slow set-up
        work without touching this plant, e.g. loading and tracing a model: a thread handles
        the link (heartbeats, states) every `interval_s` until the block ends. Without it a
        controller silent for the server's lease (1 s) loses control and has to ask again
        before its first command (`not_controller`, logged as a warning)."""
        stop = threading.Event()

        def pump() -> None:
            while not stop.wait(interval_s):
                self._pump(0)

        t = threading.Thread(target=pump, name="rtdiff-keepalive", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def transport_margin_ns(self) -> int | None:
        """How long before its deadline a command should leave (realtime): the 99th percentile
        of the last 512 measured send-to-plant latencies plus a guard (`hw_bridge.linklatency`);
        None until 200 commands were measured, or in lockstep. The control loop reads it."""
        return self.latency.margin_ns() if self.mode == "realtime" else None

    def counters(self) -> dict[str, int]:
        """Summary keys (what the plant side saw): `applied` (controller commands handed to the
        plant), `late` (the plant's own late count + commands the server got after their
        deadline), `rejected`, `clamped`, `watchdog_trips`; then every detail: `plant_*` (the
        plant's own counters), `server_*` (the bridge server's), `client_*` (this end's).
        Asks the server (one heartbeat, at most `timeout_s`); if it cannot answer, the last
        known server figures are used."""
        if self._connected:
            seq = self._heartbeat(self.clock.now_ns())
            if not self._wait_for(lambda: seq not in self._hb_sent, self.timeout_ns):
                self.counts["timeouts"] += 1
        sc = self.server_counters
        out: dict[str, int] = {
            "applied": sc.get("applied", 0),
            "late": sc.get("plant_late", 0) + sc.get("late", 0),
            "rejected": sc.get("rejected", 0),
            "clamped": sc.get("clamped", 0) + sc.get("rate_limited", 0),
            "watchdog_trips": sc.get("watchdog_trips", 0),
        }
        for k, v in sc.items():
            out[k if k.startswith("plant_") else f"server_{k}"] = v
        out.update(self.apply_counters())  # fresh, plan_fed, ...: the plant's or the server's
        for k, v in self.counts.items():
            out[f"client_{k}"] = v
        return out

    def close(self) -> None:
        if self._sock is not None:
            if self._connected:
                self._send(
                    message("goodbye", self._next_seq(), self.clock.now_ns(), v=self.version,
                            reason="close")
                )
            self._sock.close(linger=200)
            self._sock = None
        self._ctx.term()

    def __enter__(self) -> RemotePlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
