"""`rtdiff run` stops cleanly on SIGINT or SIGTERM, whatever disposition it inherited."""

from __future__ import annotations

import os
import signal

import pytest

from runtime.cli.run import stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_asks_the_loop_to_stop_and_a_second_one_interrupts(sig: int) -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job has
    try:
        asked: list[int] = []
        with stop_on_signals(lambda: asked.append(1)):
            os.kill(os.getpid(), sig)
            assert asked == [1]  # handled, not ignored, and no KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), sig)
        assert asked == [1]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored after the block
    finally:
        signal.signal(signal.SIGINT, before)
