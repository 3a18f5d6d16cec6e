"""What the controller sends when the planner has nothing usable in time.

Used when the tick's action is not ready by the deadline, or when the planner's action is not
finite. Every use is counted by the loop and recorded in the trace (`TickRecord.fallback`).

- `hold`: repeat the last command (what most drives do on their own when commands stop).
- `decay`: the last command scaled by `factor` per consecutive fallback tick, heading to zero.
- `zero`: the zero command, clipped into the limits.
- `SafePolicy`: a user-supplied cheap controller `f(state) -> action` (e.g. a PD to a rest pose).

All of them write into a caller-owned buffer: no allocation on the per-tick path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from runtime.protocols import FloatArray

# Codes stored in TickRecord.fallback (the trace's int8 column); 0 means the planner's own
# action went out. FALLBACK_NAMES is the one table of their names: `Command.fallback` carries
# the name ("" for code 0, as on the wire) and run summaries count fallbacks by name.
CODE_NONE = 0
CODE_HOLD = 1
CODE_DECAY = 2
CODE_SAFE = 3
CODE_NONFINITE = 4  # the planner's action had a NaN/inf; the fallback replaced it
CODE_ZERO = 5
FALLBACK_NAMES = {
    CODE_NONE: "",
    CODE_HOLD: "hold",
    CODE_DECAY: "decay",
    CODE_SAFE: "safe",
    CODE_NONFINITE: "nonfinite",
    CODE_ZERO: "zero",
}


class Fallback:
    """Base class: `fill(out, last, state)` writes the fallback action into `out` (Da,)."""

    name = "hold"
    code = CODE_HOLD

    def fill(self, out: FloatArray, last: FloatArray, state: FloatArray) -> None:
        np.copyto(out, last)


class HoldLast(Fallback):
    name = "hold"
    code = CODE_HOLD


class DecayToZero(Fallback):
    """`last * factor**n` on the n-th consecutive fallback tick."""

    name = "decay"
    code = CODE_DECAY

    def __init__(self, factor: float = 0.9) -> None:
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"{factor=} must be in [0, 1)")
        self.factor = factor

    def fill(self, out: FloatArray, last: FloatArray, state: FloatArray) -> None:
        np.multiply(last, self.factor, out=out)


class ZeroAction(Fallback):
    name = "zero"
    code = CODE_ZERO

    def fill(self, out: FloatArray, last: FloatArray, state: FloatArray) -> None:
        out.fill(0.0)


class SafePolicy(Fallback):
    """A user-supplied cheap controller, `policy(state (Ds,)) -> action (Da,)`."""

    name = "safe"
    code = CODE_SAFE

    def __init__(self, policy: Callable[[FloatArray], FloatArray]) -> None:
        self.policy = policy

    def fill(self, out: FloatArray, last: FloatArray, state: FloatArray) -> None:
        np.copyto(out, self.policy(state))


def make_fallback(name: str) -> Fallback:
    """`hold`, `decay` or `zero` by name (the CLI's `--fallback`)."""
    table: dict[str, Callable[[], Fallback]] = {
        "hold": HoldLast,
        "decay": DecayToZero,
        "zero": ZeroAction,
    }
    if name not in table:
        raise ValueError(f"unknown fallback {name!r}; expected one of {sorted(table)}")
    return table[name]()
