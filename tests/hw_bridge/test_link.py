"""RemotePlant against a PlantServer over real sockets (loopback TCP and IPC)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from hw_bridge import BridgeError, FirstOrderMotor, RemotePlant
from hw_bridge.codec import decode, encode, message
from runtime import Command, Plant

from .helpers import command


def _cmd(k: int, a: float, clock_ns: int, period_ns: int = 5_000_000) -> Command:
    return Command(seq=k, t_ns=clock_ns, action=np.array([a]), deadline_ns=clock_ns + period_ns)


def test_remote_plant_is_a_plant_and_steps_in_lockstep(serve, tmp_path: Path) -> None:
    rs = serve(mode="lockstep", bind=f"ipc://{tmp_path}/plant.sock")
    with RemotePlant(rs.address) as plant:
        assert isinstance(plant, Plant)
        spec = plant.spec()
        assert (spec.name, spec.state_dim, spec.action_dim) == ("first-order-motor", 2, 1)
        obs0 = plant.reset(seed=3)
        for k in range(10):
            plant.apply(_cmd(k, 0.2, plant.clock.now_ns()))
            obs = plant.observe()
            assert not obs.stale and obs.seq > obs0.seq
        # lockstep: the plant's time moved exactly 10 periods
        assert obs.t_ns == 10 * spec.period_ns
        # the same run on a local motor gives the same state (the link adds nothing)
        local = FirstOrderMotor(mode="lockstep")
        local.reset(seed=3)
        for k in range(10):
            local.apply(_cmd(k, 0.2, 0, 0))
        np.testing.assert_array_equal(obs.state, local.observe().state)
        c = plant.counters()
        assert c["applied"] == 10 and c["plant_applied"] == 10 and c["rejected"] == 0


def test_realtime_observe_never_blocks_and_flags_stale(serve) -> None:
    rs = serve(FirstOrderMotor(mode="realtime", rate_hz=20.0), mode="realtime")  # 50 ms apart
    with RemotePlant(rs.address) as plant:
        first = plant.next_observation(1.0)
        again = plant.observe()  # immediately: nothing newer yet, so the same state, flagged
        assert again.stale and again.seq == first.seq
        np.testing.assert_array_equal(again.state, first.state)
        fresh = plant.next_observation(1.0)
        assert not fresh.stale and fresh.seq > first.seq
        # the state time is mapped to our clock: recent, not in the future
        age_ns = plant.clock.now_ns() - fresh.t_ns
        assert -1_000_000 < age_ns < 500_000_000


def test_realtime_client_measures_how_long_commands_take_to_reach_the_plant(serve) -> None:
    """Every acknowledged command (`state.ack_lag_ns`) and every late one (`error.lag_ns`)
    gives a send-to-plant latency; after 200 the client offers a transport margin from them."""
    rs = serve(FirstOrderMotor(mode="realtime", rate_hz=500.0), mode="realtime")
    with RemotePlant(rs.address) as plant:
        assert plant.transport_margin_ns() is None  # nothing measured yet
        for k in range(210):
            obs = plant.next_observation(1.0)
            plant.apply(_cmd(k, 0.1, plant.clock.now_ns(), period_ns=100_000_000))
        plant.next_observation(1.0)
        assert len(plant.latency) >= 200
        margin = plant.transport_margin_ns()
        assert margin is not None and 0 < margin < 100_000_000  # loopback: well under 100 ms
        # (latencies are as the client's clock mapping sees them: the offset estimate's error,
        # up to half the best heartbeat round trip, is in them, so they may even be negative)
        assert plant.latency.summary_us()["n"] == len(plant.latency)
        n = len(plant.latency)
        # a command sent after its deadline: refused as late, and its arrival lag measured
        plant.apply(Command(seq=99, t_ns=obs.t_ns, action=np.array([0.1]),
                            deadline_ns=plant.clock.now_ns() - 1_000_000))
        plant.counters()  # a heartbeat round trip: the error is in by the time it returns
        assert plant.counts["errors"] >= 1 and len(plant.latency) == n + 1


def test_rejections_and_clamps_are_visible_to_the_client(serve) -> None:
    rs = serve(mode="lockstep")
    with RemotePlant(rs.address) as plant:
        plant.reset(seed=0)
        now = plant.clock.now_ns()
        plant.apply(_cmd(0, float("nan"), now))
        plant.apply(_cmd(1, 3.0, now))
        c = plant.counters()
        assert c["rejected"] == 1 and c["clamped"] >= 1 and c["applied"] == 1
        assert c["client_timeouts"] == 0  # the rejection was answered, not waited out


def test_observer_watches_but_cannot_command(serve) -> None:
    rs = serve(mode="realtime")
    with RemotePlant(rs.address) as ctl, RemotePlant(rs.address, role="observe") as obs:
        s = obs.next_observation(1.0)
        assert s.state.shape == (2,)
        obs.apply(_cmd(0, 0.5, obs.clock.now_ns()))  # dropped on our side, counted
        assert obs.counters()["client_dropped"] == 1
        ctl.apply(_cmd(0, 0.1, ctl.clock.now_ns()))
        assert ctl.counters()["applied"] == 1


def test_second_controller_is_refused_with_a_clear_error(serve) -> None:
    rs = serve(mode="lockstep", lease_ms=5000.0)
    with RemotePlant(rs.address):
        with pytest.raises(BridgeError, match=r"busy|controlled by"):
            RemotePlant(rs.address, connect_timeout_s=0.4)
        with RemotePlant(rs.address, takeover=True, connect_timeout_s=2.0) as second:
            assert second.connected


def test_layout_and_version_mismatch_are_refused(serve) -> None:
    rs = serve(mode="lockstep")
    with pytest.raises(BridgeError, match="mismatch"):
        RemotePlant(rs.address, expect={"state_dim": 6}, connect_timeout_s=2.0)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(rs.address)
    try:
        sock.send(encode(message("hello", 1, 0, versions=[3, 4], role="control")))
        assert sock.poll(2000)
        err = decode(sock.recv())
        assert (err["type"], err["code"], err["fatal"]) == ("error", "bad_version", True)
        assert "server speaks [1, 2], client offered [3, 4]" in err["message"]
        sock.send(command(2, [0.1]))  # no session: refused, never applied
        assert sock.poll(2000) and decode(sock.recv())["code"] == "unknown_peer"
    finally:
        sock.close()
    assert rs.server.counters["applied"] == 0


def test_no_server_gives_a_bridge_error_quickly(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(BridgeError, match="handshake failed"):
        RemotePlant(f"ipc://{tmp_path}/nobody.sock", connect_timeout_s=0.3)
    assert time.perf_counter() - t0 < 2.0


def test_a_paused_lockstep_controller_is_not_mistaken_for_a_dead_link(serve) -> None:
    rs = serve(mode="lockstep")
    with RemotePlant(rs.address, timeout_s=0.2) as plant:
        plant.reset(seed=0)
        time.sleep(0.5)  # the controller thinks for longer than its timeout
        plant.apply(_cmd(0, 0.1, plant.clock.now_ns()))
        c = plant.counters()
        assert c["applied"] == 1 and c["client_reconnects"] == 0 and c["client_dropped"] == 0


def test_a_forgotten_session_handshakes_again_and_the_step_still_happens(serve) -> None:
    from hw_bridge import ServerConfig

    rs = serve(config=ServerConfig(mode="lockstep", peer_timeout_ms=100.0))
    with RemotePlant(rs.address) as plant:
        plant.reset(seed=0)
        time.sleep(0.3)  # silent past peer_timeout: the server forgets the session
        plant.apply(_cmd(0, 0.1, plant.clock.now_ns()))
        assert plant.counters()["applied"] == 1
        time.sleep(0.3)
        plant.reset(seed=1)
        assert plant.counts["reconnects"] >= 1


def test_a_controller_whose_lease_lapsed_gets_control_back_when_nobody_else_has_it(
    serve,
) -> None:
    rs = serve(mode="lockstep", lease_ms=100.0)
    with RemotePlant(rs.address) as plant:
        plant.reset(seed=0)
        time.sleep(0.3)  # quiet past the lease: the server drops us to observer
        assert rs.server.core.controller is None
        plant.apply(_cmd(0, 0.1, plant.clock.now_ns()))  # refused once, re-asked, re-sent
        assert plant.counters()["applied"] == 1
        plant.reset(seed=1)


def test_a_controller_kept_alive_through_slow_set_up_keeps_control(serve) -> None:
    """`kept_alive()`: a controller busy elsewhere (loading a model) past its lease keeps
    control, so its first command is applied without a refusal and a second handshake."""
    rs = serve(mode="lockstep", lease_ms=250.0)  # heartbeats go out every 100 ms
    with RemotePlant(rs.address) as plant:
        with plant.kept_alive(interval_s=0.02):
            time.sleep(0.6)  # over two leases of set-up work that does not touch the plant
        assert rs.server.core.controller is not None  # still ours
        plant.reset(seed=0)
        plant.apply(_cmd(0, 0.1, plant.clock.now_ns()))
        c = plant.counters()
        assert c["applied"] == 1 and c["client_errors"] == 0 and c["client_reconnects"] == 0


class _StuckSensor(FirstOrderMotor):
    """A motor whose encoder stopped updating: every read repeats the first one."""

    def read(self) -> tuple[np.ndarray, int]:
        if not hasattr(self, "_frozen"):
            self._frozen = super().read()
        return self._frozen[0].copy(), self._frozen[1]


def test_the_plants_own_stale_flag_reaches_the_controller(serve) -> None:
    rs = serve(_StuckSensor(mode="realtime"), mode="realtime")
    with RemotePlant(rs.address) as plant:
        plant.next_observation(1.0)
        obs = plant.next_observation(1.0)  # a new message, but not a new reading
        assert obs.stale
        assert plant.counters()["plant_stale_reads"] > 0


def test_server_freezes_the_gc_while_serving_and_restores_it(serve) -> None:
    import gc

    assert gc.isenabled()
    rs = serve(mode="realtime")
    assert rs.server.gc.mode == "frozen"
    assert not gc.isenabled() and gc.get_freeze_count() > 0  # serving: frozen, automatic off
    rs.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
