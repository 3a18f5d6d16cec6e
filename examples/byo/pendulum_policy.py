"""A state-feedback policy for gymnasium's InvertedPendulum-v5 (a `py:` policy).

    rtdiff run --plant gym:InvertedPendulum-v5 --policy py:examples/byo/pendulum_policy.py:policy

The state is [cart x, pole angle, cart velocity, pole angular velocity]; the action is the force
on the cart, within [-3, 3] (the plant's limits; rtdiff clips what it sends). `--policy-arg
gains=[1,10,0.5,1]` changes the gains.
"""

import numpy as np


def policy(state: np.ndarray, gains: tuple[float, ...] = (1.0, 10.0, 0.5, 1.0)) -> np.ndarray:
    return np.array([float(np.dot(gains, state))])
