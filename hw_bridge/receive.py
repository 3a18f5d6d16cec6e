"""The receive side of the controller's link: `StateReceiver` reads every frame from the
session's socket, checks it, keeps the newest state (docs/protocol.md, section 5: latest
value) and hands the session's messages to its `Session` (hw_bridge/link.py). `RemotePlant`
(hw_bridge/client.py) owns one of each.

- `pump` handles every queued frame and waits up to a bound for the first one. It reads the
  socket's EVENTS and select()s on its fd rather than using a zmq.Poller (sub-millisecond
  timeouts, a few microseconds less per call); the session's periodic work
  (`Session.housekeeping`) runs only when nothing is queued. `wait`, `wait_new`: pump until a
  condition holds, a newer state arrived, the time is up or the session is fatally refused.
- `on_frame`: one frame. The stream's common case, a well-formed state of the plant's layout,
  is checked in one pass (`codec.fast_state`); anything else goes through the full checks and
  is routed by type: `state` here, `welcome`, `heartbeat` and `goodbye` to the session (a
  welcome that opens a session restarts this side's per-session state), `error` both ways by
  its code (a `late` one's lag feeds `latency`, one with a `ref_seq` answers that message, and
  the session acts on the rest). States, heartbeats and goodbyes that arrive before the
  session's welcome belong to an older session and are dropped; broken frames are counted and
  logged, never raised.
- A state: the newest wins; one drained while a newer one was still unread counts as
  `superseded`. State times are mapped to the controller's clock (realtime); its `ack_seq`
  (and `ack_lag_ns`: the send-to-plant latency, `latency`), `reset_seq` and `safe` are kept.
- `take` hands the newest state out once; asked again with nothing newer (or while the link is
  down), it returns the same state flagged `stale`, rebuilt from the bytes received so that
  the caller's changes to arrays it was handed never leak into it.
- Replies awaited: `acked(seq)`, `reset_done(seq)` and `refusal(seq)` (the error code that
  answered a message, for the last 64 such errors).
"""

from __future__ import annotations

import logging
import select
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import zmq

from hw_bridge.codec import (
    ProtocolError,
    check_message,
    check_obs,
    decode_array,
    fast_state,
    unpack,
)
from hw_bridge.link import BridgeError, Session
from hw_bridge.linklatency import LinkLatency
from runtime.protocols import FloatArray, Observation

log = logging.getLogger("hw_bridge")

# plain ints: pyzmq's enum members cost microseconds per operation on the control path
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_WAIT_SLICE_NS = 20_000_000  # waits re-check their condition (and the session) this often


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


class StateReceiver:
    """Frames in, newest state out; see the module docstring.

    Public state (written here only): `latest` (the newest state received, None before the
    first), `last_state_rx_ns` (when its frame arrived, controller clock), `latency` (the
    send-to-plant latencies, realtime), `server_counters` (the plant side's counters from the
    last heartbeat reply) and `safe` (the plant reports its safe action latched).
    """

    def __init__(self, session: Session, counts: Counter[str]) -> None:
        self.session = session
        self.counts = counts
        self.latest: Observation | None = None
        self.last_state_rx_ns = 0
        self.latency = LinkLatency()
        self.server_counters: dict[str, int] = {}
        self.safe = False
        self._clock = session.clock
        self._latest_wire: dict[str, Any] = {}  # the newest state's `obs` map as received
        # state seqs count per server run: both restart with each session
        self._state_seq = 0  # the newest state's
        self._returned_seq = 0  # the one `take` handed out last
        self._ack_seq = -1
        self._reset_seq = -1
        self._refusals: dict[int, str] = {}  # message seq -> the error code that answered it

    # -- waiting and draining ----------------------------------------------------------------

    def pump(self, wait_ns: int = 0) -> None:
        """Handle every queued frame; wait up to `wait_ns` for the first one."""
        session = self.session
        sock = session.sock
        if sock is None:
            return
        # The fd is edge-triggered: EVENTS (or a recv) re-arms it, so it is checked before
        # sleeping; after select() fires a frame is almost always there and is read at once
        # (a spurious wake costs one Again).
        if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            # frames were already queued (the caller is behind): drain, then the periodic work
            self._drain(sock)
        else:
            # Nothing queued: an idle moment, so the periodic work (heartbeat, hello, loss
            # check) is done now rather than between a state's arrival and the command the
            # caller computes from it, where a heartbeat would delay both ends' hot paths.
            session.housekeeping()
            if session.sock is not sock:  # the link was declared lost: a fresh socket
                return
            # EVENTS again: a send inside the housekeeping may have consumed the fd's edge
            if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN or (
                wait_ns > 0 and select.select([session.fd], [], [], wait_ns * 1e-9)[0]
            ):
                self._drain(sock)
            return
        session.housekeeping()

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        """Handle frames until none is queued. Called when one most likely is (EVENTS said so,
        or the fd fired: a spurious wake costs one Again); after each frame EVENTS says whether
        more wait (cheaper than ending on an Again)."""
        session = self.session
        while True:
            try:
                payload = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            self.on_frame(payload)
            if session.sock is not sock or not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                return  # re-opened during handling, or drained

    def wait(self, done: Callable[[], bool], timeout_ns: int) -> bool:
        """Pump until `done()`; False when `timeout_ns` ran out or the session is refused."""
        clock = self._clock
        end = clock.now_ns() + timeout_ns
        while not done():
            left = end - clock.now_ns()
            if left <= 0 or self.session.fatal is not None:
                return False
            self.pump(min(left, _WAIT_SLICE_NS))
        return True

    def wait_new(self, timeout_ns: int) -> None:
        """Pump until a state newer than the one `take` handed out last arrived, at most
        `timeout_ns` (`wait` written out: this is the realtime control loop's wait, once per
        tick)."""
        clock = self._clock
        end = clock.now_ns() + timeout_ns
        while self._state_seq <= self._returned_seq:
            left = end - clock.now_ns()
            if left <= 0 or self.session.fatal is not None:
                return
            self.pump(min(left, _WAIT_SLICE_NS))

    # -- replies awaited ---------------------------------------------------------------------

    def acked(self, seq: int) -> bool:
        """Command `seq` was answered: a state acknowledges it (or a later one), or an error
        refers to it."""
        return self._ack_seq >= seq or seq in self._refusals

    def reset_done(self, seq: int) -> bool:
        """Reset `seq` was answered: a state says the plant reset for it, or an error refers
        to it."""
        return self._reset_seq >= seq or seq in self._refusals

    def reset_applied(self, seq: int) -> bool:
        """The plant reset for `seq` or a later reset."""
        return self._reset_seq >= seq

    def refusal(self, seq: int) -> str | None:
        """The code of the error that answered message `seq`, if one did."""
        return self._refusals.get(seq)

    # -- frames ------------------------------------------------------------------------------

    def on_frame(self, payload: bytes) -> None:
        """One frame from the server: checked, then handled or routed (never raises on bad
        input: it is counted and logged)."""
        now = self._clock.now_ns()
        session = self.session
        spec = session.spec
        arrays = None
        try:
            msg = unpack(payload)
            # the stream's common case (a well-formed state of our layout) in one pass
            if session.connected and spec is not None:
                arrays = fast_state(msg, state_dim=spec.state_dim, goal_dim=spec.goal_dim)
            if arrays is None:
                msg = check_message(msg)
        except ProtocolError as exc:
            self.counts["errors"] += 1
            self._log_bad(f"undecodable message from server: {exc}")
            return
        if arrays is not None:
            session.heard()
            self._on_state(msg, now, arrays)
            return
        kind = msg["type"]
        if kind == "state":
            if session.connected:  # states before our welcome belong to an older session
                session.heard()
                self._on_state(msg, now)
            return
        if kind == "welcome":
            if session.on_welcome(msg, now):
                self._new_session()
            return
        if kind == "error":
            self._on_error(msg)
            return
        if not session.connected:
            return  # messages before our welcome belong to an older session
        session.heard()
        if kind == "heartbeat":
            session.on_heartbeat(msg, now)
            self.server_counters = dict(msg.get("counters", {}))
            self.safe = bool(msg.get("safe", False))
        elif kind == "goodbye":
            session.lost(f"server said goodbye: {msg.get('reason', '')}")

    def _new_session(self) -> None:
        # latencies were measured against the old offset estimate; state seqs and acks count
        # per server run. The state held stays (flagged stale until a new one comes).
        self.latency.reset()
        self._ack_seq = -1
        self._state_seq = self._returned_seq = 0

    def _on_error(self, msg: dict[str, Any]) -> None:
        self.counts["errors"] += 1
        code, text = msg["code"], msg["message"]
        ref = msg.get("ref_seq")
        if code == "late" and type(lag := msg.get("lag_ns")) is int:
            self.latency.add(lag - self.session.sync.offset_ns)  # how long the refused one took
        # `out_of_order` answers a copy (a message sent once is out of order only when the link
        # duplicated or replayed it): it refuses nothing this client waits for
        if isinstance(ref, int) and code != "out_of_order":
            self._refusals[ref] = code
            if len(self._refusals) > 64:
                self._refusals.pop(next(iter(self._refusals)))
        self.session.on_error(code, text, bool(msg.get("fatal", False)))

    def _log_bad(self, text: str) -> None:
        n = self.counts["errors"]
        if n <= 10 or n % 1000 == 0:  # a broken server must not flood the controller's log
            log.warning("hw_bridge: %s (%d so far)", text, n)

    def _on_state(
        self, msg: dict[str, Any], now: int, arrays: tuple[FloatArray, FloatArray] | None = None
    ) -> None:
        """A state message (header and fields valid); `arrays`: its obs already checked by
        `fast_state`, else `check_obs` checks it here."""
        session = self.session
        spec = session.spec
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
        latest = self.latest
        seq: int = msg["seq"]
        if seq <= self._state_seq and latest is not None:
            return  # out of order (cannot happen on one connection; cheap to guard)
        counts = self.counts
        counts["states"] += 1
        if latest is not None and self._state_seq > self._returned_seq:
            counts["superseded"] += 1
        realtime = session.mode == "realtime"
        t_ns = o["t_ns"] - session.sync.offset_ns if realtime else o["t_ns"]
        info = o.get("info")
        self.latest = Observation(
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
        self._state_seq = seq
        self.last_state_rx_ns = now  # when its frame was received
        ack = msg["ack_seq"]
        if ack != self._ack_seq:
            lag = msg.get("ack_lag_ns")
            if type(lag) is int and realtime:
                self.latency.add(lag - session.sync.offset_ns)  # that command's send-to-plant time
            self._ack_seq = ack
        self._reset_seq = msg["reset_seq"]
        self.safe = msg["safe"]

    # -- handing states out ------------------------------------------------------------------

    def take(self) -> Observation:
        """The newest state, once; after that (or while the link is down) a stale copy of it.
        Raises BridgeError when no state has arrived yet."""
        obs = self.latest
        session = self.session
        if obs is None:
            raise BridgeError(f"{session.address}: no state received yet")
        stale = self._state_seq == self._returned_seq or not session.connected
        self._returned_seq = self._state_seq
        if not stale:
            if obs.stale:
                self.counts["stale"] += 1
            return obs  # handed out once; a repeat is rebuilt below from the received bytes
        self.counts["stale"] += 1
        spec = session.spec
        if spec is None:  # cannot happen: a state arrives only after a welcome
            raise BridgeError(f"{session.address}: no handshake")
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
