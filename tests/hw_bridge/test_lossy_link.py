"""The client over a link that loses or duplicates messages: a lost reset is sent again, and
the `out_of_order` answer to a duplicated copy refuses nothing."""

from __future__ import annotations

from typing import Any

from hw_bridge import FirstOrderMotor, RemotePlant
from hw_bridge.codec import decode


def _serve_with(serve: Any, mangle: Any) -> Any:
    rs = serve(FirstOrderMotor(mode="realtime"), mode="realtime")
    core = rs.server.core
    handle = core.handle

    def handle_mangled(ident: bytes, payload: bytes) -> None:
        for p in mangle(decode(payload), payload):
            handle(ident, p)

    core.handle = handle_mangled
    return rs


def test_a_lost_reset_is_sent_again_and_the_episode_starts(serve) -> None:
    dropped: list[int] = []

    def lose_first_reset(msg: dict[str, Any], payload: bytes) -> list[bytes]:
        if msg["type"] == "reset" and not dropped:
            dropped.append(msg["seq"])
            return []
        return [payload]

    rs = _serve_with(serve, lose_first_reset)
    with RemotePlant(rs.address) as plant:
        plant.reset(0)
        assert dropped and plant.counts["resets_resent"] >= 1
        assert rs.server.counters["resets"] == 1


def test_a_duplicated_reset_is_not_taken_for_a_refusal(serve) -> None:
    def duplicate_resets(msg: dict[str, Any], payload: bytes) -> list[bytes]:
        return [payload, payload] if msg["type"] == "reset" else [payload]

    rs = _serve_with(serve, duplicate_resets)
    with RemotePlant(rs.address) as plant:
        for seed in range(3):
            plant.reset(seed)
        assert rs.server.counters["resets"] == 3
        assert rs.server.counters["out_of_order"] == 3  # each copy refused, never the original
