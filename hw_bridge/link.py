"""The controller's session with a plant server (docs/protocol.md, sections 5 and 8): `Session`
owns the DEALER socket and everything the handshake settles. `RemotePlant`
(hw_bridge/client.py) owns one; read that module's docstring first.

- `open` makes a fresh socket (CurveZMQ when a keys directory is given) and says `hello`
  (every version this client speaks; a hello keeps the v1 shape). `on_welcome` opens the
  session: the plant's layout (which must not change across reconnects), mode, the negotiated
  protocol version, limits, the heartbeat interval, the first clock-offset sample (`sync`) and
  a fresh command stream.
- `housekeeping` is the periodic work, done when nothing is queued: a `heartbeat` every
  `limits.heartbeat_ms`, the hello re-sent every 250 ms while not connected, and the loss
  check. Loss is judged from a probe, not from silence alone: the first heartbeat after the
  last message received starts the clock, and `timeout_s` without an answer (`heard`) means
  the link is lost: it is logged and `open` starts again, without blocking the caller.
- The server's session messages come here from the receiver: `on_heartbeat` (a clock-offset
  sample from its echo), `on_error` (`busy`, fatal refusals, `not_controller` and
  `unknown_peer` -> a new hello at once, `stream_tripped` -> a fresh stream), and `lost`
  (a server `goodbye`).
- Outgoing messages: `send` (reset, goodbye), `heartbeat`, `send_hello`, and `send_command`,
  the per-tick path: one dict literal, encoded by this session's own preallocated packer, sent
  without blocking, with the deadline and plan times mapped to the server's clock.

It reads no frames: `StateReceiver` (hw_bridge/receive.py) drains the socket and calls the
handlers above. One thread, no locks: every method does a bounded amount of work.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from hw_bridge.clocksync import ClockSync
from hw_bridge.codec import SUPPORTED_VERSIONS, ProtocolError, message, new_encoder, spec_from_wire
from hw_bridge.zmqctx import new_context
from runtime.clock import MonotonicClock
from runtime.protocols import Clock, Command, PlantSpec

log = logging.getLogger("hw_bridge")

# a plain int: pyzmq's enum members cost microseconds per operation on the control path
_NOBLOCK = int(zmq.NOBLOCK)
_F8 = np.dtype("<f8")
_HELLO_EVERY_NS = 250_000_000


class BridgeError(ConnectionError):
    """The link could not be made or used: no server, refused, or a layout/version mismatch."""


CLIENT_COUNTERS = (
    "sent",  # commands sent
    "dropped",  # commands not sent: link down
    "states",  # state messages received
    "superseded",  # states drained but never returned (a newer one won)
    "stale",  # observe() calls that returned a stale observation
    "errors",  # error messages from the server
    "timeouts",  # waits that ran out (lockstep apply, reset, counters)
    "resets_resent",  # resets sent again: no answer within RESET_RETRY_NS
    "reconnects",
    "new_streams",  # new command streams after a watchdog trip
)


class Session:
    """The socket and the session on it; see the module docstring.

    Public state (read by the receiver and `RemotePlant`; written here only): `sock` and `fd`
    (None / -1 when closed), `connected`, `spec` (the plant's layout, None before the first
    welcome), `mode`, `version`, `limits`, `stream` (the command stream id), `sync` (the clock
    offset), `busy` (the server's last `busy` text) and `fatal` (why the session cannot go on).
    `counts` is shared with the other parts of the client.
    """

    def __init__(
        self,
        address: str,
        *,
        counts: Counter[str],
        clock: Clock | None = None,
        timeout_s: float = 1.0,
        keys_dir: str | Path | None = None,
        role: str = "control",
        takeover: bool = False,
        expect: dict[str, Any] | None = None,
        name: str = "rtdiff",
        auto_resume: bool = True,
        client_key: str = "client",
    ) -> None:
        if role not in ("control", "observe"):
            raise ValueError(f"{role=} must be 'control' or 'observe'")
        self.address = address
        self.counts = counts
        self.clock: Clock = clock if clock is not None else MonotonicClock(spin_ns=0)
        self.timeout_ns = round(timeout_s * 1e9)
        self.role = role
        self.takeover = takeover
        self.expect = expect
        self.name = name
        self.auto_resume = auto_resume
        self.client_key = client_key
        env_keys = os.environ.get("RTDIFF_KEYS")
        self.keys_dir = Path(keys_dir) if keys_dir else (Path(env_keys) if env_keys else None)
        self.sync = ClockSync()
        self.sock: zmq.Socket[bytes] | None = None
        self.fd = -1
        self.connected = False
        self.lost_since_ns: int | None = None  # when the link was lost (None: not lost)
        self.spec: PlantSpec | None = None
        self.mode = "lockstep"
        self.version = 1  # the protocol version the server chose (welcome.version)
        self.limits: dict[str, Any] = {}
        self.stream = 0
        self.busy: str | None = None
        self.fatal: str | None = None
        self._ctx = new_context()
        self._encode = new_encoder()  # this session's own packer (single-threaded, like the rest)
        self._seq = 0
        self._id: int | None = None  # the server's session id (welcome.session)
        self._hb_interval_ns = 100_000_000
        self._probe_ns: int | None = None  # first heartbeat sent since the last message received
        self._last_hello_ns = 0
        self._last_hb_ns = 0
        self._hb_sent: dict[int, int] = {}  # heartbeat seq -> when it left, until answered

    # -- socket ------------------------------------------------------------------------------

    def open(self) -> None:
        """A fresh socket (the old one, if any, closed at once), and a hello on it."""
        if self.sock is not None:
            self.sock.close(linger=0)
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 256)
        sock.setsockopt(zmq.SNDHWM, 64)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.keys_dir is not None:
            from hw_bridge.keys import client_curve

            client_curve(sock, self.keys_dir, client=self.client_key)
        sock.connect(self.address)
        self.sock = sock
        self.fd = int(sock.getsockopt(zmq.FD))
        self.connected = False
        self.send_hello()

    def close(self) -> None:
        """Say goodbye (when connected), close the socket (200 ms to flush) and the context."""
        if self.sock is not None:
            if self.connected:
                self.send("goodbye", reason="close")
            self.sock.close(linger=200)
            self.sock = None
            self.fd = -1
        self._ctx.term()

    def abort(self) -> None:
        """Close the socket and the context at once, without a goodbye (a failed handshake)."""
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
            self.fd = -1
        self._ctx.term()

    def lost(self, why: str) -> None:
        """The link is gone (no answer, or the server said goodbye): log it, start again.
        `lost_since_ns` keeps when it was first lost, until a welcome opens a session again."""
        if self.connected:
            log.warning("hw_bridge: lost link to %s (%s); reconnecting", self.address, why)
        if self.lost_since_ns is None:
            self.lost_since_ns = self.clock.now_ns()
        self.open()

    # -- outgoing messages -------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, kind: str, **fields: Any) -> int:
        """Send a `kind` message of this session's version; returns its seq. A message that
        cannot be queued (no socket, send queue full) is dropped: the caller's wait runs out."""
        seq = self.next_seq()
        self._send(message(kind, seq, self.clock.now_ns(), v=self.version, **fields))
        return seq

    def _send(self, msg: dict[str, Any]) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.send(self._encode(msg), _NOBLOCK)
        except zmq.Again:
            return False
        return True

    def send_hello(self) -> None:
        now = self.clock.now_ns()
        self._last_hello_ns = now
        fields: dict[str, Any] = {
            "versions": list(SUPPORTED_VERSIONS),
            "role": self.role,
            "takeover": self.takeover,
            "name": self.name,
        }
        if self.expect:
            fields["expect"] = self.expect
        # a hello keeps the v1 shape in every version, and says so in its header
        self._send(message("hello", self.next_seq(), now, v=1, **fields))

    def retry_hello(self, now: int) -> None:
        """Not connected: re-send the hello if the last one left over 250 ms ago."""
        if not self.connected and now - self._last_hello_ns > _HELLO_EVERY_NS:
            self.send_hello()

    def heartbeat(self, now: int) -> int:
        """Send a heartbeat; returns its seq (`heartbeat_answered` says when it came back)."""
        seq = self.next_seq()
        self._last_hb_ns = now
        self._hb_sent[seq] = now
        if len(self._hb_sent) > 64:
            self._hb_sent.pop(next(iter(self._hb_sent)))
        self._send(message("heartbeat", seq, now, v=self.version))
        return seq

    def heartbeat_answered(self, seq: int) -> bool:
        """The heartbeat `seq` was answered (or is too old to be waited for)."""
        return seq not in self._hb_sent

    def send_command(self, cmd: Command, obs_seq: int) -> int:
        """Send `cmd` as acting on state `obs_seq`; returns the message seq, or -1 when it
        could not be queued. The deadline and plan times go on the server's clock (realtime;
        in lockstep the plant waits for us, so deadlines are the controller's to count); the
        plan goes only with a deadline and in v2."""
        sock = self.sock
        if sock is None:
            return -1
        self._seq = seq = self._seq + 1
        dl = cmd.deadline_ns
        deadline = dl + self.sync.offset_ns if dl > 0 and self.mode != "lockstep" else None
        a = cmd.action
        if not (type(a) is np.ndarray and a.dtype is _F8):
            a = np.ascontiguousarray(a, dtype="<f8")  # (Da,); a wrong shape: the plant refuses
        msg = {  # a literal, not message(**fields): this runs every tick
            "v": self.version,
            "type": "command",
            "seq": seq,
            "t_ns": self.clock.now_ns(),
            "stream": self.stream,
            "tick": cmd.seq,
            "obs_seq": obs_seq,
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

    # -- periodic work -----------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Heartbeat, hello re-send and loss check, whichever is due. The receiver calls it
        when nothing is queued, so that it never sits between a state's arrival and the
        command the caller computes from it. May `open` a fresh socket (the link was lost)."""
        now = self.clock.now_ns()
        if not self.connected:
            self.retry_hello(now)
            return
        # Loss is judged from a probe, not from silence alone: a controller that paused (and so
        # neither sent nor read) must not take the quiet it caused for a dead server.
        probe = self._probe_ns
        if probe is not None and now - probe > self.timeout_ns:
            self.lost(f"no answer for {(now - probe) / 1e9:.2f} s")
            return
        if now - self._last_hb_ns > self._hb_interval_ns:
            self.heartbeat(now)
            if probe is None:
                self._probe_ns = now

    def heard(self) -> None:
        """A message of this session arrived: the server is there (the loss probe ends)."""
        self._probe_ns = None

    # -- the server's session messages -------------------------------------------------------

    def on_welcome(self, msg: dict[str, Any], now: int) -> bool:
        """A checked `welcome` received at `now`. True when it opened a session (the first,
        or one after a loss: the caller starts its per-session state afresh); False for the
        answer to a re-sent hello, or a welcome that cannot be used (`fatal` says why)."""
        if self.connected and msg["session"] == self._id:
            return False  # the answer to a re-sent hello: we are in already
        try:
            spec = spec_from_wire(msg["spec"])
        except ProtocolError as exc:
            self.fatal = f"bad welcome: {exc}"
            return False
        old = self.spec
        if old is not None and (spec.state_dim, spec.action_dim, spec.goal_dim) != (
            old.state_dim,
            old.action_dim,
            old.goal_dim,
        ):
            self.fatal = f"plant layout changed across reconnect: {spec} vs {old}"
            log.error("hw_bridge: %s", self.fatal)
            return False
        self.sync.reset()
        self.sync.add(msg["echo_t_ns"], msg["rx_t_ns"], msg["t_ns"], now)
        self.spec = spec
        self.mode = msg["mode"]
        self.version = int(msg["version"])
        self.limits = dict(msg["limits"])
        hb_ms = self.limits.get("heartbeat_ms", 100.0)
        if not (type(hb_ms) in (int, float) and 1.0 <= hb_ms <= 60_000.0):
            hb_ms = 100.0  # an odd value from the server must not stall or flood the link
        self._hb_interval_ns = round(hb_ms * 1e6)
        restarted = self._id is not None and msg["session"] != self._id
        self._id = msg["session"]
        self.connected = True
        self.lost_since_ns = None
        self.busy = None
        self._last_hb_ns = now
        self._probe_ns = None
        self.new_stream()
        if old is not None:
            self.counts["reconnects"] += 1
            log.warning(
                "hw_bridge: reconnected to %s as %s (%s)",
                self.address,
                msg["role"],
                "server restarted: new session" if restarted else "same server session",
            )
        return True

    def on_heartbeat(self, msg: dict[str, Any], now: int) -> None:
        """A checked heartbeat reply received at `now`: a clock-offset sample from its echo."""
        t1 = self._hb_sent.pop(int(msg.get("echo_seq", -1)), None)
        if t1 is not None and "rx_t_ns" in msg:
            self.sync.add(t1, msg["rx_t_ns"], msg["t_ns"], now)

    def on_error(self, code: str, text: str, fatal: bool) -> None:
        """What an `error` means for the session (the receiver has counted it and noted what
        it refers to)."""
        if code == "busy":
            self.busy = text
        elif fatal:
            self.fatal = f"{code}: {text}"
            log.error("hw_bridge: server refused: %s: %s", code, text)
        elif code == "not_controller" and self.role == "control" and self.connected:
            # our lease lapsed while we were quiet (or we were taken over): ask again; the
            # plant grants it unless another controller holds the plant
            log.warning("hw_bridge: not the controller any more; asking for control again")
            self.connected = False
            self.send_hello()
        elif code == "unknown_peer" and self.connected:
            self.connected = False
            log.warning(
                "hw_bridge: server %s lost our session (restart?); handshaking", self.address
            )
            self.send_hello()
        elif code == "stream_tripped" and self.auto_resume:
            log.warning("hw_bridge: plant watchdog stopped our commands; starting a fresh stream")
            self.counts["new_streams"] += 1
            self.new_stream()
        elif code == "taken_over":
            log.warning("hw_bridge: %s", text)
        elif code == "plant_error":  # e.g. a command that crossed the episode's end: routine
            log.info("hw_bridge: plant refused: %s", text)
        elif code not in ("late", "rejected"):
            log.warning("hw_bridge: server error %s: %s", code, text)

    def new_stream(self) -> None:
        """Commands from now on form a new stream (a random id), as the plant requires after
        its watchdog latched the old one."""
        self.stream = random.getrandbits(32)
