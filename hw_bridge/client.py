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
heartbeat; the sample with the smallest round trip among the last 16 wins. Timestamps on the
wire are each sender's own monotonic clock; `RemotePlant` maps state times to its clock and
command deadlines to the server's.

Lockstep (the server says so in `welcome.mode`): `apply` waits for the state that acknowledges
the command (the plant stepped), as the `Plant` protocol asks. Realtime: `apply` only sends;
`observe` never blocks; `next_observation` waits for a newer state.
"""

from __future__ import annotations

import logging
import os
import random
import select
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import zmq

from hw_bridge.clocksync import ClockSync
from hw_bridge.codec import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    ProtocolError,
    check_message,
    check_obs,
    decode_array,
    fast_state,
    message,
    new_encoder,
    spec_from_wire,
    unpack,
)
from runtime.clock import MonotonicClock
from runtime.protocols import Clock, Command, FloatArray, Observation, PlantSpec

log = logging.getLogger("hw_bridge")

# plain ints: pyzmq's enum members cost microseconds per operation on the control path
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_F8 = np.dtype("<f8")


def _info_from_wire(info: dict[str, Any]) -> dict[str, Any]:
    if not info:
        return {}
    out = dict(info)
    for k, v in info.items():
        if isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}:
            try:
                out[k] = decode_array(v, field=f"info.{k}")
            except ProtocolError:
                pass  # left as sent
    return out


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
    "reconnects",
    "fresh_streams",  # new command streams after a watchdog trip
)


class RemotePlant:
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
        if not (timeout_s > 0 and connect_timeout_s > 0):
            raise ValueError(f"{timeout_s=} and {connect_timeout_s=} must be > 0")
        if role not in ("control", "observe"):
            raise ValueError(f"{role=} must be 'control' or 'observe'")
        self.address = address
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
        self.counts: Counter[str] = Counter({k: 0 for k in CLIENT_COUNTERS})
        self.server_counters: dict[str, int] = {}
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._encode = new_encoder()  # this client's own packer (single-threaded, like the rest)
        self._seq = 0
        self._stream = 0
        self._connected = False
        self._session: int | None = None
        self._spec: PlantSpec | None = None
        self.mode = "lockstep"
        self.limits: dict[str, Any] = {}
        self._hb_interval_ns = 100_000_000
        self._last_rx_ns = 0
        self._probe_ns: int | None = None  # first heartbeat sent since the last message received
        self._last_hello_ns = 0
        self._last_hb_ns = 0
        self._hb_sent: dict[int, int] = {}
        self._latest: Observation | None = None  # newest state received
        self._latest_wire: dict[str, Any] = {}  # its `obs` map as received
        self.last_state_rx_ns = 0  # when it arrived (our clock)
        self._latest_state_seq = 0
        self._returned_state_seq = 0  # state seq last handed out by observe()
        self._ack_seq = -1
        self._reset_seq = -1
        self._pending_cmd = -1  # lockstep: seq of the command whose step we wait for
        self._error_refs: dict[int, str] = {}
        self._fatal: str | None = None
        self._busy: str | None = None
        self._safe = False
        try:
            self._open()
            self._wait_connected(round(connect_timeout_s * 1e9))
        except BaseException:
            if self._sock is not None:
                self._sock.close(linger=0)
            self._ctx.term()
            raise

    # -- socket and handshake ----------------------------------------------------------------

    def _open(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
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
        self._sock = sock
        self._fd = int(sock.getsockopt(zmq.FD))
        self._connected = False
        self._send_hello()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, msg: dict[str, Any]) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.send(self._encode(msg), _NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _send_hello(self) -> None:
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
        self._send(message("hello", self._next_seq(), now, **fields))

    def _wait_connected(self, timeout_ns: int) -> None:
        end = self.clock.now_ns() + timeout_ns
        while not self._connected:
            if self._fatal is not None:
                raise BridgeError(f"{self.address}: {self._fatal}")
            left = end - self.clock.now_ns()
            if left <= 0:
                why = (
                    self._busy or "no answer (is `rtdiff serve` running there, with matching keys?)"
                )
                raise BridgeError(f"{self.address}: handshake failed: {why}")
            self._pump(min(left, 50_000_000))
            if not self._connected and self.clock.now_ns() - self._last_hello_ns > 250_000_000:
                self._send_hello()

    def _lost(self, why: str) -> None:
        if self._connected:
            log.warning("hw_bridge: lost link to %s (%s); reconnecting", self.address, why)
        self._open()

    # -- receiving ---------------------------------------------------------------------------

    def _pump(self, wait_ns: int = 0) -> None:
        """Handle every queued message; wait up to `wait_ns` for the first one."""
        sock = self._sock
        if sock is None:
            return
        # EVENTS + select() on the socket's fd instead of zmq.Poller: sub-millisecond timeouts
        # and a few microseconds less per call on the control path. The fd is edge-triggered:
        # EVENTS (or a recv) re-arms it, so it is checked before sleeping; after select() fires
        # a frame is almost always there and is read at once (a spurious wake costs one Again),
        # and after each frame EVENTS says whether more are queued (cheaper than an Again).
        if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            # frames were already queued (the caller is behind): drain, then the periodic work
            self._drain(sock)
        else:
            # Nothing queued: an idle moment, so the periodic work (heartbeat, hello, loss
            # check) is done now rather than between a state's arrival and the command the
            # caller computes from it, where a heartbeat would delay both ends' hot paths.
            self._housekeeping()
            if self._sock is not sock:  # the link was declared lost: a fresh socket
                return
            # EVENTS again: a send inside the housekeeping may have consumed the fd's edge
            if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN or (
                wait_ns > 0 and select.select([self._fd], [], [], wait_ns * 1e-9)[0]
            ):
                self._drain(sock)
            return
        self._housekeeping()

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        """Handle frames until none is queued. Called when one most likely is (EVENTS said so,
        or the fd fired: a spurious wake costs one Again); after each frame EVENTS says whether
        more wait (cheaper than ending on an Again)."""
        while True:
            try:
                payload = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            self._on_message(payload)
            if self._sock is not sock or not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                return  # re-opened during handling, or drained

    def _housekeeping(self) -> None:
        now = self.clock.now_ns()
        if not self._connected:
            if now - self._last_hello_ns > 250_000_000:
                self._send_hello()
            return
        # Loss is judged from a probe, not from silence alone: a controller that paused (and so
        # neither sent nor read) must not take the quiet it caused for a dead server.
        probe = self._probe_ns
        if probe is not None and now - probe > self.timeout_ns:
            self._lost(f"no answer for {(now - probe) / 1e9:.2f} s")
            return
        if now - self._last_hb_ns > self._hb_interval_ns:
            self._heartbeat(now)
            if probe is None:
                self._probe_ns = now

    def _heartbeat(self, now: int) -> int:
        seq = self._next_seq()
        self._last_hb_ns = now
        self._hb_sent[seq] = now
        if len(self._hb_sent) > 64:
            self._hb_sent.pop(next(iter(self._hb_sent)))
        self._send(message("heartbeat", seq, now))
        return seq

    def _on_message(self, payload: bytes) -> None:
        now = self.clock.now_ns()
        spec = self._spec
        arrays = None
        try:
            msg = unpack(payload)
            # the stream's common case (a well-formed state of our layout) in one pass
            if self._connected and spec is not None:
                arrays = fast_state(msg, state_dim=spec.state_dim, goal_dim=spec.goal_dim)
            if arrays is None:
                msg = check_message(msg)
        except ProtocolError as exc:
            self.counts["errors"] += 1
            self._log_bad(f"undecodable message from server: {exc}")
            return
        if arrays is not None:
            self._last_rx_ns = now
            self._probe_ns = None
            self._on_state(msg, now, arrays)
            return
        kind = msg["type"]
        if kind == "state":
            if self._connected:  # states before our welcome belong to an older session
                self._last_rx_ns = now
                self._probe_ns = None
                self._on_state(msg, now)
            return
        if kind == "welcome":
            self._on_welcome(msg, now)
            return
        if kind == "error":
            self._on_error(msg)
            return
        if not self._connected:
            return  # states before our welcome belong to an older session
        self._last_rx_ns = now
        self._probe_ns = None
        if kind == "heartbeat":
            t1 = self._hb_sent.pop(int(msg.get("echo_seq", -1)), None)
            if t1 is not None and "rx_t_ns" in msg:
                self.sync.add(t1, msg["rx_t_ns"], msg["t_ns"], now)
            self.server_counters = dict(msg.get("counters", {}))
            self._safe = bool(msg.get("safe", False))
        elif kind == "goodbye":
            self._lost(f"server said goodbye: {msg.get('reason', '')}")

    def _on_welcome(self, msg: dict[str, Any], now: int) -> None:
        if self._connected and msg["session"] == self._session:
            return  # the answer to a re-sent hello: we are in already
        try:
            spec = spec_from_wire(msg["spec"])
        except ProtocolError as exc:
            self._fatal = f"bad welcome: {exc}"
            return
        if self._spec is not None and (spec.state_dim, spec.action_dim) != (
            self._spec.state_dim,
            self._spec.action_dim,
        ):
            self._fatal = f"plant layout changed across reconnect: {spec} vs {self._spec}"
            log.error("hw_bridge: %s", self._fatal)
            return
        self.sync.reset()
        self.sync.add(msg["echo_t_ns"], msg["rx_t_ns"], msg["t_ns"], now)
        first = self._spec is None
        self._spec = spec
        self.mode = msg["mode"]
        self.limits = dict(msg["limits"])
        hb_ms = self.limits.get("heartbeat_ms", 100.0)
        if not (type(hb_ms) in (int, float) and 1.0 <= hb_ms <= 60_000.0):
            hb_ms = 100.0  # an odd value from the server must not stall or flood the link
        self._hb_interval_ns = round(hb_ms * 1e6)
        restarted = self._session is not None and msg["session"] != self._session
        self._session = msg["session"]
        self._connected = True
        self._busy = None
        self._last_rx_ns = now
        self._last_hb_ns = now
        self._probe_ns = None
        self._ack_seq = -1
        self._pending_cmd = -1
        # state seqs count per server run: a restarted server starts again from 1. The state we
        # hold stays (flagged stale until a new one comes); the counters restart with the session.
        self._latest_state_seq = self._returned_state_seq = 0
        self._new_stream()
        if not first:
            self.counts["reconnects"] += 1
            log.warning(
                "hw_bridge: reconnected to %s as %s (%s)",
                self.address,
                msg["role"],
                "server restarted: new session" if restarted else "same server session",
            )

    def _on_error(self, msg: dict[str, Any]) -> None:
        self.counts["errors"] += 1
        code, text = msg["code"], msg["message"]
        ref = msg.get("ref_seq")
        if isinstance(ref, int):
            self._error_refs[ref] = code
            if len(self._error_refs) > 64:
                self._error_refs.pop(next(iter(self._error_refs)))
        if code == "busy":
            self._busy = text
        elif msg.get("fatal", False):
            self._fatal = f"{code}: {text}"
            log.error("hw_bridge: server refused: %s: %s", code, text)
        elif code == "not_controller" and self.role == "control" and self._connected:
            # our lease lapsed while we were quiet (or we were taken over): ask again; the
            # plant grants it unless another controller holds the plant
            log.warning("hw_bridge: not the controller any more; asking for control again")
            self._connected = False
            self._send_hello()
        elif code == "unknown_peer" and self._connected:
            self._connected = False
            log.warning(
                "hw_bridge: server %s lost our session (restart?); handshaking", self.address
            )
            self._send_hello()
        elif code == "stream_tripped" and self.auto_resume:
            log.warning("hw_bridge: plant watchdog stopped our commands; starting a fresh stream")
            self.counts["fresh_streams"] += 1
            self._new_stream()
        elif code == "taken_over":
            log.warning("hw_bridge: %s", text)
        elif code not in ("late", "rejected"):
            log.warning("hw_bridge: server error %s: %s", code, text)

    def _on_state(
        self, msg: dict[str, Any], now: int, arrays: tuple[FloatArray, FloatArray] | None = None
    ) -> None:
        """A state message (header and fields valid); `arrays`: its obs already checked by
        `fast_state`, else `check_obs` checks it here."""
        spec = self._spec
        if spec is None:
            return
        o = msg["obs"]
        if arrays is None:
            try:
                arrays = check_obs(o, state_dim=spec.state_dim, goal_dim=spec.goal_dim)
            except ProtocolError as exc:
                self.counts["errors"] += 1
                self._log_bad(f"bad state message: {exc}")
                return
        state, goal = arrays
        latest = self._latest
        seq: int = msg["seq"]
        if seq <= self._latest_state_seq and latest is not None:
            return  # out of order (cannot happen on one connection; cheap to guard)
        counts = self.counts
        counts["states"] += 1
        if latest is not None and self._latest_state_seq > self._returned_state_seq:
            counts["superseded"] += 1
        t_ns = o["t_ns"] - self.sync.offset_ns if self.mode == "realtime" else o["t_ns"]
        info = o.get("info")
        self._latest = Observation(
            seq=o["seq"],
            t_ns=t_ns,
            state=state,
            goal=goal,
            reward=float(o["reward"]),
            terminated=o["terminated"],
            truncated=o["truncated"],
            stale=o.get("stale", False),  # the plant itself had nothing new
            info=_info_from_wire(info) if info else {},
        )
        self._latest_wire = o  # validated; the source of stale copies (bytes are immutable)
        self._latest_state_seq = seq
        self.last_state_rx_ns = now  # when its frame was received
        self._ack_seq = msg["ack_seq"]
        self._reset_seq = msg["reset_seq"]
        self._safe = msg["safe"]

    def _log_bad(self, text: str) -> None:
        n = self.counts["errors"]
        if n <= 10 or n % 1000 == 0:  # a broken server must not flood the controller's log
            log.warning("hw_bridge: %s (%d so far)", text, n)

    def _new_stream(self) -> None:
        self._stream = random.getrandbits(32)

    def _wait_for(self, done: Any, timeout_ns: int) -> bool:
        end = self.clock.now_ns() + timeout_ns
        while not done():
            left = end - self.clock.now_ns()
            if left <= 0 or self._fatal is not None:
                return False
            self._pump(min(left, 20_000_000))
        return True

    # -- the Plant protocol ------------------------------------------------------------------

    def spec(self) -> PlantSpec:
        if self._spec is None:  # cannot happen after __init__
            raise BridgeError(f"{self.address}: no handshake")
        return self._spec

    @property
    def connected(self) -> bool:
        return self._connected

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
            self._send(message("reset", seq, self.clock.now_ns(), seed=seed))
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

    def _take(self) -> Observation:
        obs = self._latest
        if obs is None:
            raise BridgeError(f"{self.address}: no state received yet")
        stale = self._latest_state_seq == self._returned_state_seq or not self._connected
        self._returned_state_seq = self._latest_state_seq
        if not stale:
            if obs.stale:
                self.counts["stale"] += 1
            return obs  # handed out once; a repeat is rebuilt below from the received bytes
        self.counts["stale"] += 1
        spec = self.spec()
        # fresh arrays from the message as received: the caller may have changed the ones it
        # was handed, and a stale observation must be the last state, exactly
        state, goal = check_obs(self._latest_wire, state_dim=spec.state_dim, goal_dim=spec.goal_dim)
        return Observation(
            seq=obs.seq,
            t_ns=obs.t_ns,
            state=state,
            goal=goal,
            reward=obs.reward,
            terminated=obs.terminated,
            truncated=obs.truncated,
            stale=True,
            info=dict(obs.info),
        )

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
        payload = self._encode(
            {  # a literal, not message(**fields): this runs every tick
                "v": PROTOCOL_VERSION,
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
        )
        try:
            sock.send(payload, _NOBLOCK)
        except zmq.Again:
            return -1
        self.counts["sent"] += 1
        return seq

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
        for k, v in self.counts.items():
            out[f"client_{k}"] = v
        return out

    def close(self) -> None:
        if self._sock is not None:
            if self._connected:
                self._send(
                    message("goodbye", self._next_seq(), self.clock.now_ns(), reason="close")
                )
            self._sock.close(linger=200)
            self._sock = None
        self._ctx.term()

    def __enter__(self) -> RemotePlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
