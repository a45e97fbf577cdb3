"""least_load (default): fewest in-flight requests, random among ties."""

from __future__ import annotations

from collections.abc import Sequence

from lb_agent.dataplane.policies.base import Policy
from lb_agent.dataplane.target import Target


class LeastLoadPolicy(Policy):
    """SkyServe's default, with unbiased ties (SkyServe always picks the first URL)."""

    name = "least_load"

    def select(self, candidates: Sequence[Target]) -> Target | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        return self.pick_min(candidates, _in_flight)


def _in_flight(t: Target) -> int:
    return t.in_flight
