"""Clock-offset estimation between the two ends of the link (docs/protocol.md, section 8).

Each side stamps messages with its own monotonic clock. An exchange that carries four
timestamps (t1 client send, t2 server receive, t3 server send, t4 client receive) gives, as in
NTP, the offset (server - client) exactly when the two one-way delays are equal, and in any
case to within half the round trip. Queueing only ever lengthens a round trip, so among recent
samples the one with the smallest round trip is the most trustworthy; `ClockSync` keeps the
last `window` samples and uses that one.

The window is long on purpose (256 samples: about 25 s at the client's 100 ms heartbeat).
Every switch of the chosen sample moves the mapping between the two clocks, and with it every
deadline the controller sends, by up to half a round trip; on a loaded machine round trips of
several milliseconds come and go, and a 16-sample window switches every second or two, enough
to turn commands sent 2 ms early into "late" ones at the plant. Two monotonic clocks drift by
parts per million, microseconds over such a window.
"""

from __future__ import annotations

from collections import deque


class ClockSync:
    """NTP-style offset = server_clock - client_clock, from (t1, t2, t3, t4) samples.

    t1 client send, t2 server receive, t3 server send, t4 client receive:
    offset = ((t2 - t1) + (t3 - t4)) / 2, round trip = (t4 - t1) - (t3 - t2).
    """

    def __init__(self, window: int = 256) -> None:
        self.samples: deque[tuple[int, int]] = deque(maxlen=window)  # (rtt_ns, offset_ns)
        self.offset_ns = 0
        self.rtt_ns = 0

    def add(self, t1: int, t2: int, t3: int, t4: int) -> None:
        rtt = (t4 - t1) - (t3 - t2)
        if rtt < 0:
            return
        self.samples.append((rtt, ((t2 - t1) + (t3 - t4)) // 2))
        self.rtt_ns, self.offset_ns = min(self.samples)

    def reset(self) -> None:
        self.samples.clear()
        self.offset_ns = self.rtt_ns = 0
