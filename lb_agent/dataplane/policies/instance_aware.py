"""instance_aware_least_load: in-flight / per-accelerator capacity, the smallest wins.

Capacity comes from ``replica_policy.target_qps_per_replica``: a mapping is looked up by the
replica's accelerator exactly, then by its base name (``A100:8`` -> ``A100``, case-insensitive),
then falls back to 1.0 as SkyServe's balancer does; a plain number is every replica's
capacity. Non-positive values count as 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

from lb_agent.dataplane.policies.base import Policy
from lb_agent.dataplane.target import Target


def capacity_for(accelerator: str | None, target: float | dict[str, float] | None) -> float:
    """The capacity weight of a replica with ``accelerator``."""
    value: float | None
    if target is None:
        value = 1.0
    elif isinstance(target, dict):
        value = None
        if accelerator is not None:
            value = target.get(accelerator)
            if value is None:
                base = accelerator.split(":", 1)[0].strip().lower()
                for key, v in target.items():
                    if key.split(":", 1)[0].strip().lower() == base:
                        value = v
                        break
        if value is None:
            value = 1.0
    else:
        value = float(target)
    return value if value > 0 else 1.0


class InstanceAwareLeastLoadPolicy(Policy):
    """Least load weighted by each replica's accelerator capacity."""

    name = "instance_aware_least_load"

    def select(self, candidates: Sequence[Target]) -> Target | None:
        if not candidates:
            return None
        target = self.target_qps_per_replica
        return self.pick_min(
            candidates, lambda t: t.in_flight / capacity_for(t.accelerator, target)
        )
