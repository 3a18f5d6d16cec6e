"""The controller side's link to a plant server (protocol v1, docs/protocol.md): the socket,
the handshake, heartbeats, loss and reconnection. `RemotePlant` (hw_bridge/client.py) is built
on it; read that module's docstring first.

Layers, each a base class of the next (one object, one thread, no locks):

- `_Link` (here): owns the DEALER socket and the session. `_pump` waits for and drains frames,
  and does the periodic work (heartbeat, hello re-sends, the loss check) only when nothing is
  queued, so that it never sits between a state's arrival and the command computed from it.
  It handles the session's messages (`welcome`, `error`) and keeps every field of the client's
  state, so the whole state is declared in one place (`__init__`).
- `_Receiver` (hw_bridge/receive.py): decodes each frame and keeps the newest state (the
  latest-value rule); hands observations out, stale-flagged when nothing newer came.
- `RemotePlant` (hw_bridge/client.py): the `runtime.Plant` calls.
"""

from __future__ import annotations

import logging
import os
import random
import select
from collections import Counter
from pathlib import Path
from typing import Any, cast

import zmq

from hw_bridge.clocksync import ClockSync
from hw_bridge.codec import SUPPORTED_VERSIONS, ProtocolError, message, new_encoder, spec_from_wire
from hw_bridge.linklatency import LinkLatency
from hw_bridge.zmqctx import new_context
from runtime.clock import MonotonicClock
from runtime.protocols import Clock, Observation, PlantSpec

log = logging.getLogger("hw_bridge")

# plain ints: pyzmq's enum members cost microseconds per operation on the control path
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


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


class _Link:
    """Socket, session and the client's state; see the module docstring. Not used alone."""

    def __init__(
        self,
        address: str,
        *,
        clock: Clock | None,
        timeout_s: float,
        connect_timeout_s: float,
        keys_dir: str | Path | None,
        role: str,
        takeover: bool,
        expect: dict[str, Any] | None,
        name: str,
        auto_resume: bool,
        client_key: str,
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
        self._ctx = new_context()
        self._sock: zmq.Socket[bytes] | None = None
        self._encode = new_encoder()  # this client's own packer (single-threaded, like the rest)
        self._seq = 0
        self._stream = 0
        self._connected = False
        self._session: int | None = None
        self._spec: PlantSpec | None = None
        self.mode = "lockstep"
        self.version = 1  # the protocol version the server chose (welcome.version)
        self.limits: dict[str, Any] = {}
        self._hb_interval_ns = 100_000_000
        self._last_rx_ns = 0
        self._probe_ns: int | None = None  # first heartbeat sent since the last message received
        self._last_hello_ns = 0
        self._last_hb_ns = 0
        self._hb_sent: dict[int, int] = {}
        # the latest value (kept by `_Receiver`) and the replies awaited
        self._latest: Observation | None = None  # newest state received
        self._latest_wire: dict[str, Any] = {}  # its `obs` map as received
        self.last_state_rx_ns = 0  # when it arrived (our clock)
        self._latest_state_seq = 0
        self._returned_state_seq = 0  # state seq last handed out by observe()
        self._ack_seq = -1
        # send-to-plant latencies from `ack_lag_ns` / a late error's `lag_ns` (realtime)
        self.latency = LinkLatency()
        self._reset_seq = -1
        self._pending_cmd = -1  # lockstep: seq of the command whose step we wait for
        self._error_refs: dict[int, str] = {}
        self._fatal: str | None = None
        self._busy: str | None = None
        self._safe = False
        self._connect_timeout_ns = round(connect_timeout_s * 1e9)

    def _connect(self) -> None:
        """The first handshake (raises BridgeError); frees the socket and context on failure."""
        try:
            self._open()
            self._wait_connected(self._connect_timeout_ns)
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
        # a hello keeps the v1 shape in every version, and says so in its header
        self._send(message("hello", self._next_seq(), now, v=1, **fields))

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

    # -- waiting and draining ----------------------------------------------------------------

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
        self._send(message("heartbeat", seq, now, v=self.version))
        return seq

    def _on_message(self, payload: bytes) -> None:
        raise NotImplementedError  # decoding and the latest state: `_Receiver`

    # -- session messages --------------------------------------------------------------------

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
        self.latency.reset()  # measured against the old offset estimate
        first = self._spec is None
        self._spec = spec
        self.mode = msg["mode"]
        self.version = int(msg["version"])
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
        if code == "late" and type(lag := msg.get("lag_ns")) is int:
            self.latency.add(lag - self.sync.offset_ns)  # how long the refused one took
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

    def spec(self) -> PlantSpec:
        """The plant's layout, from the welcome."""
        if self._spec is None:  # cannot happen after __init__
            raise BridgeError(f"{self.address}: no handshake")
        return self._spec
