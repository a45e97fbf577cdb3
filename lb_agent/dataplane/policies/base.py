"""The Policy base class and the name -> class registry."""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from typing import Any, ClassVar

from lb_agent.dataplane.target import Target

_POLICIES: dict[str, type[Policy]] = {}


class Policy:
    """Chooses a replica among the routable ones.

    Subclasses set ``name`` and implement ``select``. ``candidates`` never contains a replica
    the caller wants excluded (a retry passes the list without the failed ones).
    """

    name: ClassVar[str] = ""
    #: True when the policy looks at the request (the proxy then calls ``request_key`` once
    #: per request and ``choose`` per attempt instead of ``select``).
    uses_request: ClassVar[bool] = False

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

    def request_key(self, method: str, path: str, body: bytes | None) -> Any:
        """What ``choose`` needs from a request (``body`` is None unless the proxy holds the
        whole body); None routes by the policy's default."""
        return None

    def choose(self, candidates: Sequence[Target], key: Any) -> Target | None:
        """Like ``select``, for a request whose ``request_key`` was ``key``."""
        return self.select(candidates)

    def release(self, target: Target, key: Any) -> None:
        """The attempt on ``target`` for a request whose ``request_key`` was ``key`` ended
        (called by the proxy for ``uses_request`` policies only)."""

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
    name: str, *, target_qps_per_replica: float | dict[str, float] | None = None,
    **options: Any,
) -> Policy:
    """An instance of the policy called ``name`` (KeyError when unknown).

    ``options`` are the policy's own settings (the config's ``routing`` section); a policy
    takes only the ones its constructor names."""
    cls = _POLICIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    return cls(target_qps_per_replica=target_qps_per_replica, **kwargs)
