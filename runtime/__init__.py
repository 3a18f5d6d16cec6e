"""rtdiff's floor: clocks, the tick loop, deadlines, budgets, fallbacks, traces and stats.

Imports none of torch, mujoco, gymnasium or zmq (only `runtime.cli` reaches the other packages,
lazily, inside the subcommand that needs them).
"""

from runtime.clock import FakeClock, MonotonicClock
from runtime.protocols import (
    Clock,
    Command,
    EpisodeOver,
    ExecutesPlans,
    LateCommand,
    Observation,
    Planner,
    PlanSource,
    Plant,
    PlantSpec,
)

__all__ = [
    "Clock",
    "Command",
    "EpisodeOver",
    "ExecutesPlans",
    "FakeClock",
    "LateCommand",
    "MonotonicClock",
    "Observation",
    "PlanSource",
    "Planner",
    "Plant",
    "PlantSpec",
]
