"""A joint-space PD controller for examples/byo/arm.xml (a `py:` policy).

    rtdiff run --plant mjcf:examples/byo/arm.xml --plant-arg keyframe=folded \
        --policy py:examples/byo/arm_policy.py:reach --policy-arg target=[1.0,0.5]

The state is [shoulder, elbow, their velocities] (the MJCF plant's default: joint positions
then velocities); the action is the two motor torques.
"""

import numpy as np


def reach(
    state: np.ndarray, target: tuple[float, float] = (1.0, 0.5), kp: float = 4.0, kd: float = 0.4
) -> np.ndarray:
    q, qd = state[:2], state[2:4]
    return kp * (np.asarray(target) - q) - kd * qd
