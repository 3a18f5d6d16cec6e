"""`RemotePlant`: a `runtime.Plant` on the far side of the bridge (docs/protocol.md, protocol
versions 1 and 2).

Single-threaded by design: the control loop owns the socket and every call does a bounded
amount of work, so a tick never waits on a background thread or a lock. Each call first drains
the socket (newest state wins; older ones are counted and dropped), sends a heartbeat when one
is due, and watches the link:

- a heartbeat unanswered for `timeout_s` -> the link is declared lost (logged), a fresh socket
  is opened and `hello` is re-sent every 250 ms without blocking the caller; until a `welcome`
  arrives, `observe` returns the last state flagged `stale` and `apply` drops (and counts)
  commands. A welcome with a new session id means the server restarted; both cases are logged
  on the `hw_bridge` logger (which reaches stderr even when logging is not configured).
- an `unknown_peer` error (the server restarted and libzmq reconnected underneath us) or a
  server `goodbye` triggers the same re-handshake at once.
- a `stream_tripped` error (the plant's watchdog stopped us) makes the next command start a
  fresh stream, as the plant requires, and says so in the log.

Clock offset: the NTP four-timestamp estimate from the hello/welcome exchange and from every
heartbeat; the sample with the smallest round trip among the last 256 (about 25 s) wins.
Timestamps on the wire are each sender's own monotonic clock; `RemotePlant` maps state times
to its clock and command deadlines (and, in v2, plan times) to the server's.

Lockstep (the server says so in `welcome.mode`): `apply` waits for the state that acknowledges
the command (the plant stepped), as the `Plant` protocol asks. Realtime: `apply` only sends;
`observe` never blocks; `next_observation` waits for a newer state.

The code: three objects on one thread, each with a public interface, composed here.
`RemotePlant` owns one `Session` (hw_bridge/link.py: the socket, handshake and version,
heartbeats and clock offset, loss and reconnection, the outgoing messages) and one
`StateReceiver` (hw_bridge/receive.py: reading and checking frames, the newest state, stale
copies, acknowledgements, errors routed by type, the waits); it shares one counter with both
and keeps the `runtime.Plant` calls: `reset`, `observe`, `next_observation`, `apply`,
`counters`, `apply_counters`, `transport_margin_ns`, `kept_alive`, `close`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hw_bridge.clocksync import ClockSync
from hw_bridge.link import CLIENT_COUNTERS, BridgeError, Session
from hw_bridge.linklatency import LinkLatency
from hw_bridge.receive import StateReceiver
from runtime.planfeed import APPLY_KEYS
from runtime.protocols import Clock, Command, Observation, PlantSpec

__all__ = ["CLIENT_COUNTERS", "BridgeError", "RemotePlant"]

_HANDSHAKE_SLICE_NS = 50_000_000  # a wait for the welcome re-checks (and re-hellos) this often
RESET_RETRY_NS = 250_000_000  # a reset with no answer yet is sent again this often


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

    Its parts are `session` (a `Session`) and `receiver` (a `StateReceiver`); the attributes
    below (`mode`, `version`, `sync`, `latency`, `server_counters`, ...) read through to them.
    `counts` is this end's counters (`CLIENT_COUNTERS`), which all three add to.
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
        give_up_s: float | None = 10.0,
    ) -> None:
        if not (timeout_s > 0 and connect_timeout_s > 0):
            raise ValueError(f"{timeout_s=} and {connect_timeout_s=} must be > 0")
        if give_up_s is not None and not give_up_s > 0:
            raise ValueError(f"{give_up_s=} must be > 0 (or None: never give up)")
        # a link lost this long ends the run (BridgeError) instead of waiting forever
        self._give_up_ns = None if give_up_s is None else round(give_up_s * 1e9)
        self.counts: Counter[str] = Counter({k: 0 for k in CLIENT_COUNTERS})
        self.session = Session(
            address,
            counts=self.counts,
            clock=clock,
            timeout_s=timeout_s,
            keys_dir=keys_dir,
            role=role,
            takeover=takeover,
            expect=expect,
            name=name,
            auto_resume=auto_resume,
            client_key=client_key,
        )
        self.receiver = StateReceiver(self.session, self.counts)
        self._pending_cmd = -1  # lockstep: seq of the command whose step we wait for
        try:  # the first handshake; raises BridgeError
            self.session.open()
            self._wait_connected(round(connect_timeout_s * 1e9))
        except BaseException:
            self.session.abort()
            raise

    # -- what the parts hold -----------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.session.address

    @property
    def clock(self) -> Clock:
        return self.session.clock

    @property
    def timeout_ns(self) -> int:
        return self.session.timeout_ns

    @property
    def role(self) -> str:
        """'control' or 'observe', as asked for."""
        return self.session.role

    @property
    def takeover(self) -> bool:
        return self.session.takeover

    @property
    def expect(self) -> dict[str, Any] | None:
        return self.session.expect

    @property
    def name(self) -> str:
        return self.session.name

    @property
    def auto_resume(self) -> bool:
        return self.session.auto_resume

    @property
    def client_key(self) -> str:
        return self.session.client_key

    @property
    def keys_dir(self) -> Path | None:
        return self.session.keys_dir

    @property
    def mode(self) -> str:
        """'lockstep' or 'realtime', from the server's welcome."""
        return self.session.mode

    @property
    def version(self) -> int:
        """The protocol version the server chose (welcome.version)."""
        return self.session.version

    @property
    def limits(self) -> dict[str, Any]:
        """The server's limits, from its welcome."""
        return self.session.limits

    @property
    def sync(self) -> ClockSync:
        """The clock-offset estimate (server clock - this clock)."""
        return self.session.sync

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def latency(self) -> LinkLatency:
        """Measured send-to-plant latencies of commands (realtime)."""
        return self.receiver.latency

    @property
    def server_counters(self) -> dict[str, int]:
        """The plant side's counters, from the last heartbeat reply."""
        return self.receiver.server_counters

    @property
    def last_state_rx_ns(self) -> int:
        """When the newest state's frame arrived (this clock)."""
        return self.receiver.last_state_rx_ns

    @property
    def safe(self) -> bool:
        """The plant reports its safe action latched (watchdog or goodbye)."""
        return self.receiver.safe

    def spec(self) -> PlantSpec:
        """The plant's layout, from the welcome."""
        spec = self.session.spec
        if spec is None:  # cannot happen after __init__
            raise BridgeError(f"{self.session.address}: no handshake")
        return spec

    # -- the Plant protocol ------------------------------------------------------------------

    @property
    def executes_plans(self) -> bool:
        """`runtime.ExecutesPlans`: a realtime v2 session carries each command's plan to the
        plant side, which applies it on ticks the controller's command misses."""
        return self.session.mode == "realtime" and self.session.version >= 2

    def apply_counters(self) -> dict[str, int]:
        """What the plant side applied, by source, and the action-age histogram
        (`runtime.planfeed`), from the server's latest counters."""
        sc = self.receiver.server_counters
        return {k: sc.get(f"plant_{k}", 0) + sc.get(k, 0) for k in APPLY_KEYS}

    def reset(self, seed: int | None = None) -> Observation:
        session, receiver = self.session, self.receiver
        if session.role != "control":
            raise BridgeError("an observer cannot reset the plant")
        for attempt in range(2):  # once more if the server had forgotten our session
            if not session.connected:
                self._wait_connected(session.timeout_ns)
            # a reset lost on the way (or its answer) is sent again every RESET_RETRY_NS, each
            # copy with a new seq; the first answer to any copy ends the wait (a plant reset
            # twice starts the same kind of episode)
            sent = [session.send("reset", seed=seed)]
            left = session.timeout_ns

            def answered(sent: list[int] = sent) -> bool:
                return any(receiver.reset_done(s) for s in sent)

            while not receiver.wait(answered, min(left, RESET_RETRY_NS)):
                left -= RESET_RETRY_NS
                if left <= 0:
                    self.counts["timeouts"] += 1
                    raise BridgeError(f"{session.address}: no reply to reset within the timeout")
                self.counts["resets_resent"] += 1
                sent.append(session.send("reset", seed=seed))
            if receiver.reset_applied(sent[0]):
                return receiver.take()
            code = next(c for s in sent if (c := receiver.refusal(s)) is not None)
            if code not in ("unknown_peer", "not_controller") or attempt == 1:
                break
        raise BridgeError(f"{session.address}: reset refused: {code}")

    def observe(self) -> Observation:
        """The newest state; `stale=True` when nothing newer arrived since the last call (the
        state is then the last one received, never invented). Raises BridgeError only when no
        state has ever arrived."""
        receiver = self.receiver
        receiver.pump()
        if self._pending_cmd >= 0:
            self._wait_step()
        if receiver.latest is None:
            receiver.wait(lambda: receiver.latest is not None, self.session.timeout_ns)
        self._check_given_up()
        return receiver.take()

    def next_observation(self, timeout_s: float) -> Observation:
        """Wait up to `timeout_s` for a state newer than the last one returned."""
        receiver = self.receiver
        receiver.wait_new(round(timeout_s * 1e9))
        self._check_given_up()
        return receiver.take()

    def _check_given_up(self) -> None:
        """BridgeError once the link has been lost for longer than `give_up_s`: observations
        would only be stale copies from then on, and a run waiting for an episode to end
        would wait forever."""
        since, limit = self.session.lost_since_ns, self._give_up_ns
        if since is not None and limit is not None and self.clock.now_ns() - since > limit:
            raise BridgeError(
                f"lost the link to {self.session.address} for more than {limit / 1e9:g} s"
            )

    def apply(self, cmd: Command) -> None:
        """Send `cmd` (deadline mapped to the server's clock). Lockstep: return once the plant
        stepped (or refused), at most `timeout_s`. The action must be (Da,) finite; the plant
        enforces its limits and counts what it clamps or rejects. Realtime: does not read the
        socket (the `observe` before it just did), so the command leaves at once."""
        session = self.session
        if session.mode == "realtime":  # the per-tick path: send, or count the drop
            latest = self.receiver.latest
            if not (
                session.connected
                and session.role == "control"
                and session.send_command(cmd, latest.seq if latest is not None else -1) >= 0
            ):
                self.counts["dropped"] += 1
            return
        lockstep = session.mode == "lockstep"
        for attempt in range(2 if lockstep else 1):
            if lockstep and not session.connected:
                try:  # lockstep blocks anyway: wait (bounded) for the link to come back
                    self._wait_connected(session.timeout_ns)
                except BridgeError:
                    break
            if not session.connected or session.role != "control":
                break
            latest = self.receiver.latest
            seq = session.send_command(cmd, latest.seq if latest is not None else -1)
            if seq < 0:
                break
            if not lockstep:
                return
            self._pending_cmd = seq
            self._wait_step()
            if self.receiver.refusal(seq) not in ("unknown_peer", "not_controller") or attempt:
                return
            # the server restarted or forgot us, or our lease lapsed: the step did not happen;
            # handshake again and resend once
        self.counts["dropped"] += 1

    def _wait_step(self) -> None:
        seq = self._pending_cmd
        receiver = self.receiver
        ok = receiver.wait(lambda: receiver.acked(seq), self.session.timeout_ns)
        self._pending_cmd = -1
        if not ok:
            self.counts["timeouts"] += 1

    def _wait_connected(self, timeout_ns: int) -> None:
        """Pump until the session is open; BridgeError when it is refused or `timeout_ns`
        runs out (with the server's `busy` text when it gave one)."""
        session, clock = self.session, self.session.clock
        end = clock.now_ns() + timeout_ns
        while not session.connected:
            if session.fatal is not None:
                raise BridgeError(f"{session.address}: {session.fatal}")
            left = end - clock.now_ns()
            if left <= 0:
                why = (
                    session.busy
                    or "no answer (is `rtdiff serve` running there, with matching keys?)"
                )
                raise BridgeError(f"{session.address}: handshake failed: {why}")
            self.receiver.pump(min(left, _HANDSHAKE_SLICE_NS))
            session.retry_hello(clock.now_ns())

    @contextlib.contextmanager
    def kept_alive(self, interval_s: float = 0.1) -> Iterator[None]:
        """Keep the session (and the control lease) alive while the caller does slow set-up
        work without touching this plant, e.g. loading and tracing a model: a thread handles
        the link (heartbeats, states) every `interval_s` until the block ends. Without it a
        controller silent for the server's lease (1 s) loses control and has to ask again
        before its first command (`not_controller`, logged as a warning)."""
        stop = threading.Event()
        receiver = self.receiver

        def pump() -> None:
            while not stop.wait(interval_s):
                receiver.pump(0)

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
        return self.receiver.latency.margin_ns() if self.session.mode == "realtime" else None

    def counters(self) -> dict[str, int]:
        """Summary keys (what the plant side saw): `applied` (controller commands handed to the
        plant), `late` (the plant's own late count + commands the server got after their
        deadline), `rejected`, `clamped`, `watchdog_trips`; then every detail: `plant_*` (the
        plant's own counters), `server_*` (the bridge server's), `client_*` (this end's).
        Asks the server (one heartbeat, at most `timeout_s`); if it cannot answer, the last
        known server figures are used."""
        session, receiver = self.session, self.receiver
        if session.connected:
            seq = session.heartbeat(session.clock.now_ns())
            if not receiver.wait(lambda: session.heartbeat_answered(seq), session.timeout_ns):
                self.counts["timeouts"] += 1
        sc = receiver.server_counters
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
        """Say goodbye (when connected) and free the socket and its context."""
        self.session.close()

    def __enter__(self) -> RemotePlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
