"""power_of_two: two random replicas, the less loaded one wins (ties: a coin flip)."""

from __future__ import annotations

from collections.abc import Sequence

from lb_agent.dataplane.policies.base import Policy
from lb_agent.dataplane.target import Target


class PowerOfTwoPolicy(Policy):
    """Power of two choices: near least-load balance without a full scan."""

    name = "power_of_two"

    def select(self, candidates: Sequence[Target]) -> Target | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        i, j = self.rng.sample(range(n), 2)
        a, b = candidates[i], candidates[j]
        if a.in_flight == b.in_flight:
            return a  # sample order is already random
        return a if a.in_flight < b.in_flight else b
