"""`rtdiff serve --audit FILE`: the audit of what the plant applied, written when SIGTERM stops
the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from hw_bridge import RemotePlant
from runtime import Command
from runtime.cli.plantproc import free_port, wait_for_server


def test_serve_audit_writes_what_the_plant_applied_on_sigterm(tmp_path: Path) -> None:
    audit = tmp_path / "audit.json"
    address = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--task", "double-pendulum",
         "--realtime", "--bind", address, "--audit", str(audit)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_server(server)
        with RemotePlant(address) as plant:
            plant.reset(0)
            for k in range(5):
                obs = plant.next_observation(1.0)
                now = plant.clock.now_ns()
                plant.apply(Command(k, now, np.zeros(1), now + 8_000_000, obs_t_ns=obs.t_ns))
            plant.next_observation(1.0)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    out = json.loads(audit.read_text())
    c = out["counts"]
    assert c["duplicate_applied"] == c["stale_applied"] == c["invalid_applied"] == 0
    assert 1 <= c["applied"] <= 5 and out["sessions"] == 1
    assert out["server_counters"]["applied"] == c["applied"]
    assert out["watchdog_ms"] == 100.0 and out["rate_hz"] == 100.0
    # the goodbye may or may not have been handled before the SIGTERM: events, if any, are it
    assert all(e["kind"] == "goodbye" for e in out["events"])
