"""The flooder (`hw_bridge.flood`): its garbage is garbage to the codec, its peers reach a
real server and are counted there, and a flooder process never outlives its stdin."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from hw_bridge import FirstOrderMotor, PlantServer
from hw_bridge.codec import ProtocolError, decode
from hw_bridge.flood import KINDS, Flooder, garbage_corpus, split_peers
from tests.hw_bridge.conftest import RunningServer


def test_peers_are_dealt_kinds_in_turn_over_the_processes() -> None:
    split = split_peers(7, ["hello", "garbage"], 3)
    assert split == [["hello", "garbage", "hello"], ["garbage", "hello"], ["hello", "garbage"]]
    assert split_peers(1, list(KINDS), 4) == [["hello"]]  # no empty process
    with pytest.raises(ValueError):
        split_peers(0, ["hello"], 1)


def test_every_garbage_frame_is_refused_by_the_codec_and_the_corpus_is_seeded() -> None:
    corpus = garbage_corpus(random.Random(5))
    assert corpus == garbage_corpus(random.Random(5))
    assert any(isinstance(f, tuple) for f in corpus)  # a two-frame message
    assert any(isinstance(f, bytes) and len(f) > 65_536 for f in corpus)  # an oversized one
    for frame in corpus:
        if isinstance(frame, tuple):
            continue  # refused by the server's one-frame rule before the codec
        with pytest.raises(ProtocolError):
            decode(frame)


def test_each_kind_of_peer_is_counted_by_the_server_it_floods() -> None:
    server = RunningServer(PlantServer(FirstOrderMotor(mode="realtime"), mode="realtime",
                                       bind="tcp://127.0.0.1:*"))
    try:
        with Flooder(server.address, list(KINDS), seed=3, peer_rate=2000.0) as flooder:
            flooder.run(0.6)
            stats = flooder.stats()
        time.sleep(0.2)  # let the server drain what is queued
        counters = server.server.counters
        sessions = len(server.server.core.peers)
    finally:
        server.stop()
    assert set(stats) == set(KINDS)
    assert all(s["sent"] > 0 and s["peers"] == 1 for s in stats.values())
    assert stats["identities"]["sockets"] > 20  # a fresh routing id every few frames
    assert stats["hello"]["received"] > 0 and stats["commands"]["received"] > 0
    assert counters["bad_message"] > 0  # garbage
    assert counters["unauthorized"] > 0 and counters["out_of_order"] > 0  # commands, replays
    assert stats["identities"]["received"] > 0  # the server answered fresh identities
    assert sessions > 1  # hellos from several identities opened sessions (up to its cap)


def test_a_flooder_process_waits_for_go_and_stops_when_its_stdin_ends() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hw_bridge.flood", "--address", "tcp://127.0.0.1:9",
         "--kinds", "garbage,hello"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdin is not None
        assert proc.stderr.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.2)
        assert proc.poll() is None  # flooding
        out, _ = proc.communicate(timeout=5.0)  # closes stdin: the parent is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["seconds"] > 0.1 and report["kinds"]["garbage"]["peers"] == 1
