"""Per-peer token buckets: how the plant server keeps hostile peers from taking its time.

A flood costs the server twice: once to read and judge each frame, once to answer it. The
server cannot stop frames from arriving (ZeroMQ reads them; the kernel and the ROUTER's
receive high-water mark give back-pressure per connection), but it decides how much work each
one gets. `Buckets` gives each peer identity a budget of `rate` events per second with
bursts of `burst`: a frame over its peer's frame budget is dropped before decoding, an error
over its peer's reply budget is counted and not sent. The table holds at most `max_keys`
identities (a peer that opens thousands of connections gets thousands of identities); past
that the oldest entry is forgotten, which hands that identity a fresh, full bucket later: the
table's size is bounded and no legitimate peer is ever blocked by an eviction.

Times are the server clock's nanoseconds; no allocation per event once a key is in the table.
"""

from __future__ import annotations


class Buckets:
    """Token buckets keyed by peer identity (bytes), `rate` per second, `burst` deep.

    Example:
        b = Buckets(rate=100.0, burst=10, max_keys=1024)
        b.take(b"peer", now_ns)  # True while the peer is within its budget
    """

    __slots__ = ("_burst_ns", "_last", "_max_keys", "_ns_per_token")

    def __init__(self, *, rate: float, burst: int, max_keys: int) -> None:
        if not rate > 0 or burst < 1 or max_keys < 1:
            raise ValueError(f"{rate=} must be > 0, {burst=} and {max_keys=} >= 1")
        self._ns_per_token = 1e9 / rate
        self._burst_ns = burst * self._ns_per_token
        self._max_keys = max_keys
        # identity -> the instant its bucket would be full again ("virtual time": one float per
        # key; taking a token moves it one token's time later; the bucket is empty when that
        # instant is a whole burst ahead of now)
        self._last: dict[bytes, float] = {}

    def take(self, key: bytes, now_ns: int) -> bool:
        """Spend one token of `key`'s budget; False (nothing spent) when it has none left."""
        full_at = self._last.get(key)
        if full_at is None:
            if len(self._last) >= self._max_keys:
                del self._last[next(iter(self._last))]  # the oldest identity: bounded table
            self._last[key] = now_ns + self._ns_per_token
            return True
        if full_at < now_ns:
            full_at = now_ns
        if full_at + self._ns_per_token - now_ns > self._burst_ns + 1.0:  # 1 ns: rounding
            return False
        self._last[key] = full_at + self._ns_per_token
        return True

    def forget(self, key: bytes) -> None:
        self._last.pop(key, None)

    def __len__(self) -> int:
        return len(self._last)
