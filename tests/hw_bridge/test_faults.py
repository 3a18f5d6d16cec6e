"""Faults: the controller process dies mid-run; the server restarts under a connected client."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hw_bridge import FirstOrderMotor, RemotePlant
from runtime import Command

CONTROLLER = str(Path(__file__).with_name("_controller.py"))
WATCHDOG_MS = 100.0
# What the test tolerates beyond the guarantee (watchdog + one period) for a 2-core machine
# shared with other jobs: the server thread may be scheduled a little late. The measured
# figure is printed (pytest -s) so a regression shows even when it passes.
SCHEDULING_SLACK_MS = 20.0


def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _start_controller(address: str, action: float) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, CONTROLLER, address, str(action)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise AssertionError(f"controller did not start: {line!r}")
    return p


def test_killed_controller_trips_watchdog_in_time_and_a_new_one_resumes(serve) -> None:
    motor = FirstOrderMotor(mode="realtime", rate_hz=100.0)
    rs = serve(motor, mode="realtime", watchdog_ms=WATCHDOG_MS, lease_ms=300.0)
    period_ms = motor.spec().period_s * 1e3
    server = rs.server
    ctl = _start_controller(rs.address, 0.2)
    try:
        _until(lambda: server.counters["applied"] >= 20, 15.0, "the controller to run")
        assert motor.last_action[0] == pytest.approx(0.2)
        ctl.kill()
        t_kill_ns = time.perf_counter_ns()  # the server's clock is perf_counter_ns too
        ctl.wait()
        _until(lambda: len(server.events) > 0, 5.0, "the watchdog")
    finally:
        ctl.kill()
    ev = server.events[0]
    since_last_cmd_ms = (ev.t_ns - ev.last_valid_ns) / 1e6
    since_kill_ms = (ev.t_ns - t_kill_ns) / 1e6
    print(
        f"\nwatchdog: safe action {since_last_cmd_ms:.1f} ms after the last command, "
        f"{since_kill_ms:.1f} ms after the kill (limit {WATCHDOG_MS + period_ms:.0f} ms)"
    )
    assert ev.kind == "watchdog"
    assert since_last_cmd_ms <= WATCHDOG_MS + period_ms + SCHEDULING_SLACK_MS
    assert since_kill_ms <= WATCHDOG_MS + period_ms + SCHEDULING_SLACK_MS
    assert motor.last_action[0] == 0.0  # the safe action reached the "hardware"
    assert server.counters["watchdog_trips"] == 1

    applied_before = server.counters["applied"]
    ctl2 = _start_controller(rs.address, 0.1)  # a fresh process: handshake, fresh stream
    try:
        _until(lambda: server.counters["applied"] >= applied_before + 10, 15.0, "control to resume")
        assert not server.core.safe
        assert motor.last_action[0] == pytest.approx(0.1)
    finally:
        ctl2.kill()
        ctl2.wait()


def test_client_reconnects_after_server_restart_and_says_so(
    serve, caplog: pytest.LogCaptureFixture
) -> None:
    rs1 = serve(mode="realtime")
    rs1.server.core.state_seq = 10**6  # an old server that ran long: the new one counts from 1
    address = rs1.address  # tcp://127.0.0.1:PORT, the port picked by the OS
    caplog.set_level(logging.INFO, logger="hw_bridge")
    with RemotePlant(address, timeout_s=0.3) as plant:
        before = plant.next_observation(1.0)
        rs1.stop()
        time.sleep(0.05)
        plant.observe()  # whatever was still queued
        down = plant.observe()
        assert down.stale and down.seq >= before.seq  # the last state, flagged; never invented
        serve(mode="realtime", bind=address)  # a new server process would look the same

        def reconnected() -> bool:
            plant.observe()
            return plant.counts["reconnects"] >= 1

        _until(reconnected, 10.0, "the client to reconnect")
        fresh = plant.next_observation(1.0)
        assert not fresh.stale
        t = plant.clock.now_ns()
        plant.apply(Command(seq=0, t_ns=t, action=np.array([0.1]), deadline_ns=t + 10**7))
        _until(lambda: plant.counters()["applied"] >= 1, 5.0, "a command on the new server")
    text = caplog.text
    assert "reconnected to" in text and "server restarted" in text
