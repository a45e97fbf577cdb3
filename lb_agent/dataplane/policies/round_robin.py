"""round_robin: cycle over the routable replicas, reshuffled whenever the set changes."""

from __future__ import annotations

from collections.abc import Sequence

from lb_agent.dataplane.policies.base import Policy
from lb_agent.dataplane.target import Target


class RoundRobinPolicy(Policy):
    """Like SkyServe: the order is shuffled when the replica set changes, then cycled."""

    name = "round_robin"

    def __init__(self, *, target_qps_per_replica: float | dict[str, float] | None = None) -> None:
        super().__init__(target_qps_per_replica=target_qps_per_replica)
        self._order: list[str] = []
        self._next = 0

    def on_targets_changed(self, targets: Sequence[Target]) -> None:
        ids = sorted(t.replica_id for t in targets)
        if sorted(self._order) != ids:
            self.rng.shuffle(ids)
            self._order = ids
            self._next = 0

    def select(self, candidates: Sequence[Target]) -> Target | None:
        if not candidates:
            return None
        by_id = {t.replica_id: t for t in candidates}
        if set(self._order) < set(by_id) or not self._order:
            self.on_targets_changed(candidates)
        # Walk the cycle from the cursor; skip ids not among the candidates (excluded on retry).
        for _ in range(len(self._order)):
            rid = self._order[self._next % len(self._order)]
            self._next = (self._next + 1) % len(self._order)
            t = by_id.get(rid)
            if t is not None:
                return t
        return self.rng.choice(list(candidates))
