"""DynamixelDriver against the emulated protocol 2.0 bus of hw_bridge.dxl_emu (a pty).

The packet checks use the e-manual's own examples; the driver tests share a FakeClock with the
emulated servos, so their motion is exact; the last test serves the driver with a PlantServer
in realtime and drives it with a RemotePlant until the client goes silent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hw_bridge import RemotePlant
from hw_bridge.driver import DriverNotConnected
from hw_bridge.dxl_emu import (
    INST_PING,
    INST_READ,
    EmulatedBus,
    bench,
    crc16,
    instruction_packet,
    parse_packet,
    status_packet,
    stuff,
)
from hw_bridge.dynamixel import (
    ADDR_CURRENT_LIMIT,
    ADDR_GOAL_CURRENT,
    ADDR_GOAL_POSITION,
    ADDR_MAX_POSITION_LIMIT,
    ADDR_MIN_POSITION_LIMIT,
    ADDR_OPERATING_MODE,
    DynamixelDriver,
    TorqueOff,
)
from runtime import Command
from runtime.clock import FakeClock

S = 1_000_000_000
TICK = 2 * math.pi / 4096  # rad per position tick
LATENCY_MS = 10.0  # a loaded test machine: replies get 22 ms before they count as lost


def _cmd(action: list[float], *, fallback: str = "") -> Command:
    return Command(seq=0, t_ns=0, action=np.array(action), deadline_ns=0, fallback=fallback)


def _settle(driver: DynamixelDriver) -> None:
    """A sync write has no reply: one read (a round trip on the same bus) makes sure the
    emulator applied it before the test moves the shared clock or looks at a register."""
    driver.read()


# -- the packet format -------------------------------------------------------------------------


def test_crc_and_packets_match_the_e_manual_examples() -> None:
    ping = bytes.fromhex("FF FF FD 00 01 03 00 01 19 4E")  # PING of ID 1
    assert crc16(ping[:-2]) == 0x4E19
    assert instruction_packet(1, INST_PING) == ping
    # READ of ID 1: Present Position (132), 4 bytes
    assert instruction_packet(1, INST_READ, bytes([132, 0, 4, 0])) == bytes.fromhex(
        "FF FF FD 00 01 07 00 02 84 00 04 00 1D 15"
    )
    # the status answering the PING: model number 1030, firmware version 38
    assert status_packet(1, 0, bytes([0x06, 0x04, 0x26])) == bytes.fromhex(
        "FF FF FD 00 01 07 00 55 00 06 04 26 65 5D"
    )


def test_byte_stuffing_hides_headers_in_params_and_parses_back() -> None:
    assert stuff(bytes.fromhex("55 00 FF FF FD 01")) == bytes.fromhex("55 00 FF FF FD FD 01")
    params = bytes.fromhex("FF FF FD 00 FF FF FD")
    pkt = instruction_packet(3, 0x03, params)
    assert int.from_bytes(pkt[5:7], "little") == 1 + len(params) + 2 + 2  # two stuffed bytes
    buf = bytearray(b"\x00\xff" + pkt + pkt[:5])  # noise before, half a packet after
    parsed = parse_packet(buf)
    assert parsed is not None and parsed.crc_ok
    assert (parsed.dxl_id, parsed.instruction, parsed.params) == (3, 0x03, params)
    assert parse_packet(buf) is None and bytes(buf) == pkt[:5]  # waits for the rest
    bad = bytearray(pkt[:-1] + bytes([pkt[-1] ^ 1]))
    parsed = parse_packet(bad)
    assert parsed is not None and not parsed.crc_ok


# -- the driver on an emulated bus -------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_ns=S)


@pytest.fixture
def bus(clock: FakeClock) -> Iterator[EmulatedBus]:
    with EmulatedBus([1, 2], clock=clock) as b:
        # servo 2 allows a half turn only, and 1 A at most
        b.servos[2].poke(ADDR_MIN_POSITION_LIMIT, 4, 1024)
        b.servos[2].poke(ADDR_MAX_POSITION_LIMIT, 4, 3072)
        b.servos[2].poke(ADDR_CURRENT_LIMIT, 2, 372)
        yield b


def _driver(bus: EmulatedBus, clock: FakeClock, **kw: object) -> DynamixelDriver:
    return DynamixelDriver(port=bus.port, ids="1,2", latency_timer_ms=LATENCY_MS, clock=clock,
                           **kw)  # type: ignore[arg-type]


def test_connect_reads_the_servos_limits_into_the_spec(bus: EmulatedBus, clock: FakeClock) -> None:
    driver = _driver(bus, clock)
    spec = driver.spec()
    assert driver.connected and [m.name for m in driver.models] == ["XM430-W350"] * 2
    assert (spec.state_dim, spec.action_dim) == (4, 2)
    assert spec.state_names == ("j1_pos_rad", "j2_pos_rad", "j1_vel_rad_s", "j2_vel_rad_s")
    np.testing.assert_allclose(spec.action_low, [-math.pi, -math.pi / 2])
    np.testing.assert_allclose(spec.action_high, [4095 * TICK - math.pi, math.pi / 2])
    assert spec.max_action_rate_per_s is not None  # Velocity Limit 200 x 0.229 rev/min
    np.testing.assert_allclose(spec.max_action_rate_per_s, 200 * 0.229 * 2 * math.pi / 60)
    assert all(s.torque_on for s in bus.servos.values())
    driver.close()

    mixed = _driver(bus, clock, operating_mode=["position", "current"])
    assert bus.servos[2].mode == 0 and bus.servos[2].torque_on  # changed with torque off
    assert mixed.spec().action_names == ("j1_goal_rad", "j2_goal_a")
    assert mixed.spec().action_high[1] == pytest.approx(372 * 2.69e-3)
    mixed.close()


def test_bad_arguments_and_missing_servos_fail_in_one_line(
    bus: EmulatedBus, clock: FakeClock
) -> None:
    with pytest.raises(ConnectionError, match="servo 3 does not answer"):
        DynamixelDriver(port=bus.port, ids=[1, 3], latency_timer_ms=LATENCY_MS, clock=clock)
    with pytest.raises(ValueError, match="serve with --realtime"):
        _driver(bus, clock, mode="lockstep")
    with pytest.raises(ValueError, match="ids"):
        DynamixelDriver(port=bus.port, ids="1,x")
    with pytest.raises(ValueError, match="operating_mode"):
        _driver(bus, clock, operating_mode="velocity")
    with pytest.raises(ConnectionError, match="cannot open"):
        DynamixelDriver(port="/nonexistent/ttyUSB9", ids=1)
    assert all(s.torque_on is False for s in bus.servos.values())  # nothing was enabled
    with EmulatedBus([1], model_number=1060) as xl430:  # XL430-W250: no current control
        with pytest.raises(ValueError, match="no current control"):
            DynamixelDriver(port=xl430.port, ids=1, operating_mode="current",
                            latency_timer_ms=LATENCY_MS)


def test_writes_move_the_servos_and_reads_see_it(bus: EmulatedBus, clock: FakeClock) -> None:
    driver = _driver(bus, clock)
    obs0 = driver.reset()
    np.testing.assert_allclose(obs0.state, 0.0, atol=TICK)
    driver.apply(_cmd([0.5, -0.3]))
    _settle(driver)
    clock.advance_ns(S // 20)  # one time constant of the emulated lag
    obs = driver.observe()
    assert obs.t_ns == clock.now_ns() and not obs.stale
    expect = np.array([0.5, -0.3]) * (1 - math.exp(-1))
    np.testing.assert_allclose(obs.state[:2], expect, atol=2 * TICK)
    np.testing.assert_allclose(obs.state[2:], (np.array([0.5, -0.3]) - expect) / 0.05, rtol=0.02)
    clock.advance_ns(S)
    np.testing.assert_allclose(driver.observe().state[:2], [0.5, -0.3], atol=TICK)
    driver.close()

    current = _driver(bus, clock, operating_mode="current")
    start = current.reset().state[:2]  # where the position goals left them
    current.apply(_cmd([0.5, -0.5]))
    _settle(current)
    clock.advance_ns(S)  # the emulated servo turns at 2 rad/s per A
    turned = start + np.array([1.0, -1.0])
    expect = np.concatenate([turned, [1.0, -1.0]])
    np.testing.assert_allclose(current.observe().state, expect, atol=0.02)
    current.close()


def test_a_lost_or_corrupt_reply_gives_the_last_reading_flagged_stale(
    bus: EmulatedBus, clock: FakeClock
) -> None:
    driver = _driver(bus, clock)
    driver.reset()
    driver.apply(_cmd([1.0, 1.0]))
    _settle(driver)
    clock.advance_ns(S // 100)
    good = driver.observe()
    for fault in (bus.drop_status, bus.corrupt_crc):
        fault(2, 1)
        clock.advance_ns(S // 10)  # the servos moved meanwhile: no reading may claim that
        bad = driver.observe()
        assert bad.stale and bad.t_ns == good.t_ns
        np.testing.assert_array_equal(bad.state, good.state)
        good = driver.observe()  # the next sync read is whole again
        assert not good.stale and good.t_ns == clock.now_ns()
    c = driver.counters()
    assert c["comm_errors"] == 2 and c["stale_reads"] == 2 and c["servo_errors"] == 0
    driver.close()


def test_a_hardware_alarm_is_counted_and_logged_once(
    bus: EmulatedBus, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    driver = _driver(bus, clock)
    driver.reset()
    bus.set_hardware_error(2, 0b100)  # overheating: the servo drops its torque
    with caplog.at_level(logging.ERROR, logger="hw_bridge.dynamixel"):
        for _ in range(3):
            clock.advance_ns(S // 100)
            assert not driver.observe().stale  # the data of an alarmed servo still counts
    c = driver.counters()
    assert c["servo_errors"] == 3 and c["servo2_error"] == 0x80 and c["comm_errors"] == 0
    alarms = [r for r in caplog.records if "servo 2 reports" in r.getMessage()]
    assert len(alarms) == 1 and not bus.servos[2].torque_on
    driver.close()
    with pytest.raises(ConnectionError, match="servo 2 is in hardware alarm"):
        _driver(bus, clock)


def test_out_of_limit_goals_are_clipped_to_the_registers(
    bus: EmulatedBus, clock: FakeClock
) -> None:
    driver = _driver(bus, clock)
    driver.reset()
    driver.write(np.array([10.0, -10.0]))  # past the spec: a caller that skipped the limits
    _settle(driver)
    assert bus.servos[1].peek(ADDR_GOAL_POSITION, 4) == 4095
    assert bus.servos[2].peek(ADDR_GOAL_POSITION, 4) == 1024
    driver.close()
    current = _driver(bus, clock, operating_mode="current")
    current.write(np.array([-50.0, 50.0]))
    _settle(current)
    assert bus.servos[1].peek(ADDR_GOAL_CURRENT, 2, signed=True) == -1193
    assert bus.servos[2].peek(ADDR_GOAL_CURRENT, 2, signed=True) == 372
    assert bus.servos[1].limit_refusals == bus.servos[2].limit_refusals == 0
    current.close()


def test_disconnect_turns_torque_off_and_is_idempotent(bus: EmulatedBus, clock: FakeClock) -> None:
    driver = _driver(bus, clock)
    assert all(s.torque_on for s in bus.servos.values())
    driver.close()
    assert not any(s.torque_on for s in bus.servos.values())
    driver.disconnect()
    driver.close()
    with pytest.raises(DriverNotConnected):
        driver.read()
    driver.reset()  # connects again: torque back on, holding where the servos are
    assert all(s.torque_on for s in bus.servos.values()) and driver.connected
    driver.close()


def test_safe_action_holds_and_torque_off_mode_stops_until_reset(
    bus: EmulatedBus, clock: FakeClock
) -> None:
    driver = _driver(bus, clock, safe="torque_off", operating_mode="position,current")
    driver.reset()
    driver.apply(_cmd([0.4, 0.2]))
    _settle(driver)
    clock.advance_ns(S // 2)
    obs = driver.observe()
    hold = driver.safe_action(obs.state)
    assert hold[0] == pytest.approx(obs.state[0]) and hold[1] == 0.0  # hold / zero current
    driver.apply(_cmd(list(hold), fallback="watchdog"))  # what the server's watchdog sends
    assert not any(s.torque_on for s in bus.servos.values())
    assert driver.counters()["torque_offs"] == 1
    with pytest.raises(TorqueOff):
        driver.apply(_cmd([0.0, 0.0]))
    moved = bus.servos[1].peek(132, 4, signed=True)
    driver.reset()  # home: goal = present position, then torque on
    assert all(s.torque_on for s in bus.servos.values())
    assert bus.servos[1].peek(ADDR_GOAL_POSITION, 4, signed=True) == moved
    assert bus.servos[2].peek(ADDR_OPERATING_MODE, 1) == 0
    driver.apply(_cmd([0.0, 0.0]))  # commands go through again
    driver.close()


# -- served over the bridge --------------------------------------------------------------------


def test_served_driver_follows_a_remote_controller_and_goes_safe_when_it_falls_silent(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    with EmulatedBus([1, 2]) as bus:
        bus.servos[2].poke(ADDR_MIN_POSITION_LIMIT, 4, 1024)
        driver = DynamixelDriver(port=bus.port, ids=[1, 2], safe="torque_off",
                                 latency_timer_ms=LATENCY_MS)
        rs = serve(driver, mode="realtime", watchdog_ms=100.0, bind=f"ipc://{tmp_path}/dxl.sock")
        with RemotePlant(rs.address) as plant:
            spec = plant.spec()
            assert spec.name == "dynamixel" and spec.action_low[1] == pytest.approx(-math.pi / 2)
            plant.reset()
            for k in range(30):  # 0.3 s at 100 Hz; the spec's rate limit is ~4.8 rad/s
                obs = plant.next_observation(1.0)
                now = plant.clock.now_ns()
                plant.apply(Command(seq=k, t_ns=now, action=np.array([0.3, -2.0]),
                                    deadline_ns=now + S // 10))
            obs = plant.next_observation(1.0)
            assert obs.state[0] == pytest.approx(0.3, abs=0.05)  # moved, through the bridge
            # heading for -2.0, clamped to servo 2's limit, on its way at the rate limit
            assert -math.pi / 2 - TICK <= obs.state[1] < -1.0
            assert bus.servos[2].limit_refusals == 0
            silent_since = time.monotonic()
            while not plant.safe and time.monotonic() - silent_since < 3.0:
                plant.next_observation(0.1)
            assert plant.safe and time.monotonic() - silent_since < 1.0
            assert not any(s.torque_on for s in bus.servos.values())
            counters = rs.server.counters
            assert counters["watchdog_trips"] == 1 and counters["plant_torque_offs"] == 1
            assert counters["applied"] >= 25 and counters["plant_comm_errors"] == 0
        rs.stop()
        driver.close()


def test_bench_measures_the_driver_on_a_bus_served_by_another_process() -> None:
    (row,) = bench(counts=(2,), n=20)
    assert row["servos"] == 2 and row["comm_errors"] == 0
    assert 0 < row["read_p50_us"] <= row["read_p99_us"] < 1e6
    assert 0 < row["write_p50_us"] <= row["write_p99_us"] < 1e6
