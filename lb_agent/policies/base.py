"""The Policy base class and the name -> class registry."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

from lb_agent.target import Target

_POLICIES: dict[str, type[Policy]] = {}


class Policy:
    """Chooses a replica among the routable ones.

    Subclasses set ``name`` and implement ``select``. ``candidates`` never contains a replica
    the caller wants excluded (a retry passes the list without the failed ones).
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _POLICIES[cls.name] = cls

    def __init__(self, *, target_qps_per_replica: float | dict[str, float] | None = None) -> None:
        self.target_qps_per_replica = target_qps_per_replica
        self.rng = random.Random()

    def select(self, candidates: Sequence[Target]) -> Target | None:
        """The replica to send the next request to, or None when ``candidates`` is empty."""
        raise NotImplementedError

    def on_targets_changed(self, targets: Sequence[Target]) -> None:
        """Called when the routable set changes (round robin reshuffles)."""

    def pick_min(self, candidates: Sequence[Target], key: Any) -> Target | None:
        """The candidate minimising ``key``, a uniformly random one among ties."""
        best: Target | None = None
        best_key: Any = None
        ties = 0
        for t in candidates:
            k = key(t)
            if best is None or k < best_key:
                best, best_key, ties = t, k, 1
            elif k == best_key:
                ties += 1
                # Reservoir sampling: each tied candidate is kept with probability 1/ties.
                if self.rng.randrange(ties) == 0:
                    best = t
        return best


def policy_names() -> list[str]:
    """Registered policy names, sorted."""
    return sorted(_POLICIES)


def build_policy(
    name: str, *, target_qps_per_replica: float | dict[str, float] | None = None
) -> Policy:
    """An instance of the policy called ``name`` (KeyError when unknown)."""
    return _POLICIES[name](target_qps_per_replica=target_qps_per_replica)
