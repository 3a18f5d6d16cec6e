"""Hostile local peers for a plant server: the flooder behind `rtdiff bench flood`.

A `Flooder` drives many ZeroMQ DEALER sockets from one thread against one `PlantServer`
address, each socket (or rotating set of sockets) a *peer* of one kind:

- `hello`: valid hellos at full speed, alternately as observer and as controller without
  `takeover` (a takeover is a legitimate request that only CurveZMQ keeps out, so it is no
  flood); reads its replies.
- `garbage`: random bytes and malformed msgpack at full speed (truncated frames, non-maps,
  missing and ill-typed fields, unknown types and versions, ext types, absurd container
  lengths, deep nesting, trailing bytes, oversized and empty frames, two-frame messages),
  from a seeded corpus built once; never reads.
- `slow`: a session opened as an observer that never reads (its queues fill; the server must
  drop frames for it, not wait), with a heartbeat every `SLOW_HEARTBEAT_S` to stay alive.
- `identities`: thousands of identities: a fresh DEALER socket with its own routing id sends
  `PER_IDENTITY` frames, hellos (even identities) or garbage (odd ones), and is closed once
  the server answered or `IDENTITY_WAIT_S` passed (up to `IDENTITY_POOL` open at once per
  peer).
- `commands`: an observer session sending well-formed commands and resets it is not allowed to
  send, and replays of sequence numbers it already used; re-says hello every second.

Each `step` sends a burst without ever blocking (a full queue is counted as `blocked` and the
peer moves on); `Flooder.run` round-robins the peers. Frames per kind are counted (`sent`,
`blocked`, `received`, `sockets`).

Run as a process (`python -m hw_bridge.flood --address ADDR --kinds hello,slow,...`), it
connects, waits for a `go` line on stdin, floods until a `stop` line, the end of stdin (its
parent went away), SIGTERM/SIGINT or `--seconds`, then prints its counts as one JSON object
on stdout. Stdin is the leash: a flooder never outlives the process that started it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from hw_bridge.codec import SUPPORTED_VERSIONS, encode, encode_array, message

BURST = 16  # frames a peer sends per step at most
PER_IDENTITY = 4  # frames sent from one routing id
IDENTITY_POOL = 32  # identities with a socket open at once, per peer
IDENTITY_WAIT_S = 0.25  # an identity the server has not answered by then is retired anyway
IDENTITY_LINGER_MS = 250  # ... its socket closed with this linger: queued frames still leave
SLOW_HEARTBEAT_S = 5.0  # a slow session's keep-alive (the server forgets one silent 30 s)
REHELLO_S = 1.0  # a commands peer says hello again this often (keeps its session)
STAT_KEYS = ("peers", "sent", "blocked", "received", "sockets")

_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


def garbage_corpus(rng: random.Random, n: int = 64) -> list[bytes | tuple[bytes, bytes]]:
    """`n` malformed frames (a tuple is a two-frame message), seeded: every way a frame can
    fail `hw_bridge.codec.decode` or the ROUTER's one-frame rule, at most one oversized."""
    hello = encode(message("hello", 1, 0, versions=[1], role="observe"))
    fixed: list[bytes | tuple[bytes, bytes]] = [
        hello[: len(hello) // 2],  # truncated
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb(7),
        msgpack.packb(None),
        msgpack.packb({"v": 1, "type": "hello"}),  # missing fields
        msgpack.packb({"v": "1", "type": "hello", "seq": 1, "t_ns": 0}),  # ill-typed
        msgpack.packb({"v": 1, "type": "command", "seq": -5, "t_ns": 0}),
        msgpack.packb({"v": 1, "type": "hello", "seq": 1.5, "t_ns": 0}),
        msgpack.packb({"v": 1, "type": "hello", "seq": 1, "t_ns": 0, "versions": "all",
                       "role": "god"}),
        msgpack.packb({"v": 1, "type": "boom", "seq": 1, "t_ns": 0}),  # unknown type
        msgpack.packb({"v": 99, "type": "heartbeat", "seq": 1, "t_ns": 0}),  # bad version
        msgpack.packb({1: 2, 3: 4}),  # non-string keys
        msgpack.packb({"v": 1, "type": msgpack.ExtType(5, b"xx"), "seq": 1, "t_ns": 0}),
        b"\xdd\xff\xff\xff\xff\x01",  # an array claiming 4 G elements
        b"\xdf\xff\xff\xff\xff\xa1a",  # a map claiming 4 G pairs
        b"\x91" * 5000 + b"\xc0",  # nesting 5000 deep
        hello + b"\x00\x01",  # trailing bytes
        b"",  # empty
        (hello, b"extra"),  # two frames where the protocol has one
        bytes(rng.getrandbits(8) for _ in range(70_000)),  # over the 64 KiB message limit
    ]
    out = list(fixed)
    while len(out) < n:
        out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
    rng.shuffle(out)
    return out


def _hello(seq: int, role: str, name: str) -> bytes:
    return encode(message("hello", seq, time.monotonic_ns(), versions=list(SUPPORTED_VERSIONS),
                          role=role, name=name))


class Peer:
    """One hostile peer: `step()` sends up to `budget` frames without blocking; returns how
    many it handed to ZeroMQ."""

    kind = ""

    def __init__(self, ctx: zmq.Context[Any], address: str, index: int,
                 rng: random.Random) -> None:
        self.ctx, self.address, self.index, self.rng = ctx, address, index, rng
        self.name = f"flood-{self.kind}-{os.getpid()}-{index}"
        self.sent = self.blocked = self.received = self.sockets = 0
        self.sock: zmq.Socket[bytes] | None = None

    def _open(self, *, routing_id: bytes | None = None, rcvhwm: int = 1000,
              rcvbuf: int = -1, linger: int = 0) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, linger)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.RCVBUF, rcvbuf)  # -1: the OS default
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(self.address)
        self.sockets += 1
        return sock

    def _send(self, sock: zmq.Socket[bytes], frame: bytes | tuple[bytes, bytes]) -> bool:
        try:
            if isinstance(frame, tuple):
                sock.send(frame[0], _NOBLOCK | _SNDMORE)
                sock.send(frame[1], _NOBLOCK)
            else:
                sock.send(frame, _NOBLOCK)
        except zmq.Again:
            self.blocked += 1
            return False
        self.sent += 1
        return True

    def _drain(self, most: int) -> list[bytes]:
        frames: list[bytes] = []
        if self.sock is None:
            return frames
        for _ in range(most):
            try:
                frames.append(self.sock.recv(_NOBLOCK))
            except zmq.Again:
                break
        self.received += len(frames)
        return frames

    def step(self, budget: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class HelloPeer(Peer):
    kind = "hello"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.sock = self._open()
        self.seq = 0

    def step(self, budget: int) -> int:
        assert self.sock is not None
        n = 0
        for _ in range(budget):
            self.seq += 1
            role = "control" if self.seq % 2 else "observe"
            if not self._send(self.sock, _hello(self.seq, role, self.name)):
                break
            n += 1
        self._drain(4 * BURST)
        return n


class GarbagePeer(Peer):
    kind = "garbage"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.sock = self._open()
        self.corpus = garbage_corpus(self.rng)
        self.i = self.rng.randrange(len(self.corpus))

    def step(self, budget: int) -> int:
        assert self.sock is not None
        n = 0
        for _ in range(budget):
            self.i = (self.i + 1) % len(self.corpus)
            if not self._send(self.sock, self.corpus[self.i]):
                break
            n += 1
        return n


class SlowPeer(Peer):
    kind = "slow"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.sock = self._open(rcvhwm=1, rcvbuf=4096)  # a small window: it fills at once
        self.seq = 1
        self.next_s = time.monotonic() + SLOW_HEARTBEAT_S
        self.n_sent = int(self._send(self.sock, _hello(1, "observe", self.name)))

    def step(self, budget: int) -> int:
        assert self.sock is not None
        now = time.monotonic()
        if budget <= 0 or now < self.next_s:
            return 0
        self.next_s = now + SLOW_HEARTBEAT_S
        self.seq += 1
        return int(self._send(self.sock, encode(message("heartbeat", self.seq,
                                                        time.monotonic_ns()))))


class IdentitiesPeer(Peer):
    """Up to `IDENTITY_POOL` sockets open at once, each with a fresh routing id; one is
    retired once the server answered it (its frames arrived) or after `IDENTITY_WAIT_S`
    (closed with a linger, so frames still queued leave), and a new identity takes its
    place."""

    kind = "identities"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.junk = [f for f in garbage_corpus(self.rng, n=24)
                     if isinstance(f, bytes) and len(f) < 1024]
        self.ids = 0
        self.pool: list[tuple[zmq.Socket[bytes], float]] = []
        self.unanswered = 0  # identities retired without a reply

    def step(self, budget: int) -> int:
        now = time.monotonic()
        pool: list[tuple[zmq.Socket[bytes], float]] = []
        for sock, t_open in self.pool:
            try:
                sock.recv(_NOBLOCK)
            except zmq.Again:
                if now - t_open < IDENTITY_WAIT_S:
                    pool.append((sock, t_open))
                    continue
                self.unanswered += 1  # a server may withhold replies to session-less peers
                sock.close(linger=IDENTITY_LINGER_MS)
            else:
                self.received += 1
                sock.close(linger=0)
        self.pool = pool
        n = 0
        while n < budget and len(pool) < IDENTITY_POOL:
            self.ids += 1
            sock = self._open(routing_id=f"fl{os.getpid()}-{self.index}-{self.ids}".encode())
            pool.append((sock, now))
            for k in range(min(budget - n, PER_IDENTITY)):
                if self.ids % 2 == 0:
                    frame: bytes = _hello(k + 1, "observe", self.name)
                else:
                    frame = self.junk[(self.ids + k) % len(self.junk)]
                if not self._send(sock, frame):
                    break
                n += 1
        return n

    def close(self) -> None:
        for sock, _ in self.pool:
            sock.close(linger=0)
        self.pool = []


class CommandsPeer(Peer):
    kind = "commands"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.sock = self._open()
        self.seq = 0
        self.valid_seq = 0  # the last seq the server accepted (a hello's): replays reuse it
        self.version = 1
        self.action: dict[str, Any] | None = None  # learnt from the welcome's spec
        self.hello_s = 0.0
        self.i = 0

    def _say_hello(self) -> None:
        assert self.sock is not None
        self.seq += 1
        if self._send(self.sock, _hello(self.seq, "observe", self.name)):
            self.valid_seq = self.seq
        self.hello_s = time.monotonic()

    def step(self, budget: int) -> int:
        assert self.sock is not None
        frames = self._drain(4 * BURST)
        if self.action is None:
            for f in frames:
                with_spec = _welcome_spec(f)
                if with_spec is not None:
                    self.version, dim = with_spec
                    self.action = encode_array(np.zeros(dim))
        if time.monotonic() - self.hello_s > (REHELLO_S if self.action else 0.1):
            self._say_hello()
        if self.action is None or budget <= 0:
            return 0
        n = 0
        for _ in range(budget):
            self.i += 1
            phase = self.i % 8
            if phase < 6:
                self.seq += 1
                seq = self.seq  # fresh, but not the controller's to send: unauthorized
            else:
                seq = self.valid_seq  # a replay: out of order
            now = time.monotonic_ns()
            if phase == 5:
                msg = message("reset", seq, now, v=self.version, seed=0)
            else:
                msg = message("command", seq, now, v=self.version, stream=1, tick=self.i,
                              obs_seq=0, action=self.action, deadline_ns=None)
            if not self._send(self.sock, encode(msg)):
                break
            n += 1
        return n


def _welcome_spec(frame: bytes) -> tuple[int, int] | None:
    """(version, action_dim) from a welcome frame, else None."""
    try:
        msg = msgpack.unpackb(frame, raw=False)
        if msg.get("type") == "welcome":
            return int(msg["version"]), int(msg["spec"]["action_dim"])
    except Exception:  # anything but a readable welcome is not one
        return None
    return None


PEER_TYPES: dict[str, type[Peer]] = {
    p.kind: p for p in (HelloPeer, GarbagePeer, SlowPeer, IdentitiesPeer, CommandsPeer)
}
KINDS = tuple(PEER_TYPES)  # hello, garbage, slow, identities, commands


def split_peers(peers: int, kinds: Sequence[str], procs: int) -> list[list[str]]:
    """`peers` peers, kinds in turn, dealt over `procs` processes in turn (none left empty)."""
    if peers < 1 or not kinds or procs < 1:
        raise ValueError(f"need peers >= 1, kinds and procs >= 1 ({peers=}, {kinds=}, {procs=})")
    out: list[list[str]] = [[] for _ in range(min(procs, peers))]
    for i in range(peers):
        out[i % len(out)].append(kinds[i % len(kinds)])
    return out


class Flooder:
    """Peers of the given kinds (one entry per peer) against `address`, on one thread.

    Example:
        with Flooder("tcp://127.0.0.1:5555", ["garbage", "hello"], seed=1) as f:
            f.run(2.0)
            f.stats()["garbage"]["sent"]
    `peer_rate`: frames per second per peer at most (0: as fast as the sockets take them).
    """

    def __init__(self, address: str, kinds: Sequence[str], *, seed: int = 0,
                 peer_rate: float = 0.0) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown peer kinds {unknown}; known: {list(KINDS)}")
        if not peer_rate >= 0:
            raise ValueError(f"{peer_rate=} must be >= 0")
        self.peer_rate = peer_rate
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 65536)  # identities: sockets lingering after close
        rng = random.Random(seed)
        self.peers: list[Peer] = []
        try:
            for i, kind in enumerate(kinds):
                self.peers.append(
                    PEER_TYPES[kind](self.ctx, address, i, random.Random(rng.getrandbits(64)))
                )
        except BaseException:
            self.close()
            raise

    def run(self, seconds: float, should_stop: Callable[[], bool] | None = None,
            check_every_s: float = 0.05) -> float:
        """Flood for `seconds` or until `should_stop()` (asked every `check_every_s`) says
        so; returns the seconds flooded."""
        t0 = time.monotonic()
        end, next_check = t0 + seconds, t0 + check_every_s
        peers, rate = self.peers, self.peer_rate
        while True:
            now = time.monotonic()
            if now >= next_check:
                if now >= end or (should_stop is not None and should_stop()):
                    break
                next_check = now + check_every_s
            moved = 0
            for p in peers:
                budget = BURST if rate <= 0 else min(BURST, int(rate * (now - t0)) - p.sent)
                moved += p.step(budget)
            if moved == 0:
                time.sleep(0.0005)  # every queue full (or paced): do not spin on the core
        return time.monotonic() - t0

    def stats(self) -> dict[str, dict[str, int]]:
        """Per kind: `peers`, `sent` (frames handed to ZeroMQ), `blocked` (a full queue
        refused one), `received` (replies read), `sockets` (sockets opened)."""
        out: dict[str, dict[str, int]] = {}
        for p in self.peers:
            s = out.setdefault(p.kind, dict.fromkeys(STAT_KEYS, 0))
            s["peers"] += 1
            s["sent"] += p.sent
            s["blocked"] += p.blocked
            s["received"] += p.received
            s["sockets"] += p.sockets
        return out

    def close(self) -> None:
        for p in self.peers:
            p.close()
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Flooder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Leash:
    """The parent's orders on stdin: `go`, then `stop` (or the end of stdin, or a signal)."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)

    def _signal(self, signum: int, frame: object) -> None:
        self.stopped = True

    def wait_go(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not self.stopped and time.monotonic() < end:
            if select.select([sys.stdin], [], [], 0.1)[0]:
                line = sys.stdin.readline()
                return line.strip() == "go"
        return False

    def should_stop(self) -> bool:
        if not self.stopped and select.select([sys.stdin], [], [], 0)[0]:
            self.stopped = True  # `stop`, anything else, or the end of stdin
        return self.stopped


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_bridge.flood")
    p.add_argument("--address", required=True)
    p.add_argument("--kinds", required=True, help="comma list, one kind per peer")
    p.add_argument("--seconds", type=float, default=600.0, help="flood at most this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-rate", type=float, default=0.0)
    args = p.parse_args(argv)
    leash = _Leash()
    kinds = [k for k in args.kinds.split(",") if k]
    flooder = Flooder(args.address, kinds, seed=args.seed, peer_rate=args.peer_rate)
    seconds = 0.0
    try:
        print("ready", file=sys.stderr, flush=True)
        if leash.wait_go(timeout_s=300.0):
            seconds = flooder.run(args.seconds, leash.should_stop)
    finally:
        stats = flooder.stats()
        flooder.close()
    print(json.dumps({"pid": os.getpid(), "seconds": seconds, "kinds": stats}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
