"""The ZeroMQ + msgpack link between a controller and a simulated or physical plant.

Protocol v1 is specified in `docs/protocol.md`. Plant side: `PlantServer` serves any
`runtime.Plant` (a simulation, or real hardware through a `Driver`), with a watchdog and
limits. Controller side: `RemotePlant` is a `runtime.Plant` over the link, `RemoteEnv` a
`gymnasium.Env` over it. `hw_bridge` depends on `runtime` only (never torch, sims or policies).
"""

from typing import Any

from hw_bridge.client import BridgeError, RemotePlant
from hw_bridge.clocksync import ClockSync
from hw_bridge.codec import PROTOCOL_VERSION, ProtocolError, decode, encode
from hw_bridge.core import SafetyEvent, ServerConfig, ServerCore
from hw_bridge.driver import Driver, FirstOrderMotor, motor_spec
from hw_bridge.safety import ActionLimiter, ActionRejected, Watchdog
from hw_bridge.server import PlantServer

__all__ = [
    "PROTOCOL_VERSION",
    "ActionLimiter",
    "ActionRejected",
    "BridgeError",
    "ClockSync",
    "Driver",
    "FirstOrderMotor",
    "PlantServer",
    "ProtocolError",
    "RemoteEnv",
    "RemotePlant",
    "SafetyEvent",
    "ServerConfig",
    "ServerCore",
    "Watchdog",
    "decode",
    "encode",
    "motor_spec",
]


def __getattr__(name: str) -> Any:
    # RemoteEnv imports gymnasium; only pay for it when asked.
    if name == "RemoteEnv":
        from hw_bridge.env import RemoteEnv

        return RemoteEnv
    raise AttributeError(f"module 'hw_bridge' has no attribute {name!r}")
