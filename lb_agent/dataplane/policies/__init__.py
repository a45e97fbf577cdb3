"""Load-balancing policies, registered by name: a new policy is one ``Policy`` subclass.

Importing this package imports every built-in policy module so they register themselves.
"""

from __future__ import annotations

from lb_agent.dataplane.policies import (  # noqa: F401  (import registers the policies)
    instance_aware,
    least_load,
    power_of_two,
    prefix_aware,
    round_robin,
)
from lb_agent.dataplane.policies.base import Policy, build_policy, policy_names

__all__ = ["Policy", "build_policy", "policy_names"]
