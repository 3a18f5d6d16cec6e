"""The receive side of the controller's link: every frame decoded and checked, and the newest
state kept (protocol v1, section 5: latest value). Base class of `RemotePlant`
(hw_bridge/client.py); the socket and session are `_Link`'s (hw_bridge/link.py).

- `_on_message`: one frame. The stream's common case, a well-formed state of the plant's
  layout, is checked in one pass (`codec.fast_state`); anything else goes through the full
  checks and on to the session handlers (`welcome`, `error`, `heartbeat`, `goodbye`).
- `_on_state`: the newest state wins; a state drained while a newer one was still unread
  counts as `superseded`. State times are mapped to the controller's clock (realtime).
- `_take`: hands the newest state out once; asked again with nothing newer (or while the link
  is down), it returns the same state flagged `stale`, rebuilt from the bytes received so that
  the caller's changes to arrays it was handed never leak into it.
"""

from __future__ import annotations

from typing import Any

from hw_bridge.codec import (
    ProtocolError,
    check_message,
    check_obs,
    decode_array,
    fast_state,
    unpack,
)
from hw_bridge.link import BridgeError, _Link
from runtime.protocols import FloatArray, Observation


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


class _Receiver(_Link):
    """Frame decoding and the latest state; see the module docstring. Not used alone."""

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
        ack = msg["ack_seq"]
        if ack != self._ack_seq:
            lag = msg.get("ack_lag_ns")
            if type(lag) is int and self.mode == "realtime":
                self.latency.add(lag - self.sync.offset_ns)  # that command's send-to-plant time
            self._ack_seq = ack
        self._reset_seq = msg["reset_seq"]
        self._safe = msg["safe"]

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
