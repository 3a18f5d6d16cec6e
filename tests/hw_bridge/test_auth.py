"""CurveZMQ with a client allowlist: a client without an allowed key gets no state and moves
nothing."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from hw_bridge import BridgeError, FirstOrderMotor, RemotePlant
from hw_bridge.keys import make_keys
from runtime import Command
from runtime.cli.keys import cli_keys

from .helpers import command, hello


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    cli_keys(argparse.Namespace(out=str(d), client="client"))
    return d


def test_keys_cli_makes_pairs_and_an_allowlist_without_overwriting(keys: Path) -> None:
    names = sorted(p.name for p in keys.iterdir())
    assert names == [
        "authorized_clients",
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    assert (keys / "authorized_clients" / "client.key").read_bytes() == (
        keys / "client.key"
    ).read_bytes()
    before = (keys / "server.key_secret").read_bytes()
    assert make_keys(keys, client="client") == []  # nothing rewritten
    make_keys(keys, client="arm2")
    assert (keys / "server.key_secret").read_bytes() == before
    assert (keys / "authorized_clients" / "arm2.key").exists()
    assert (keys / "client.key_secret").stat().st_mode & 0o077 == 0


def test_allowed_client_controls_the_plant(serve, keys: Path) -> None:
    motor = FirstOrderMotor(mode="lockstep")
    rs = serve(motor, mode="lockstep", keys_dir=keys)
    with RemotePlant(rs.address, keys_dir=keys) as plant:
        plant.reset(seed=0)
        t = plant.clock.now_ns()
        plant.apply(Command(seq=0, t_ns=t, action=np.array([0.1]), deadline_ns=t + 10**7))
        assert plant.counters()["applied"] == 1 and motor.writes == 1


def test_client_with_a_key_not_on_the_allowlist_gets_nothing_and_moves_nothing(
    serve, keys: Path, tmp_path: Path
) -> None:
    motor = FirstOrderMotor(mode="realtime")
    rs = serve(motor, mode="realtime", keys_dir=keys)
    # a well-formed key pair, signed by nobody the server knows
    rogue = tmp_path / "rogue"
    make_keys(rogue)
    shutil.copyfile(keys / "server.key", rogue / "server.key")  # it even knows the server key
    with pytest.raises(BridgeError, match="handshake failed"):
        RemotePlant(rs.address, keys_dir=rogue, connect_timeout_s=0.5)

    # a raw socket without any CURVE at all, shouting commands
    ctx = zmq.Context.instance()
    for curve_dir in (rogue, None):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if curve_dir is not None:
            from hw_bridge.keys import client_curve

            client_curve(sock, curve_dir)
        sock.connect(rs.address)
        sock.send(hello(1))
        for k in range(20):
            sock.send(command(2 + k, [0.9]))
        got = sock.poll(300)
        sock.close()
        assert not got  # not a single state, welcome or error came back
    time.sleep(0.1)
    c = rs.server.counters
    assert c["received"] == 0 and c["applied"] == 0 and motor.writes == 0
    assert c["states_sent"] == 0
