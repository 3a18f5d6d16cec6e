"""Message builders for driving a `ServerCore` or a raw socket in tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from hw_bridge.codec import decode, encode, encode_array, message


def hello(seq: int = 1, *, role: str = "control", t_ns: int = 0, **kw: Any) -> bytes:
    return encode(message("hello", seq, t_ns, versions=[1], role=role, name="test", **kw))


def command(
    seq: int,
    action: Any,
    *,
    stream: int = 7,
    t_ns: int = 0,
    deadline_ns: int | None = None,
    tick: int | None = None,
) -> bytes:
    return encode(
        message(
            "command",
            seq,
            t_ns,
            stream=stream,
            tick=seq if tick is None else tick,
            obs_seq=-1,
            action=encode_array(np.asarray(action, dtype=np.float64)),
            deadline_ns=deadline_ns,
        )
    )


def heartbeat(seq: int, t_ns: int = 0) -> bytes:
    return encode(message("heartbeat", seq, t_ns))


def replies(
    outbox: list[tuple[bytes, bytes]], ident: bytes, kind: str | None = None
) -> list[dict[str, Any]]:
    out = [decode(p) for i, p in outbox if i == ident]
    return [m for m in out if kind is None or m["type"] == kind]
