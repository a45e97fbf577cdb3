"""The one retry backoff of the agent: SkyServe's, used by the proxy and the deployers.

The proxy spaces its retries of one request with it (milliseconds, ``proxy.backoff_seconds``);
the Pulumi deployer spaces its failed ``up``s (seconds). It lives beside both planes because
both use it.
"""

from __future__ import annotations

import random


class Backoff:
    """SkyServe's Backoff: x1.6 per attempt, capped at 5x the initial gap, +-40 % jitter."""

    MULTIPLIER = 1.6
    JITTER = 0.4

    def __init__(self, initial: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self._next = initial
        self._rng = rng or random.Random()

    def current(self) -> float:
        """Next gap with jitter, then grow the base gap."""
        base = self._next
        self._next = min(self._next * self.MULTIPLIER, 5 * self.initial)
        return max(0.0, base * (1 + self._rng.uniform(-self.JITTER, self.JITTER)))

    def reset(self) -> None:
        self._next = self.initial
