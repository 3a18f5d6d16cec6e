"""`wait_for_server`: a plant server's first lines decide whether it is serving."""

from __future__ import annotations

import io
from typing import Any

import pytest

from runtime.cli import CliError
from runtime.cli.plantproc import wait_for_server


class Lines(io.StringIO):
    """stderr whose `readline` calls are counted (`read`, the drain thread's, is not)."""

    readlines_done = 0

    def readline(self, *args: Any) -> str:  # type: ignore[override]
        self.readlines_done += 1
        return super().readline(*args)


class FakeServer:
    def __init__(self, text: str, code: int | None = None) -> None:
        self.stderr = Lines(text)
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode


def test_waits_past_the_scheduling_report_for_the_serving_line() -> None:
    server: Any = FakeServer("rtdiff serve: SCHED_FIFO is not supported on this platform\n"
                             "rtdiff serve: bimodal (realtime, 250 Hz) on tcp://127.0.0.1:5\n")
    wait_for_server(server, timeout_s=1.0)  # returns: serving
    assert server.stderr.readlines_done == 2  # not fooled by the first "rtdiff serve:" line


def test_a_server_that_refuses_to_start_is_a_one_line_error() -> None:
    server: Any = FakeServer("rtdiff serve: error: rate_hz=1000.0 for task 'bimodal' must be "
                             "within 10x of its native 50.0 Hz\n", code=2)
    with pytest.raises(CliError, match=r"refused to start: rate_hz=1000\.0 for task 'bimodal'"):
        wait_for_server(server, timeout_s=1.0)
