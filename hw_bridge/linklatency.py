"""How long commands take to reach the plant, and the transport margin that follows from it.

A realtime plant counts a command `late` when it reaches the plant after its deadline. What
the controller controls is when the command *leaves*; the link (two ZeroMQ I/O threads, a
network, the server's own loop and the plant's lock) decides how long it then takes. The
server reports that time for every command it hands to the plant (`state.ack_lag_ns`) and for
every command that arrived too late (`error.lag_ns`), each as a server-clock instant minus the
command's client-clock `t_ns` (docs/protocol.md, section 8). Subtracting the client's offset
estimate gives the send-to-plant latency; because the same offset maps the deadlines, its
error cancels out of the margin.

`LinkLatency` keeps the last `window` latencies (a preallocated ring, one write per sample)
and offers a margin: the `quantile` of the window plus a guard (`guard_frac` of it, at least
`guard_ns`), so a run's controller counts as missed what the plant would count late, bar the
rare stall beyond the quantile. Until `min_samples` (200) have arrived it offers nothing (None)
and the control loop keeps its configured margin: with fewer, p99 is the maximum, and the first
commands of a run wait behind the plant's reset (a margin of 2 ms at 250 Hz comes of it).
The quantile is recomputed at most once per `refresh` samples (the loop asks every 32 ticks).
"""

from __future__ import annotations

import numpy as np

from runtime.stats import percentiles

_BOUND = 2**62


class LinkLatency:
    """Send-to-plant latencies (ns) and the transport margin they call for.

    Example:
        lat = LinkLatency()
        lat.add(ack_lag_ns - offset_ns)      # one per acknowledged command
        margin = lat.margin_ns()             # None until 200 samples, then p99 + guard
    """

    def __init__(
        self,
        *,
        window: int = 512,
        quantile: float = 0.99,
        guard_frac: float = 0.1,
        guard_ns: int = 20_000,
        min_samples: int = 200,
        refresh: int = 32,
    ) -> None:
        if window < 1 or not 0.0 < quantile <= 1.0 or min_samples < 1 or refresh < 1:
            raise ValueError(f"{window=}, {quantile=}, {min_samples=}, {refresh=}")
        if guard_frac < 0 or guard_ns < 0:
            raise ValueError(f"{guard_frac=} and {guard_ns=} must be >= 0")
        self._ring = np.zeros(window, dtype=np.int64)
        self._n = 0  # samples ever added
        self.quantile = quantile
        self.guard_frac = guard_frac
        self.guard_ns = guard_ns
        self.min_samples = min(min_samples, window)
        self.refresh = refresh
        self._margin: int | None = None
        self._at = -1  # sample count when `_margin` was computed
        self.max_ns = 0  # the largest latency seen (stalls beyond the quantile show here)

    def __len__(self) -> int:
        return min(self._n, self._ring.size)

    def add(self, latency_ns: int) -> None:
        """One command's send-to-plant latency. Negative values (an offset estimate that moved
        under the sample) are kept: they are as true as the deadlines mapped with it. A value
        beyond +-2**62 ns (146 years: a peer's clock, not a latency) is dropped."""
        if not -_BOUND < latency_ns < _BOUND:
            return
        self._ring[self._n % self._ring.size] = latency_ns
        self._n += 1
        if latency_ns > self.max_ns:
            self.max_ns = latency_ns

    def reset(self) -> None:
        """Forget every sample (a new link, e.g. after a reconnection to another server)."""
        self._n = 0
        self._margin = None
        self._at = -1
        self.max_ns = 0

    def quantile_ns(self) -> int | None:
        n = len(self)
        if n < self.min_samples:
            return None
        # the 'higher' convention: of 512 samples, p99 is the 6th largest (never interpolated
        # below a measured value)
        k = min(n - 1, int(np.ceil(self.quantile * n)) - 1)
        return int(np.partition(self._ring[:n], k)[k])

    def margin_ns(self) -> int | None:
        """The quantile plus its guard; None until `min_samples` latencies are in."""
        if self._at >= 0 and self._n - self._at < self.refresh:
            return self._margin
        q = self.quantile_ns()
        if q is None:
            return None
        self._at = self._n
        self._margin = max(0, q) + max(self.guard_ns, round(self.guard_frac * max(0, q)))
        return self._margin

    def summary_us(self) -> dict[str, float]:
        """p50 / p99 / max of the window, microseconds (empty dict without samples)."""
        n = len(self)
        if n == 0:
            return {}
        q = percentiles(self._ring[:n], (50, 99), method="higher")
        return {"p50": q["p50"] / 1e3, "p99": q["p99"] / 1e3, "max": self.max_ns / 1e3,
                "n": float(self._n)}
