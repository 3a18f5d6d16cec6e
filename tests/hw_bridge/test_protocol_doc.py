"""docs/protocol.md's example messages parse with the codec and survive a round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hw_bridge.codec import MESSAGE_TYPES, decode, decode_array, encode, spec_from_wire

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _bins(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"$bin"}:
            return bytes.fromhex(x["$bin"])
        return {k: _bins(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_bins(v) for v in x]
    return x


def _examples() -> list[dict[str, Any]]:
    text = DOC.read_text()
    return [_bins(json.loads(b)) for b in re.findall(r"```json msg\n(.*?)```", text, re.S)]


def test_doc_has_an_example_of_every_message_type() -> None:
    assert {m["type"] for m in _examples()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: m["type"])
def test_doc_example_decodes_and_round_trips(msg: dict[str, Any]) -> None:
    frame = encode(msg)
    decoded = decode(frame)
    assert decoded == msg
    assert encode(decoded) == frame
    if msg["type"] == "welcome":
        spec = spec_from_wire(msg["spec"])
        assert (spec.state_dim, spec.action_dim, spec.rate_hz) == (2, 1, 200.0)
    if msg["type"] == "command":
        np.testing.assert_array_equal(decode_array(msg["action"], field="a"), [0.25])


def test_doc_hex_dump_is_the_encoded_command_example() -> None:
    text = DOC.read_text()
    hexdump = re.search(r"```hex\n(.*?)```", text, re.S)
    assert hexdump is not None
    v1, v2 = [m for m in _examples() if m["type"] == "command"]
    assert v2["v"] == 2
    assert v1["v"] == 1 and "plan" not in v1
    assert bytes.fromhex("".join(hexdump.group(1).split())) == encode(v1)


def test_doc_v2_command_example_carries_a_plan_for_the_ticks_after_its_own() -> None:
    (cmd,) = [m for m in _examples() if m["type"] == "command" and m["v"] == 2]
    plan = decode_array(cmd["plan"], field="plan")
    assert plan.shape == (2, 1)
    assert cmd["plan_t0_ns"] > cmd["deadline_ns"] and cmd["plan_dt_ns"] == 5_000_000
