"""A controller process for the fault tests: drives a RemotePlant at the plant's rate forever.

Usage: python _controller.py ADDRESS ACTION. Prints "ready" once the handshake is done.
"""

from __future__ import annotations

import sys

import numpy as np

from hw_bridge import RemotePlant
from runtime import Command


def main() -> None:
    plant = RemotePlant(sys.argv[1], connect_timeout_s=10.0)
    action = np.array([float(sys.argv[2])])
    period = plant.spec().period_ns
    print("ready", flush=True)
    k = 0
    while True:
        now = plant.clock.now_ns()
        plant.observe()
        plant.apply(Command(seq=k, t_ns=now, action=action, deadline_ns=now + 2 * period))
        k += 1
        plant.clock.sleep_until_ns(now + period)


if __name__ == "__main__":
    main()
