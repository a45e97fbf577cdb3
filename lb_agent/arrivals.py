"""ArrivalWindow: client-request arrival times over SkyServe's 60 s QPS window.

The autoscaler reads it (QPS as SkyServe measures it).
"""

from __future__ import annotations

import collections
import threading

from lb_agent.constants import AUTOSCALER_QPS_WINDOW_SIZE_SECONDS


class ArrivalWindow:
    """Arrival timestamps of client requests, kept for ``window_seconds``.

    A request is recorded when it arrives, before a replica is chosen, so requests that end
    in a 503 count too (SkyServe counts every request the balancer receives).
    """

    def __init__(self, window_seconds: float = AUTOSCALER_QPS_WINDOW_SIZE_SECONDS) -> None:
        self.window_seconds = float(window_seconds)
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def record(self, ts: float) -> None:
        """Record one arrival at ``ts`` (seconds, same clock as ``timestamps(now)``)."""
        with self._lock:
            self._times.append(ts)
            # Bound memory even if nobody reads: drop what is far outside the window.
            if len(self._times) > 4096 and self._times[0] < ts - 2 * self.window_seconds:
                self._prune(ts)

    def _prune(self, now: float) -> None:
        cutoff = now - self.window_seconds
        times = self._times
        while times and times[0] < cutoff:
            times.popleft()

    def timestamps(self, now: float) -> list[float]:
        """Arrivals in ``[now - window, now]``, oldest first."""
        with self._lock:
            self._prune(now)
            return [t for t in self._times if t <= now]

    def count(self, now: float) -> int:
        """Number of arrivals in the window ending at ``now``."""
        return len(self.timestamps(now))

    def qps(self, now: float) -> float:
        """Requests per second as SkyServe measures it: arrivals in the window / window length."""
        return self.count(now) / self.window_seconds
