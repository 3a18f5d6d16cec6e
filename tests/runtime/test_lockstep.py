"""run_lockstep: the same calls and numbers as a hand-written lockstep loop; PlantTap's hooks."""

from __future__ import annotations

import numpy as np

from runtime.lockstep import PlantTap, ResetOnce, run_lockstep
from runtime.protocols import Command, Observation

from .toys import IntegratorPlant


class RandomPlanner:
    """Draws a new action at every reset and observe from a seeded generator, always inside the
    plant's limits (the loop clips, a hand-written loop did not); logs its calls."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.calls: list[str] = []
        self.surprise = 0.25
        self._a = np.zeros(1)

    def reset(self, obs: Observation) -> None:
        self.calls.append("reset")
        self._a[0] = self.rng.uniform(-1.0, 1.0)

    def observe(self, obs: Observation) -> None:
        self.calls.append("observe")
        self._a[0] = np.tanh(self.rng.uniform(-1.0, 1.0) - 0.5 * float(obs.state[0]))

    def refine(self, budget_ns: int) -> int:
        self.calls.append("refine")
        return 1

    def action(self) -> np.ndarray:
        self.calls.append("action")
        return self._a


def by_hand(
    plant: IntegratorPlant, planner: RandomPlanner, *, episodes: int, seed: int, steps: int
) -> tuple[list[float], list[float]]:
    """The lockstep loop the evaluations used to write out: (actions sent, episode returns)."""
    actions, returns = [], []
    for ep in range(episodes):
        obs = plant.reset(seed=seed + ep)
        planner.reset(obs)
        k, total = 0, 0.0
        while True:
            if k > 0:
                planner.observe(obs)
            for _ in range(steps):
                if planner.refine(0) <= 0:
                    break
            a = planner.action().copy()
            actions.append(float(a[0]))
            plant.apply(Command(seq=k, t_ns=0, action=a, deadline_ns=2**62))
            obs = plant.observe()
            total += obs.reward
            k += 1
            if obs.done:
                break
        returns.append(total)
    return actions, returns


def test_run_lockstep_makes_the_calls_and_numbers_of_the_hand_written_loop() -> None:
    # 1 Hz: every command is in time for its (wall-clock) deadline however slow the machine
    ref_plant, ref_planner = IntegratorPlant(rate_hz=1.0, episode_ticks=20), RandomPlanner(3)
    actions, returns = by_hand(ref_plant, ref_planner, episodes=3, seed=7, steps=2)
    plant, planner = IntegratorPlant(rate_hz=1.0, episode_ticks=20), RandomPlanner(3)
    res = run_lockstep(plant, planner, episodes=3, seed=7, steps_per_tick=2)
    assert planner.calls == ref_planner.calls  # one reset per episode, the first one included
    assert planner.calls.count("reset") == 3
    assert [e.episode_return for e in res.episodes] == returns
    assert [e.ticks for e in res.episodes] == [20, 20, 20]
    np.testing.assert_array_equal(res.records["action"][:, 0], np.float32(actions))
    assert [float(c.action[0]) for c in plant.applied] == actions
    assert list(res.records["steps"]) == [2] * 60
    np.testing.assert_array_equal(res.records["surprise"], np.float32(0.25))  # forwarded


class Tapped(PlantTap):
    def __init__(self, plant: IntegratorPlant) -> None:
        super().__init__(plant)
        self.log: list[tuple[str, int]] = []

    def started(self, obs: Observation) -> None:
        self.log.append(("started", obs.seq))

    def applied(self, cmd: Command) -> None:
        assert self.last is not None
        self.log.append(("applied", self.last.seq))  # the observation the command came from

    def observed(self, obs: Observation) -> None:
        self.log.append(("observed", obs.seq))


def test_plant_tap_sees_every_reset_command_and_observation_in_order() -> None:
    tap = Tapped(IntegratorPlant(rate_hz=1.0, episode_ticks=2))
    run_lockstep(tap, RandomPlanner(0), episodes=2, seed=0)
    # IntegratorPlant counts seq across resets and commands: reset 1, apply -> 2, apply -> 3
    assert tap.log == [
        ("started", 1), ("applied", 1), ("observed", 2), ("applied", 2), ("observed", 3),
        ("started", 4), ("applied", 4), ("observed", 5), ("applied", 5), ("observed", 6),
    ]


def test_reset_once_skips_only_a_repeated_reset_on_the_same_observation() -> None:
    planner = RandomPlanner(0)
    once = ResetOnce(planner)
    a = Observation(seq=1, t_ns=0, state=np.zeros(1))
    b = Observation(seq=1, t_ns=0, state=np.zeros(1))  # equal, but another observation
    once.reset(a)
    once.reset(a)
    once.reset(b)
    once.refine(0)
    once.reset(b)  # after a step, a reset is a reset
    assert planner.calls == ["reset", "reset", "refine", "reset"]
    assert once.surprise == 0.25  # every other attribute is the planner's
