"""`FaultProxy`: link faults between a controller and a plant server, one message at a time.

The proxy sits where the link would be. Its front is a ROUTER that a controller's DEALER
connects to as if it were the plant server; for each client identity it opens a DEALER of its
own to the real server, so every client keeps a session of its own there. Each frame then
passes the faults of its direction (`up`: controller -> plant, `down`: plant -> controller;
a `LinkFaults` each) before it is sent on:

- a **partition** (a window of time) drops every frame, at arrival and at delivery (frames in
  flight when the link is cut are lost with it), then heals;
- **loss** drops a frame with probability `loss`;
- **delay** holds a frame `delay_ms` +- `jitter_ms` (uniform); frames of one direction keep
  their order (a slower link, not a reordering one: each leaves no earlier than the one
  before it);
- **reorder** holds a frame `reorder_ms` longer, out of that order, so frames sent after it
  may overtake it;
- **duplicate** delivers a second copy right after the original;
- **bandwidth** sends at most `bandwidth_bps` through a token bucket (`burst_bytes` deep);
  the backlog queues up to `queue_frames` frames and the frames beyond are dropped.

Why message level, not packets: the bridge runs over TCP (or IPC), a byte stream. Dropping or
reordering bytes under ZeroMQ would corrupt the stream (libzmq drops the connection) rather
than model a lost message; a kernel `netem` qdisc on TCP only ever delays, because TCP
retransmits. One ZeroMQ frame is one protocol message (docs/protocol.md, section 1): the
datagram of this protocol, and the unit the plant's rules (sequence numbers, deadlines, the
watchdog) are written against.

Every random choice comes from one seeded `numpy.random.Generator` per direction, and each
frame takes the same four draws whatever happens to it, so the n-th frame of a direction meets
the same fate in every run with the same seed (times, and so which frames a partition catches,
depend on the scheduler). Delivery runs on one thread: it owns every socket, keeps the frames
of each direction in a time-ordered heap, and sleeps in `select` until the next frame is due
or one arrives. Counts per direction (`counters()`): `FAULT_COUNTERS`. `added_latency_us()`
is the proxy's own cost: how much later than due it sent each frame.

Example:
    with FaultProxy(server.address, up=LinkFaults(loss=0.05), seed=1) as proxy:
        plant = RemotePlant(proxy.address)
        proxy.partition(0.3, start_in_s=1.0)   # both ways, one second from now
        ...
        proxy.counters()["up"]["dropped"]
"""

from __future__ import annotations

import heapq
import math
import select
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zmq

from runtime.clock import MonotonicClock
from runtime.protocols import Clock
from runtime.stats import percentiles

__all__ = ["FAULT_COUNTERS", "FaultLine", "FaultProxy", "LinkFaults"]

FAULT_COUNTERS = (
    "received",  # frames that reached the proxy in this direction
    "forwarded",  # frames sent on (duplicates included)
    "dropped",  # frames lost at random (`loss`)
    "duplicated",  # frames sent twice
    "reordered",  # frames held `reorder_ms` out of order
    "delayed",  # frames held before they were sent (delay, jitter, order kept, reorder)
    "partition_dropped",  # frames dropped while the link was partitioned
    "queued",  # frames that waited for the bandwidth limit
    "queue_dropped",  # frames dropped at a full bandwidth queue
    "send_dropped",  # frames the next socket would not take (full, peer gone)
    "bytes",  # payload bytes forwarded
)

_POLLIN, _NOBLOCK = int(zmq.POLLIN), int(zmq.NOBLOCK)
_MAX_WAIT_S = 0.02  # the I/O thread looks at its stop flag at least this often
_HWM = 1000  # the proxy's own sockets: large, so that its queues are never what drops


@dataclass(frozen=True)
class LinkFaults:
    """The faults of one direction of the link; the defaults are a perfect link.

    `partitions`: (start_s, length_s) windows, from the proxy's start, during which this
    direction drops everything (`FaultProxy.partition` cuts both directions at once).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 3.0
    bandwidth_bps: float | None = None
    burst_bytes: int = 1500
    queue_frames: int = 64
    partitions: Sequence[tuple[float, float]] = ()

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "reorder_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        for name in ("loss", "duplicate", "reorder"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r} must be a probability in [0, 1]")
        if self.bandwidth_bps is not None and not (
            math.isfinite(self.bandwidth_bps) and self.bandwidth_bps > 0
        ):
            raise ValueError(f"bandwidth_bps={self.bandwidth_bps!r} must be > 0 (or None)")
        if self.burst_bytes < 1 or self.queue_frames < 1:
            raise ValueError(f"{self.burst_bytes=} and {self.queue_frames=} must be >= 1")
        windows = tuple((float(s), float(n)) for s, n in self.partitions)
        if any(not (s >= 0 and n > 0) for s, n in windows):
            raise ValueError(f"partitions={windows!r}: each is (start_s >= 0, length_s > 0)")
        object.__setattr__(self, "partitions", windows)


Frames = list[bytes]


class FaultLine:
    """One direction of the link, without sockets: frames in (`offer`), frames out when due
    (`pop_due`); time is passed in (ns), so the fault logic runs on any clock.

    `route` travels with each frame unchanged (the proxy's client identity)."""

    def __init__(self, faults: LinkFaults, rng: np.random.Generator, *, t0_ns: int = 0) -> None:
        self.faults = faults
        self.counts: Counter[str] = Counter(dict.fromkeys(FAULT_COUNTERS, 0))
        self._rng = rng
        self._heap: list[tuple[int, int, bytes, Frames]] = []
        self._order = 0  # heap tie-break: frames due at once leave in the order they came
        self._last_due = 0  # in-order frames leave no earlier than the one before them
        self._windows: tuple[tuple[int, int], ...] = tuple(
            (t0_ns + round(s * 1e9), t0_ns + round((s + n) * 1e9)) for s, n in faults.partitions
        )
        self._delay_ns = faults.delay_ms * 1e6
        self._jitter_ns = faults.jitter_ms * 1e6
        self._reorder_ns = round(faults.reorder_ms * 1e6)
        self._bytes_per_ns = None if faults.bandwidth_bps is None else faults.bandwidth_bps / 8e9
        self._bucket: deque[tuple[bytes, Frames, int, int]] = deque()  # route, frames, size, t
        self._tokens = float(faults.burst_bytes)
        self._tokens_ns = t0_ns
        # how much later than due each frame went out (ns): the proxy's own cost
        self.late_ns: deque[int] = deque(maxlen=100_000)

    # -- partitions ------------------------------------------------------------------------

    def add_partition(self, start_ns: int, end_ns: int) -> None:
        """Drop everything in [start_ns, end_ns); callable from another thread."""
        self._windows = (*self._windows, (start_ns, end_ns))

    def partitioned(self, now: int) -> bool:
        return any(a <= now < b for a, b in self._windows)

    @property
    def windows_ns(self) -> tuple[tuple[int, int], ...]:
        return self._windows

    # -- frames ----------------------------------------------------------------------------

    def _push(self, due: int, route: bytes, frames: Frames) -> None:
        self._order += 1
        heapq.heappush(self._heap, (due, self._order, route, frames))

    def offer(self, route: bytes, frames: Frames, now: int) -> None:
        """A frame arrived at `now`: drop it, or schedule it (and maybe a copy)."""
        f, c = self.faults, self.counts
        c["received"] += 1
        # four draws per frame, whatever becomes of it: the n-th frame's fate depends on the
        # seed and n only
        u_loss, u_dup, u_reorder, u_jitter = self._rng.random(4).tolist()
        if self._windows and self.partitioned(now):
            c["partition_dropped"] += 1
            return
        if u_loss < f.loss:
            c["dropped"] += 1
            return
        due = now + max(0, round(self._delay_ns + (2.0 * u_jitter - 1.0) * self._jitter_ns))
        if u_reorder < f.reorder:
            due += self._reorder_ns  # held out of order: later frames may pass it
            c["reordered"] += 1
        else:
            due = max(due, self._last_due)
            self._last_due = due
        if due > now:
            c["delayed"] += 1
        self._push(due, route, frames)
        if u_dup < f.duplicate:
            c["duplicated"] += 1
            self._push(due, route, frames)

    def pop_due(self, now: int) -> list[tuple[bytes, Frames]]:
        """The frames to send at `now`, in order; counts them `forwarded`."""
        out: list[tuple[bytes, Frames]] = []
        heap, c = self._heap, self.counts
        cut = bool(self._windows) and self.partitioned(now)
        while heap and heap[0][0] <= now:
            due, _, route, frames = heapq.heappop(heap)
            if cut:
                c["partition_dropped"] += 1
            elif self._bytes_per_ns is None:
                out.append((route, frames))
                self.late_ns.append(now - due)
            elif len(self._bucket) >= self.faults.queue_frames:
                c["queue_dropped"] += 1
            else:
                self._bucket.append((route, frames, sum(len(x) for x in frames), due))
        if self._bucket:
            if cut:
                c["partition_dropped"] += len(self._bucket)
                self._bucket.clear()
            else:
                self._drain_bucket(now, out)
        c["forwarded"] += len(out)
        return out

    def _refill(self, now: int, cap: float) -> None:
        assert self._bytes_per_ns is not None
        if now > self._tokens_ns:
            self._tokens = min(cap, self._tokens + (now - self._tokens_ns) * self._bytes_per_ns)
            self._tokens_ns = now

    def _drain_bucket(self, now: int, out: list[tuple[bytes, Frames]]) -> None:
        bucket = self._bucket
        while bucket:
            route, frames, size, due = bucket[0]
            # a frame larger than the burst waits until the bucket holds all of it
            self._refill(now, max(float(self.faults.burst_bytes), float(size)))
            if self._tokens < size:
                return
            self._tokens -= size
            bucket.popleft()
            out.append((route, frames))
            self.late_ns.append(now - due)
            if now > due:
                self.counts["queued"] += 1

    def next_due_ns(self) -> int | None:
        """When this line next has a frame to send (None: nothing held)."""
        t = self._heap[0][0] if self._heap else None
        if self._bucket and self._bytes_per_ns is not None:
            size = self._bucket[0][2]
            need = max(0.0, size - self._tokens)
            tb = self._tokens_ns + math.ceil(need / self._bytes_per_ns)
            t = tb if t is None else min(t, tb)
        return t

    @property
    def held(self) -> int:
        """Frames scheduled or queued, not yet sent."""
        return len(self._heap) + len(self._bucket)


class FaultProxy:
    """A ZeroMQ message-level fault proxy in front of the plant server at `server`.

    `start()` binds the front (`bind`, a free loopback port by default; `address` is what a
    client connects to) and starts the I/O thread; `stop()` ends it and closes every socket
    and the context, so a process may start and stop proxies as often as it likes.
    `on_frame(direction, frames)`, when given, sees every frame as it arrives (on the I/O
    thread; keep it cheap), before any fault."""

    def __init__(
        self,
        server: str,
        *,
        up: LinkFaults | None = None,
        down: LinkFaults | None = None,
        seed: int = 0,
        bind: str = "tcp://127.0.0.1:*",
        clock: Clock | None = None,
        on_frame: Callable[[str, Frames], None] | None = None,
        max_sessions: int = 256,
    ) -> None:
        self.server = server
        self.up_faults = up or LinkFaults()
        self.down_faults = down or LinkFaults()
        self.seed = seed
        self.bind = bind
        self.clock: Clock = clock if clock is not None else MonotonicClock(spin_ns=0)
        self.on_frame = on_frame
        self.max_sessions = max_sessions
        self.address = ""
        self.t0_ns = 0
        self.up: FaultLine | None = None
        self.down: FaultLine | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._front: zmq.Socket[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy is running already")
        self._stop.clear()
        self._error = None
        self.t0_ns = t0 = self.clock.now_ns()
        self.up = FaultLine(self.up_faults, np.random.default_rng([self.seed, 0]), t0_ns=t0)
        self.down = FaultLine(self.down_faults, np.random.default_rng([self.seed, 1]), t0_ns=t0)
        self._ctx = ctx = zmq.Context()
        front: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, _HWM), (zmq.RCVHWM, _HWM),
                         (zmq.ROUTER_MANDATORY, 1)):
            front.setsockopt(opt, val)
        try:
            front.bind(self.bind)
        except zmq.ZMQError as exc:
            front.close(linger=0)
            ctx.term()
            self._ctx = None
            raise OSError(f"fault proxy cannot bind {self.bind}: {exc}") from exc
        self.address = front.getsockopt_string(zmq.LAST_ENDPOINT)
        self._front = front
        self._thread = threading.Thread(target=self._run, name="rtdiff-faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the I/O thread and close everything; frames still held are discarded."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=5.0)
        self._thread = None
        if thread.is_alive():  # pragma: no cover - the loop wakes every 20 ms
            raise RuntimeError("the fault proxy's I/O thread did not stop")
        if self._error is not None:
            raise RuntimeError(f"the fault proxy failed: {self._error!r}") from self._error

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- control and figures (any thread) --------------------------------------------------------

    def partition(self, length_s: float, *, start_in_s: float = 0.0) -> tuple[int, int]:
        """Cut both directions for `length_s` from `start_in_s` from now; returns the window
        (start_ns, end_ns) on the proxy's clock."""
        if not (length_s > 0 and start_in_s >= 0):
            raise ValueError(f"{length_s=} must be > 0 and {start_in_s=} >= 0")
        if self.up is None or self.down is None:
            raise RuntimeError("start the proxy first")
        a = self.clock.now_ns() + round(start_in_s * 1e9)
        b = a + round(length_s * 1e9)
        self.up.add_partition(a, b)
        self.down.add_partition(a, b)
        return a, b

    def partitions_ns(self) -> list[tuple[int, int]]:
        """Every window during which both directions were cut, on the proxy's clock."""
        if self.up is None or self.down is None:
            return []
        down = set(self.down.windows_ns)
        return sorted(w for w in self.up.windows_ns if w in down)

    def counters(self) -> dict[str, dict[str, int]]:
        """{"up": {...}, "down": {...}}: `FAULT_COUNTERS` per direction."""
        return {name: {k: int(line.counts[k]) for k in FAULT_COUNTERS} if line else
                dict.fromkeys(FAULT_COUNTERS, 0)
                for name, line in (("up", self.up), ("down", self.down))}

    def added_latency_us(self) -> dict[str, float]:
        """How much later than due the proxy sent frames (both directions), in us: p50, p99,
        p99.9, max. With no faults, due is arrival: this is the proxy's own time."""
        late: list[int] = []
        for line in (self.up, self.down):
            if line is not None:
                late.extend(list(line.late_ns))
        return percentiles(np.asarray(late, dtype=np.float64) / 1e3)

    # -- the I/O thread --------------------------------------------------------------------

    def _backend(self, ident: bytes, backends: OrderedDict[bytes, zmq.Socket[bytes]],
                 route_of: dict[zmq.Socket[bytes], bytes]) -> zmq.Socket[bytes]:
        known = backends.get(ident)
        if known is not None:
            backends.move_to_end(ident)
            return known
        assert self._ctx is not None
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, _HWM), (zmq.RCVHWM, _HWM),
                         (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 1000)):
            sock.setsockopt(opt, val)
        sock.connect(self.server)
        backends[ident] = sock
        route_of[sock] = ident
        if len(backends) > self.max_sessions:  # the least recently heard client goes
            _, old = backends.popitem(last=False)
            del route_of[old]
            old.close(linger=0)
        return sock

    def _run(self) -> None:
        front = self._front
        up, down = self.up, self.down
        assert front is not None and up is not None and down is not None
        clock, on_frame = self.clock, self.on_frame
        backends: OrderedDict[bytes, zmq.Socket[bytes]] = OrderedDict()
        route_of: dict[zmq.Socket[bytes], bytes] = {}

        def send(line: FaultLine, now: int) -> None:
            for route, frames in line.pop_due(now):
                try:
                    if line is up:
                        self._backend(route, backends, route_of).send_multipart(frames, _NOBLOCK)
                    else:
                        front.send_multipart([route, *frames], _NOBLOCK)
                except zmq.ZMQError:  # full, or the client is gone (ROUTER_MANDATORY)
                    line.counts["send_dropped"] += 1
                    line.counts["forwarded"] -= 1
                else:
                    line.counts["bytes"] += sum(len(f) for f in frames)

        try:
            while not self._stop.is_set():
                got = False
                if cast(int, front.getsockopt(zmq.EVENTS)) & _POLLIN:
                    got = True
                    while True:
                        try:
                            parts = front.recv_multipart(_NOBLOCK)
                        except zmq.Again:
                            break
                        if len(parts) < 2:
                            continue
                        if on_frame is not None:
                            on_frame("up", parts[1:])
                        self._backend(parts[0], backends, route_of)
                        up.offer(parts[0], parts[1:], clock.now_ns())
                for sock, ident in list(route_of.items()):
                    if not cast(int, sock.getsockopt(zmq.EVENTS)) & _POLLIN:
                        continue
                    got = True
                    while True:
                        try:
                            frames = sock.recv_multipart(_NOBLOCK)
                        except zmq.Again:
                            break
                        if on_frame is not None:
                            on_frame("down", frames)
                        down.offer(ident, frames, clock.now_ns())
                now = clock.now_ns()
                send(up, now)
                send(down, now)
                if got:
                    continue  # look again before sleeping: sends re-arm the fds
                wait_s = _MAX_WAIT_S
                for line in (up, down):
                    due = line.next_due_ns()
                    if due is not None:
                        wait_s = min(wait_s, max(0.0, (due - now) * 1e-9))
                if wait_s <= 0:
                    continue
                # The fds are edge-triggered: a send may have taken the edge of a frame that
                # is queued now, so ask EVENTS (which also re-arms each fd) before sleeping.
                socks = [front, *route_of]
                if any(cast(int, s.getsockopt(zmq.EVENTS)) & _POLLIN for s in socks):
                    continue
                select.select([cast(int, s.getsockopt(zmq.FD)) for s in socks], [], [], wait_s)
        except BaseException as exc:  # pragma: no cover - reported by stop()
            self._error = exc
        finally:
            for sock in route_of:
                sock.close(linger=0)
            front.close(linger=0)
            self._front = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
