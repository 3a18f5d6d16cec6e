"""How a robot becomes a plant: a `hw_bridge.Driver` subclass (a `py:` plant).

    rtdiff check --plant py:examples/byo/my_robot.py:MyRobot --mode realtime
    rtdiff serve --plant py:examples/byo/my_robot.py:MyRobot --realtime --bind tcp://0.0.0.0:5555

A driver says four things: `connect()` opens the device, `read()` returns the newest measured
state and when it was measured, `write(action)` sends one actuator command (already finite and
within the spec's limits), `disconnect()` closes the device. Everything else (sequence numbers,
stale readings, deadlines, the watchdog's safe action, the wire protocol) comes from the base
class and the server. Replace `FakeDevice` with your device's own library; the keyword
arguments of `__init__` arrive from `--plant-arg KEY=VALUE`.
"""

from __future__ import annotations

import math

import numpy as np

from hw_bridge import Driver
from runtime import PlantSpec


class FakeDevice:
    """Stands in for a motor controller on a serial port: a wheel that spins up toward the
    commanded speed. A real driver talks to hardware here instead."""

    def __init__(self, port: str) -> None:
        self.port = port
        self.speed = 0.0
        self.angle = 0.0
        self.target = 0.0
        self.t = 0.0

    def poll(self, now_s: float) -> tuple[float, float]:
        dt, self.t = now_s - self.t, now_s
        self.speed += (self.target - self.speed) * (1.0 - math.exp(-dt / 0.1))
        self.angle += self.speed * dt
        return self.angle, self.speed


class MyRobot(Driver):
    """One wheel: state [angle_rad, speed_rad_s], action [target speed_rad_s] in +-5."""

    def __init__(self, port: str = "/dev/ttyUSB0", rate_hz: float = 100.0) -> None:
        spec = PlantSpec(
            name="my-robot", state_dim=2, action_dim=1,
            action_low=np.array([-5.0]), action_high=np.array([5.0]), rate_hz=rate_hz,
            state_names=("angle_rad", "speed_rad_s"), action_names=("target_speed_rad_s",),
            episode_ticks=round(10 * rate_hz),
        )
        super().__init__(spec)
        self.port = port
        self.device: FakeDevice | None = None

    def connect(self) -> None:
        self.device = FakeDevice(self.port)
        self.device.t = self.clock.now_ns() * 1e-9

    def read(self) -> tuple[np.ndarray, int]:
        assert self.device is not None
        t_ns = self.clock.now_ns()
        return np.array(self.device.poll(t_ns * 1e-9)), t_ns

    def write(self, action: np.ndarray) -> None:
        assert self.device is not None
        self.device.target = float(action[0])

    def disconnect(self) -> None:
        self.device = None

    def safe_action(self, state: np.ndarray) -> np.ndarray:
        return np.zeros(1)  # stop the wheel when the controller goes silent
