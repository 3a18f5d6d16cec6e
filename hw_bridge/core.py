"""`ServerCore`: the plant side of protocol v1 as a state machine, without sockets.

Bytes and a clock in, (identity, bytes) out: `handle(ident, payload)` for each received frame,
`tick()` once per plant period in realtime mode; outgoing frames collect in `outbox` for the
socket loop (`hw_bridge.server.PlantServer`) to send. Keeping sockets out makes the watchdog,
the limits, the takeover rule and the fuzz behaviour testable on a `FakeClock`, frame by frame.

Processing order of a frame (docs/protocol.md, section 6): size and msgpack -> header and field
types -> `hello` (any time) -> session -> strictly increasing `seq` -> type rules. Commands then
pass: controller only -> stream not latched by the watchdog -> deadline (realtime) -> shape and
finiteness -> clamp and rate limit -> `plant.apply`. Everything refused is counted and answered
with an `error` naming the message's `seq`.

Control rule (one controller at a time): a `hello` with role `control` is granted when nobody
controls the plant, when the current controller's lease lapsed (no valid message for
`lease_ms`), or when the hello says `takeover: true` (the old controller is told `taken_over`
and demoted to an observer). Otherwise it is refused with `busy`. Observer sessions are capped
(`ServerConfig.max_observers`).

Floods: every peer identity has token-bucket budgets (`hw_bridge.budget.Buckets`) for frames,
hellos and error replies; over budget a frame is dropped before decoding (`flooded`) and an
error is not sent (`replies_withheld`), so the work a hostile peer can cause is bounded per
second (docs/protocol.md, section 6, "Limits per peer").
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from hw_bridge.budget import Buckets
from hw_bridge.codec import (
    MAX_MSG_BYTES,
    MAX_STR_BYTES,
    SUPPORTED_VERSIONS,
    ProtocolError,
    check_message,
    decode_array,
    message,
    new_encoder,
    obs_to_wire,
    spec_to_wire,
    unpack,
)
from hw_bridge.safety import ActionLimiter, ActionRejected, Watchdog
from runtime.planfeed import (
    DRY,
    FALLBACK,
    FRESH,
    MAX_PLAN_TICKS,
    PLAN_FED,
    SAFE,
    ApplyLog,
    PlanFeed,
)
from runtime.protocols import (
    Clock,
    Command,
    ExecutesPlans,
    FloatArray,
    LateCommand,
    Observation,
    Plant,
)
from runtime.stats import IntRing

log = logging.getLogger("hw_bridge")

COUNTER_NAMES = (
    "received",  # frames received
    "bad_message",  # undecodable or ill-typed frames
    "bad_version",  # a protocol version this server does not speak
    "unknown_peer",  # a non-hello message from a peer without a session
    "out_of_order",  # seq not greater than the peer's last (replays, reordering)
    "unauthorized",  # commands or resets from a peer that is not the controller
    "refused",  # hellos refused, any role (busy, bad_version, mismatch)
    "stale_stream",  # commands of a stream latched by a watchdog trip
    "rejected",  # actions never applied: wrong shape, NaN or inf
    "late",  # commands whose deadline passed before they arrived (realtime)
    "applied",  # commands handed to the plant
    "clamped",  # applied commands clamped into the action box
    "rate_limited",  # applied commands slowed by the rate limit
    "watchdog_trips",  # safety events: controller silent for longer than watchdog_ms
    "safe_applied",  # safe actions handed to the plant
    "resets",
    "states_sent",
    "send_dropped",  # outgoing frames dropped at a full queue (slow reader)
    "overruns",  # realtime ticks that started more than one period late
    "apply_errors",  # the plant raised on apply/reset (e.g. apply after the episode ended)
    "plans_limited",  # plans (v2 commands) clamped into the box or slowed by the rate limit
    "flooded",  # frames dropped unread: over their peer's frame or hello budget
    "replies_withheld",  # errors not sent: over the peer's (or all session-less peers') budget
)


def _lag(now: int, t_ns: int) -> int | None:
    """`now` (server clock) minus a client's `t_ns`, or None when that does not fit an int64
    (a client clock, or a hostile `t_ns`, far off): never a value the protocol refuses."""
    lag = now - t_ns
    return lag if -(2**63) <= lag < 2**63 else None


@runtime_checkable
class HasSafeAction(Protocol):
    def safe_action(self, state: FloatArray) -> FloatArray: ...


@dataclass(frozen=True)
class ServerConfig:
    """Plant-side settings; the timing limits are advertised to clients in `welcome.limits`."""

    mode: Literal["lockstep", "realtime"] = "lockstep"
    watchdog_ms: float = 100.0  # realtime: no valid command this long -> safe action
    lease_ms: float = 1000.0  # a controller silent this long loses control
    heartbeat_ms: float = 100.0  # how often clients should send a heartbeat when idle
    peer_timeout_ms: float = 30_000.0  # sessions silent this long are forgotten
    safe_action: Literal["zero", "hold"] = "zero"  # used when the plant has no safe_action()
    max_msg_bytes: int = MAX_MSG_BYTES
    seed: int | None = None  # seed of the plant.reset done when serving starts
    # Flood limits (docs/protocol.md, section 6, "Limits per peer"). A controller at 1 kHz
    # sends ~1,010 frames a second, a client re-sends its hello every 250 ms while connecting.
    frames_per_s: float = 5_000.0  # per peer identity; frames over it are dropped unread
    frames_burst: int = 500
    hellos_per_s: float = 20.0  # per peer identity
    hellos_burst: int = 10
    errors_per_s: float = 200.0  # error replies per peer with a session
    errors_burst: int = 50
    anon_errors_per_s: float = 1_000.0  # error replies to all peers without a session together
    max_observers: int = 32  # observer sessions; control hellos are never refused for room
    max_tracked_peers: int = 4_096  # identities with a budget (the oldest is forgotten)

    def __post_init__(self) -> None:
        if self.mode not in ("lockstep", "realtime"):
            raise ValueError(f"{self.mode=} must be 'lockstep' or 'realtime'")
        for name in ("watchdog_ms", "lease_ms", "heartbeat_ms", "peer_timeout_ms"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}={value!r} must be > 0 ms")
        if self.safe_action not in ("zero", "hold"):
            raise ValueError(f"{self.safe_action=} must be 'zero' or 'hold'")
        for name in ("frames_per_s", "hellos_per_s", "errors_per_s", "anon_errors_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in ("frames_burst", "hellos_burst", "errors_burst", "max_tracked_peers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        if self.max_observers < 0:
            raise ValueError(f"{self.max_observers=} must be >= 0")

    def to_wire(self) -> dict[str, Any]:
        return {
            "watchdog_ms": self.watchdog_ms,
            "lease_ms": self.lease_ms,
            "heartbeat_ms": self.heartbeat_ms,
            "peer_timeout_ms": self.peer_timeout_ms,
            "max_msg_bytes": self.max_msg_bytes,
            "frames_per_s": self.frames_per_s,
            "max_observers": self.max_observers,
        }


@dataclass
class SafetyEvent:
    """A logged safety event. `t_ns` on the server clock; `last_valid_ns` the last valid command."""

    t_ns: int
    kind: str  # "watchdog" | "goodbye" | "takeover"
    detail: str
    last_valid_ns: int
    action: FloatArray = field(default_factory=lambda: np.zeros(0))  # (Da,) safe action applied


@dataclass
class _Peer:
    role: str
    name: str
    last_seq: int
    last_rx_ns: int
    version: int = 1  # the protocol version the session speaks (welcome.version)


class ServerCore:
    """Protocol v1 state machine: bytes in, (identity, bytes) out; no sockets, time injected.

    `handle(ident, payload)` and `tick()` append outgoing frames to `outbox`; the caller sends
    them. `counters` (see COUNTER_NAMES) and `events` record everything refused or done.
    """

    def __init__(self, plant: Plant, config: ServerConfig, *, clock: Clock) -> None:
        self.plant = plant
        self.config = config
        self.clock = clock
        self.spec = plant.spec()
        self.session = int.from_bytes(np.random.default_rng().bytes(6), "little")
        self.counters: Counter[str] = Counter({k: 0 for k in COUNTER_NAMES})
        self.events: list[SafetyEvent] = []
        self.outbox: list[tuple[bytes, bytes]] = []
        self.peers: dict[bytes, _Peer] = {}
        self.controller: bytes | None = None
        self.limiter = ActionLimiter(
            low=self.spec.action_low,
            high=self.spec.action_high,
            max_rate_per_s=self.spec.max_action_rate_per_s,
        )
        self.watchdog = Watchdog(timeout_ns=round(config.watchdog_ms * 1e6))
        self.safe = False  # latched after a trip or goodbye until a fresh stream applies
        self._safe_action: FloatArray | None = None
        self.ack_seq = -1
        # server-clock instant command `ack_seq` was handed to the plant minus its `t_ns`
        # (client clock): the client subtracts its offset estimate to get the one-way
        # send -> plant latency its deadlines must leave room for (docs/protocol.md, `state`)
        self.ack_lag_ns: int | None = None
        self.reset_seq = -1
        self.last_apply_ns: int | None = None
        self.state_seq = 0
        self.last_obs: Observation | None = None
        self.last_publish_ns = 0
        self.keepalive_periods = 10  # an unchanged state is re-sent this often (liveness)
        self.plant_seq = 0  # Command.seq handed to the plant: strictly increasing
        # obs.seq -> (when its state was published, when that state was measured), the newest
        # 64: the start of a state-to-command round trip, and where the age of what the plant
        # applies counts from
        self._states: dict[int, tuple[int, int]] = {}
        # state-to-command round trips (ns): from publishing a state to receiving the command
        # whose obs_seq names it; what `rtdiff bench bridge` reports
        self.reaction_ns = IntRing(1 << 18)
        self._spec_wire = spec_to_wire(self.spec)
        self._lease_ns = round(config.lease_ms * 1e6)
        self._peer_timeout_ns = round(config.peer_timeout_ms * 1e6)
        self._realtime = config.mode == "realtime"
        self._encode = new_encoder()  # this core's own packer: one thread drives a core
        # the last seq of sessions that ended (goodbye, silence), by connection: a replayed
        # hello and command on that connection stay out_of_order
        self._gone_seqs: dict[bytes, int] = {}
        keys = config.max_tracked_peers
        self._frames = Buckets(rate=config.frames_per_s, burst=config.frames_burst, max_keys=keys)
        self._hellos = Buckets(rate=config.hellos_per_s, burst=config.hellos_burst, max_keys=keys)
        self._errors = Buckets(rate=config.errors_per_s, burst=config.errors_burst, max_keys=keys)
        self._anon_errors = Buckets(rate=config.anon_errors_per_s,
                                    burst=max(1, round(config.anon_errors_per_s / 10)), max_keys=1)
        self._action_shape = (self.spec.action_dim,)
        # Plan-ahead (v2): a plant that executes plans itself (`runtime.ExecutesPlans`, e.g.
        # `MujocoPlant` in realtime) gets each command's plan; for any other plant (a `Driver`
        # writes each command on arrival) this core feeds the plan at its own realtime ticks.
        self.feeds_plans = self._realtime and not (
            isinstance(plant, ExecutesPlans) and plant.executes_plans
        )
        sp = self.spec
        self.feed = PlanFeed(sp.action_dim, low=sp.action_low, high=sp.action_high,
                             max_rate_per_s=sp.max_action_rate_per_s,
                             max_age_ns=round(config.watchdog_ms * 1e6))
        self.apply_log = ApplyLog()
        self._fresh_obs_ns: int | None = None  # a command applied since the last tick: its obs
        self._fresh = False
        self._held_obs_ns: int | None = None  # the observation behind the last applied action
        self._commanded = False  # a controller command was applied since the last reset

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.last_obs = self.plant.reset(self.config.seed)
        self._safe_now()  # the rate limit starts from the plant at rest, not from anywhere

    # -- outgoing ----------------------------------------------------------------------------------

    def _send(self, ident: bytes, kind: str, *, v: int | None = None, **fields: Any) -> None:
        """Queue a message for `ident`, in its session's version (v1 without a session)."""
        if v is None:
            peer = self.peers.get(ident)
            v = peer.version if peer is not None else 1
        self.outbox.append(
            (ident, self._encode(message(kind, 0, self.clock.now_ns(), v=v, **fields)))
        )

    def _error(
        self, ident: bytes, code: str, text: str, ref_seq: int | None, *, fatal: bool
    ) -> None:
        now = self.clock.now_ns()
        if ident in self.peers:
            allowed = self._errors.take(ident, now)
        else:  # session-less peers share one budget: fresh identities get no fresh allowance
            allowed = self._anon_errors.take(b"", now)
        if not allowed:
            self.counters["replies_withheld"] += 1
            return
        if len(text) > 200 and len(text.encode()) > MAX_STR_BYTES:  # it may quote a client
            text = text.encode()[: MAX_STR_BYTES - 3].decode(errors="ignore") + "..."
        self._send(ident, "error", code=code, message=text, ref_seq=ref_seq, fatal=fatal)

    def publish(self, obs: Observation | None = None, *, only: bytes | None = None) -> None:
        """Observe (unless given) and send one state message to every session (or to the
        session `only`: a new session's first state, which the others have had)."""
        if obs is None:
            obs = self.plant.observe()
        self.last_obs = obs
        # one clock read: the state's send time (`t_ns`) and the start of its round trip
        self.last_publish_ns = now = self.clock.now_ns()
        states = self._states
        states[obs.seq] = (now, obs.t_ns)
        if len(states) > 64:
            del states[next(iter(states))]
        self.state_seq += 1
        state = {  # a literal, not message(**fields): this runs every tick
                "v": 1,
                "type": "state",
                "seq": self.state_seq,
                "t_ns": now,
                "obs": obs_to_wire(
                    obs.seq,
                    obs.t_ns,
                    obs.state,
                    obs.goal,
                    obs.reward,
                    obs.terminated,
                    obs.truncated,
                    obs.info,
                    obs.stale,
                ),
                "ack_seq": self.ack_seq,
                "ack_lag_ns": self.ack_lag_ns,
                "reset_seq": self.reset_seq,
                "safe": self.safe,
            }
        # the same state in each session's version (one encoding per version in use)
        payloads: dict[int, bytes] = {}
        outbox = self.outbox
        peers = self.peers if only is None else {only: self.peers[only]}
        for ident, peer in peers.items():
            payload = payloads.get(peer.version)
            if payload is None:
                state["v"] = peer.version
                payload = payloads[peer.version] = self._encode(state)
            outbox.append((ident, payload))
        self.counters["states_sent"] += len(peers)

    def all_counters(self) -> dict[str, int]:
        """Server counters plus the plant's own, the latter prefixed `plant_`."""
        out = {k: int(v) for k, v in self.counters.items()}
        if self.feeds_plans:
            out.update(self.apply_log.counters())
            out.update(self.feed.counts)
        for k, v in self.plant.counters().items():
            out[f"plant_{k}"] = int(v)
        return out

    # -- incoming ----------------------------------------------------------------------------------

    def handle(self, ident: bytes, payload: bytes) -> None:
        now = self.clock.now_ns()
        self.counters["received"] += 1
        if not self._frames.take(ident, now):
            self.counters["flooded"] += 1
            return
        raw: Any = None
        try:
            raw = unpack(payload, max_bytes=self.config.max_msg_bytes)
            msg = check_message(raw)
        except ProtocolError as exc:
            self._refuse_frame(ident, exc, raw)
            return
        kind = msg["type"]
        if kind == "hello":
            if not self._hellos.take(ident, now):
                self.counters["flooded"] += 1
                return
            self._hello(ident, msg, now)
            return
        peer = self.peers.get(ident)
        if peer is None:
            self.counters["unknown_peer"] += 1
            self._error(ident, "unknown_peer", "no session: send hello", msg["seq"], fatal=False)
            return
        seq: int = msg["seq"]
        if msg["v"] != peer.version:
            self.counters["bad_version"] += 1
            self._error(
                ident, "bad_version", f"session speaks v{peer.version}", seq, fatal=False
            )
            return
        if seq <= peer.last_seq:
            self.counters["out_of_order"] += 1
            self._error(
                ident, "out_of_order", f"seq {seq} <= last {peer.last_seq}", seq, fatal=False
            )
            return
        if kind == "command":
            if ident != self.controller:
                self.counters["unauthorized"] += 1
                self._error(ident, "not_controller", "this session only observes", seq, fatal=False)
                return
            peer.last_seq, peer.last_rx_ns = seq, now
            self._command(ident, msg, now)
        elif kind == "heartbeat":
            peer.last_seq, peer.last_rx_ns = seq, now
            self._send(
                ident,
                "heartbeat",
                echo_seq=seq,
                echo_t_ns=msg["t_ns"],
                rx_t_ns=now,
                counters=self.all_counters(),
                safe=self.safe,
            )
        elif kind == "reset":
            if ident != self.controller:
                self.counters["unauthorized"] += 1
                self._error(ident, "not_controller", "only the controller resets", seq, fatal=False)
                return
            peer.last_seq, peer.last_rx_ns = seq, now
            self.counters["resets"] += 1
            try:
                obs = self.plant.reset(msg.get("seed"))
            except Exception as exc:  # the plant's own refusal goes back to the client
                self.counters["apply_errors"] += 1
                self._error(ident, "plant_error", f"reset: {exc}", seq, fatal=False)
                return
            self.last_obs = obs
            self.limiter.reset()
            self._safe_now()
            self.last_apply_ns = None
            self.feed.clear()
            self._fresh, self._commanded, self._held_obs_ns = False, False, None
            self.reset_seq = seq
            self.publish(obs)
        elif kind == "goodbye":
            self._drop(ident, now, reason=str(msg.get("reason", "")))
        else:
            self.counters["bad_message"] += 1
            self._error(ident, "bad_message", f"a client does not send {kind!r}", seq, fatal=False)

    def _refuse_frame(self, ident: bytes, exc: ProtocolError, raw: Any) -> None:
        """A frame that failed decoding: counted and answered, naming its `seq` whenever the
        frame was a map with a valid one. A hello refused for its version is fatal (its session
        does not open) and counts as a refused hello."""
        self.counters[exc.code] += 1
        ref: int | None = None
        hello = False
        if type(raw) is dict:
            seq = raw.get("seq")
            if type(seq) is int and 0 <= seq < 2**63:
                ref = seq
            hello = raw.get("type") == "hello"
        fatal = hello and exc.code == "bad_version"
        if fatal:
            self.counters["refused"] += 1
        self._error(ident, exc.code, str(exc), ref, fatal=fatal)

    def refuse_multipart(self, ident: bytes) -> None:
        """A client frame of more than one part (a DEALER sends exactly one): counted and
        answered like any other malformed frame."""
        self.counters["received"] += 1
        if not self._frames.take(ident, self.clock.now_ns()):
            self.counters["flooded"] += 1
            return
        self.counters["bad_message"] += 1
        self._error(ident, "bad_message", "a message is exactly one frame", None, fatal=False)

    def _hello(self, ident: bytes, msg: dict[str, Any], now: int) -> None:
        seq: int = msg["seq"]
        peer = self.peers.get(ident)
        last = peer.last_seq if peer is not None else self._gone_seqs.get(ident)
        if last is not None and seq <= last:
            # a replayed or duplicated hello of a live session: reopening the session would
            # restart its seq window and let replayed commands through
            self.counters["out_of_order"] += 1
            self._error(ident, "out_of_order", f"seq {seq} <= last {last}", seq, fatal=False)
            return
        common = set(msg["versions"]) & set(SUPPORTED_VERSIONS)
        if not common:
            self.counters["bad_version"] += 1
            self.counters["refused"] += 1
            self._error(
                ident,
                "bad_version",
                f"server speaks {list(SUPPORTED_VERSIONS)}, client offered {msg['versions']}",
                seq,
                fatal=True,
            )
            return
        expect = msg.get("expect") or {}
        wanted = {
            k: expect[k] for k in ("name", "state_dim", "action_dim", "rate_hz") if k in expect
        }
        have = {k: self._spec_wire[k] for k in wanted}
        if wanted != have:
            self.counters["refused"] += 1
            self._error(
                ident, "mismatch", f"client expects {wanted}, plant is {have}", seq, fatal=True
            )
            return
        role: str = msg["role"]
        name = str(msg.get("name", ""))
        if role == "control":
            self._expire_lease(now)
            current = self.controller
            if current is not None and current != ident:
                if not msg.get("takeover", False):
                    self.counters["refused"] += 1
                    holder = self.peers[current].name if current in self.peers else "?"
                    self._error(
                        ident,
                        "busy",
                        f"plant is controlled by {holder!r}; retry when its lease "
                        f"({self.config.lease_ms:g} ms) lapses, or send takeover=true",
                        seq,
                        fatal=False,
                    )
                    return
                self._error(
                    current, "taken_over", f"control taken over by {name!r}", None, fatal=False
                )
                if current in self.peers:
                    self.peers[current].role = "observe"
                self._event(now, "takeover", f"control taken over by {name!r}")
            if current != ident:
                self.watchdog.disarm()
            # A hello opens a session whose sequence numbers start afresh: the acks and reset
            # acks of an earlier session (even one from the same identity) must not answer it.
            self.ack_seq = -1
            self.ack_lag_ns = None
            self.reset_seq = -1
            self.controller = ident
        else:
            if self.controller == ident:
                self.controller = None
            elif ident not in self.peers and self._observers() >= self.config.max_observers:
                self.counters["refused"] += 1
                self._error(ident, "busy", f"no room: {self.config.max_observers} observers "
                            "already (retry later)", seq, fatal=False)
                return
        version = max(common)
        self.peers[ident] = _Peer(
            role=role, name=name, last_seq=seq, last_rx_ns=now, version=version
        )
        self._send(
            ident,
            "welcome",
            version=version,
            session=self.session,
            role=role,
            mode=self.config.mode,
            spec=self._spec_wire,
            limits=self.config.to_wire(),
            echo_t_ns=msg["t_ns"],
            rx_t_ns=now,
        )
        log.info("hw_bridge: %s %r joined (%d sessions)", role, name, len(self.peers))
        if self.last_obs is not None:  # a first state at once, so the client never waits a tick
            self.publish(self.last_obs, only=ident)

    def _command(self, ident: bytes, msg: dict[str, Any], now: int) -> None:
        seq: int = msg["seq"]
        stream: int = msg["stream"]
        state = self._states.get(msg["obs_seq"])
        if state is not None:  # state out -> command (computed from it) in, on our clock
            self.reaction_ns.append(now - state[0])
        if not self.watchdog.accepts(stream):
            self.counters["stale_stream"] += 1
            self._error(
                ident,
                "stream_tripped",
                f"stream {stream} was stopped; start a fresh one",
                seq,
                fatal=False,
            )
            return
        deadline = msg["deadline_ns"]
        if self._realtime and deadline is not None and now > deadline:
            self.counters["late"] += 1
            self._send(ident, "error", code="late", ref_seq=seq, fatal=False,
                       message=f"arrived {(now - deadline) / 1e6:.3f} ms late",
                       lag_ns=_lag(now, msg["t_ns"]))
            return
        plan_wire = msg.get("plan") if self._realtime and self.peers[ident].version >= 2 else None
        plan: FloatArray | None = None
        last_before = self.limiter.last
        try:
            action = decode_array(msg["action"], field="command.action", shape=self._action_shape)
            if plan_wire is not None:
                plan, plan_dt = self._plan(plan_wire, msg, action)
            if self._realtime and self.last_apply_ns is not None:
                dt_s = (now - self.last_apply_ns) * 1e-9
            else:
                dt_s = self.spec.period_s
            res = self.limiter.limit(action, dt_s=dt_s)
            if plan is not None:
                lim = self.limiter.limit_plan(plan, first=res.action, dt_s=plan_dt * 1e-9)
                plan = lim.action
                self.counters["plans_limited"] += lim.clamped or lim.rate_limited
        except (ProtocolError, ActionRejected) as exc:
            self.limiter.last = last_before  # nothing of a rejected command counts as applied
            self.counters["rejected"] += 1
            self._error(ident, "rejected", str(exc), seq, fatal=False)
            return
        if res.clamped:
            self.counters["clamped"] += 1
        if res.rate_limited:
            self.counters["rate_limited"] += 1
        self.plant_seq += 1
        # the plant's own stamp of the state the command was computed from (the age of what
        # it applies counts from there), whatever the client claims
        obs_t = state[1] if state is not None else None
        cmd = Command(
            seq=self.plant_seq,  # the server's order, so a restarted controller is not "stale"
            t_ns=now,
            action=res.action,
            deadline_ns=deadline if deadline is not None else now + self.spec.period_ns,
            fallback=str(msg.get("fallback", "")),
            plan=plan,
            plan_t0_ns=msg.get("plan_t0_ns", 0) if plan is not None else 0,
            plan_dt_ns=msg.get("plan_dt_ns", 0) if plan is not None else 0,
            obs_t_ns=obs_t,
            src_seq=seq,
        )
        try:
            self.plant.apply(cmd)
        except LateCommand:  # late by the plant's own clock: a miss, as on arrival
            self.limiter.last = last_before
            arrived = self.clock.now_ns()
            self.counters["late"] += 1
            self._send(ident, "error", code="late", ref_seq=seq, fatal=False,
                       message="reached the plant after its deadline",
                       lag_ns=_lag(arrived, msg["t_ns"]))
            return
        except Exception as exc:  # e.g. a sim refusing apply after its episode ended
            self.limiter.last = last_before
            self.counters["apply_errors"] += 1
            self._error(ident, "plant_error", f"apply: {exc}", seq, fatal=False)
            return
        # after apply returned: the wait for the plant's lock (it may be mid-tick) counts
        self.ack_lag_ns = _lag(self.clock.now_ns(), msg["t_ns"])
        self.counters["applied"] += 1
        self.last_apply_ns = now
        if self.safe:
            log.warning("hw_bridge: control resumed on fresh command stream %d", stream)
        self.safe = False
        self.watchdog.feed(stream=stream, now_ns=now)
        if self.feeds_plans:
            self.feed.accept(cmd)
            self._fresh, self._commanded, self._held_obs_ns = True, True, obs_t
        self.ack_seq = seq
        if not self._realtime:
            self.publish()

    def _plan(
        self, wire: Any, msg: dict[str, Any], action: FloatArray
    ) -> tuple[FloatArray, int]:
        """A v2 command's plan, decoded and checked: (N, Da) with 1 <= N <= MAX_PLAN_TICKS,
        a positive spacing, rows for ticks after the command's own. Raises ActionRejected."""
        plan = decode_array(wire, field="command.plan")
        da = self.spec.action_dim
        if plan.ndim != 2 or plan.shape[1] != da or not 1 <= plan.shape[0] <= MAX_PLAN_TICKS:
            raise ActionRejected(
                f"plan shape {plan.shape}, expected (N, {da}) with 1 <= N <= {MAX_PLAN_TICKS}"
            )
        dt = msg.get("plan_dt_ns", 0)
        if not 0 < dt <= 1_000_000_000:
            raise ActionRejected(f"plan_dt_ns {dt} must be in (0, 1e9]")
        deadline = msg["deadline_ns"]
        if deadline is not None and msg.get("plan_t0_ns", 0) <= deadline:
            raise ActionRejected("a plan's first row must be for a tick after the command's")
        return plan, int(dt)

    def _observers(self) -> int:
        return sum(1 for p in self.peers.values() if p.role == "observe")

    def _drop(self, ident: bytes, now: int, *, reason: str) -> None:
        peer = self.peers.pop(ident, None)
        if peer is not None:  # a connection's seq order outlives its session (bounded table)
            gone = self._gone_seqs
            gone[ident] = peer.last_seq
            if len(gone) > self.config.max_tracked_peers:
                del gone[next(iter(gone))]
        if ident == self.controller:
            self.controller = None
            went_safe = self.watchdog.armed and self._realtime
            if went_safe:
                self._go_safe(now, "goodbye", f"controller left ({reason or 'goodbye'})")
            self.watchdog.disarm()
            if went_safe and self.peers:  # the observers learn `safe` at once
                self.publish()

    def _expire_lease(self, now: int) -> None:
        ctl = self.controller
        if ctl is not None and now - self.peers[ctl].last_rx_ns > self._lease_ns:
            log.warning("hw_bridge: controller %r lost its lease", self.peers[ctl].name)
            self.peers[ctl].role = "observe"
            self.controller = None

    # -- time ----------------------------------------------------------------------------------

    def _event(self, now: int, kind: str, detail: str, action: FloatArray | None = None) -> None:
        ev = SafetyEvent(now, kind, detail, self.watchdog.last_valid_ns)
        if action is not None:
            ev.action = action
        self.events.append(ev)
        log.warning("hw_bridge: safety event %s: %s", kind, detail)

    def _safe_now(self) -> FloatArray:
        raw: FloatArray
        if isinstance(self.plant, HasSafeAction):
            state = (
                self.last_obs.state if self.last_obs is not None else np.zeros(self.spec.state_dim)
            )
            raw = np.asarray(self.plant.safe_action(state), dtype=np.float64)
        elif self.config.safe_action == "hold" and self.limiter.last is not None:
            raw = self.limiter.last
        else:
            raw = np.zeros(self.spec.action_dim)
        return self.limiter.safe(raw)

    def _apply_safe(self, now: int) -> None:
        action = self._safe_action if self._safe_action is not None else self._safe_now()
        self.plant_seq += 1
        cmd = Command(
            seq=self.plant_seq,
            t_ns=now,
            action=action,
            deadline_ns=now + 2 * self.spec.period_ns,
            fallback="watchdog",
        )
        try:
            self.plant.apply(cmd)
        except Exception as exc:
            self.counters["apply_errors"] += 1
            log.error("hw_bridge: the plant refused its safe action: %s", exc)
            return
        self.counters["safe_applied"] += 1

    def _go_safe(self, now: int, kind: str, detail: str) -> None:
        self.feed.clear()  # the plan of a controller that went silent is never executed
        self.safe = True
        self._safe_action = None
        self._safe_action = self._safe_now()
        self._apply_safe(now)
        self._event(now, kind, detail, self._safe_action)

    def check_watchdog(self, now: int, *, publish: bool = True) -> bool:
        """Trip the watchdog if its time is up: the safe action goes to the plant and (with
        `publish`) a `safe` state to every session. The server calls this at the watchdog's
        own due instant (`watchdog.due_ns`), not only at its ticks, so the safe action comes
        within `watchdog_ms` plus its wake-up latency."""
        if not self.watchdog.check(now_ns=now):
            return False
        self.counters["watchdog_trips"] += 1
        silent_ms = (now - self.watchdog.last_valid_ns) / 1e6
        self._go_safe(now, "watchdog", f"no valid command for {silent_ms:.1f} ms")
        if publish:
            self.publish()
        return True

    def tick(self) -> bool:
        """Realtime: watchdog, leases, and publish the state if the plant has a new one (or
        nothing went out for `keepalive_periods`). Returns whether a state was published.

        The safe action is applied once, at the trip: plants hold their last command (a
        `Driver`'s hardware does; `MujocoPlant` counts the held ticks)."""
        now = self.clock.now_ns()
        tripped = self.check_watchdog(now, publish=False)
        if self.feeds_plans:
            self._feed_tick(now)
        self.housekeeping(now)
        obs = self.plant.observe()
        last = self.last_obs
        if (  # a trip is published at once: every session learns `safe` this tick
            not tripped
            and last is not None
            and obs.seq == last.seq
            and now - self.last_publish_ns < self.keepalive_periods * self.spec.period_ns
        ):
            return False
        self.publish(obs)
        return True

    def _feed_tick(self, now: int) -> None:
        """A plant without ticks of its own (a `Driver`): this realtime tick stands for its
        tick. A command applied since the last tick was `fresh`; else the newest plan's
        action for now goes to the plant (`plan_fed`, limited like a command); else the
        hardware holds the last write (`fallback`), or the safe action (`safe`)."""
        log = self.apply_log
        if self._fresh:
            self._fresh = False
            log.record(FRESH, None if self._held_obs_ns is None else now - self._held_obs_ns)
            return
        if self.safe:
            log.record(SAFE, None)
            return
        if not self._commanded:
            log.record(DRY, None)
            return
        last = self.limiter.last
        planned = (
            self.feed.action_for(now, last, self.spec.period_s) if last is not None else None
        )
        if planned is not None:
            res = self.limiter.limit(planned.copy(), dt_s=self.spec.period_s)
            self.plant_seq += 1
            try:
                self.plant.apply(Command(self.plant_seq, now, res.action,
                                         now + self.spec.period_ns, "plan",
                                         obs_t_ns=self.feed.obs_t_ns))
            except Exception as exc:
                self.counters["apply_errors"] += 1
                log.record(FALLBACK, None)
                self.feed.clear()
                self._error_log(exc)
                return
            self._held_obs_ns = self.feed.obs_t_ns
            log.record(PLAN_FED, now - self.feed.obs_t_ns)
            return
        log.record(FALLBACK, None if self._held_obs_ns is None else now - self._held_obs_ns)

    @staticmethod
    def _error_log(exc: Exception) -> None:
        log.error("hw_bridge: the plant refused a planned action: %s", exc)

    def housekeeping(self, now: int) -> None:
        self._expire_lease(now)
        for ident in [
            i for i, p in self.peers.items() if now - p.last_rx_ns > self._peer_timeout_ns
        ]:
            log.info("hw_bridge: forgot silent session %r", self.peers[ident].name)
            self._drop(ident, now, reason="silent")
