"""ArrivalWindow: client-request arrival times over SkyServe's 60 s QPS window.

The autoscaler reads it (QPS as SkyServe measures it). With several load balancers each
follower reports its arrivals to the leader as per-second counts of the seconds it completed
(``ArrivalReporter``, one batch a second, over the authenticated cluster call); the leader
merges them into its own window (``ArrivalInbox``), so its autoscaler sees all traffic. A count
is "load balancer X saw N requests in second S": merging is idempotent, so a batch that is
sent again (a lost answer) or a follower's whole window sent to a new leader counts once.
"""

from __future__ import annotations

import collections
import threading
from array import array
from collections.abc import Mapping

from lb_agent.constants import AUTOSCALER_QPS_WINDOW_SIZE_SECONDS


class ArrivalWindow:
    """Arrival timestamps of client requests, kept for ``window_seconds``.

    A request is recorded when it arrives, before a replica is chosen, so requests that end
    in a 503 count too (SkyServe counts every request the balancer receives). Timestamps are
    kept as C doubles in one array per second, so 60 s at 15,000 req/s is about 7 MB.
    """

    def __init__(self, window_seconds: float = AUTOSCALER_QPS_WINDOW_SIZE_SECONDS) -> None:
        self.window_seconds = float(window_seconds)
        self._buckets: collections.deque[tuple[int, array[float]]] = collections.deque()
        self._lock = threading.Lock()

    def record(self, ts: float) -> None:
        """Record one arrival at ``ts`` (seconds, same clock as ``timestamps(now)``)."""
        sec = int(ts)
        with self._lock:
            buckets = self._buckets
            if buckets and buckets[-1][0] == sec:
                buckets[-1][1].append(ts)
                return
            buckets.append((sec, array("d", (ts,))))
            # A new second: drop whole seconds far outside the window (bounded memory).
            cutoff = ts - self.window_seconds - 1
            while buckets and buckets[0][0] < cutoff:
                buckets.popleft()

    def timestamps(self, now: float) -> list[float]:
        """Arrivals in ``[now - window, now]``, oldest first."""
        lo = now - self.window_seconds
        with self._lock:
            while self._buckets and self._buckets[0][0] + 1 <= lo:
                self._buckets.popleft()
            out: list[float] = []
            for _sec, times in self._buckets:
                out.extend(t for t in times if lo <= t <= now)
        out.sort()
        return out

    def count(self, now: float) -> int:
        """Number of arrivals in the window ending at ``now``."""
        return len(self.timestamps(now))

    def qps(self, now: float) -> float:
        """Requests per second as SkyServe measures it: arrivals in the window / window length."""
        return self.count(now) / self.window_seconds

    def counts(self, lo_sec: int, hi_sec: int) -> dict[int, int]:
        """Arrivals per whole second ``lo_sec <= s < hi_sec`` still in the window."""
        with self._lock:
            return {sec: len(times) for sec, times in self._buckets if lo_sec <= sec < hi_sec}

    def add_count(self, sec: int, n: int) -> None:
        """Record ``n`` arrivals another load balancer saw in second ``sec`` (spread evenly
        over that second, which is all the window's QPS needs)."""
        for i in range(n):
            self.record(sec + (i + 0.5) / n)


class ArrivalInbox:
    """The leader's merge of its followers' per-second counts into its window."""

    def __init__(self, window: ArrivalWindow) -> None:
        self.window = window
        self._seen: dict[tuple[str, int], int] = {}
        self.received = 0

    def merge(self, sender: str, counts: Mapping[int, int], now: float) -> int:
        """Add what ``sender`` reports and was not added before; returns the arrivals added."""
        oldest = int(now - self.window.window_seconds) - 1
        added = 0
        for sec, n in sorted(counts.items()):
            if sec < oldest or n <= 0:
                continue
            before = self._seen.get((sender, sec), 0)
            if n > before:
                self.window.add_count(sec, n - before)
                self._seen[(sender, sec)] = n
                added += n - before
        for key in [k for k in self._seen if k[1] < oldest]:
            del self._seen[key]
        self.received += added
        return added


class ArrivalReporter:
    """What a follower sends next: the seconds completed since its last accepted batch, or
    its whole window when the leader changed (the new leader has not seen them)."""

    def __init__(self, window: ArrivalWindow) -> None:
        self.window = window
        self._leader: object = None
        self._sent_to = 0  # seconds below this were accepted by the current leader

    def batch(self, leader: object, now: float) -> dict[int, int]:
        """The counts to send to ``leader`` (any value naming it, such as holder and term)."""
        lo = self._sent_to if leader == self._leader else 0
        return self.window.counts(lo, int(now))

    def accepted(self, leader: object, now: float) -> None:
        """``leader`` took the last batch built at ``now``."""
        self._leader = leader
        self._sent_to = int(now)
