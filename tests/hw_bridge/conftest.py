"""Fixtures: a PlantServer on a free port (or an ipc path in tmp), run in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hw_bridge import FirstOrderMotor, PlantServer


class RunningServer:
    def __init__(self, server: PlantServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()
        if not server.serving.wait(5.0):
            raise RuntimeError("server did not start")

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5.0)
        self.server.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(plant: Any = None, *, bind: str = "tcp://127.0.0.1:*", **kw: Any) -> RunningServer:
        if plant is None:
            plant = FirstOrderMotor(mode=kw.get("mode", "lockstep"))
        rs = RunningServer(PlantServer(plant, bind=bind, **kw))
        started.append(rs)
        return rs

    yield start
    for rs in started:
        if rs.thread.is_alive():
            rs.stop()
