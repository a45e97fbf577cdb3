"""ArrivalWindow: client-request arrival times over SkyServe's 60 s QPS window.

The autoscaler reads it (QPS as SkyServe measures it).
"""

from __future__ import annotations

import collections
import threading
from array import array

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
