"""Session affinity: requests with the same session header go to the same replica.

A session (the value of ``routing.session_header``, default ``x-session-id``) is pinned to the
replica the policy chose for its first request, and stays there while that replica is
routable (READY, not draining, not ejected) and not overloaded. Overloaded is the bound of
``prefix_aware``'s rule (``balance_bound``): more in flight than the least-loaded replica plus
``max(prefix_balance_abs, prefix_balance_rel * minimum)``. An unroutable or overloaded pin
is replaced by the policy's choice. At most ``max_sessions`` pins are kept, least recently
used dropped first; a replica that leaves routing loses its pins.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from lb_agent.dataplane.target import Target


def balance_bound(least: int, balance_abs: int, balance_rel: float) -> float:
    """The most requests in flight a replica may have to be taken for its prefix
    (``prefix_aware``) or kept for its session, when the least-loaded one has ``least``."""
    return least + max(balance_abs, balance_rel * least)


def overloaded(target: Target, least: int, balance_abs: int, balance_rel: float) -> bool:
    """Above ``balance_bound``: the rule shared by prefix_aware and affinity."""
    return target.in_flight > balance_bound(least, balance_abs, balance_rel)


class Affinity:
    """Bounded session -> replica id pins."""

    def __init__(self, max_sessions: int, balance_abs: int, balance_rel: float) -> None:
        self.max_sessions = max(1, max_sessions)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.pins: OrderedDict[str, str] = OrderedDict()
        self.kept = 0  # requests that followed their pin
        self.moved = 0  # pins replaced because the replica was gone or overloaded

    def pick(self, session: str, candidates: Sequence[Target]) -> Target | None:
        """The pinned replica when it may take the request, else None."""
        rid = self.pins.get(session)
        if rid is None:
            return None
        pinned = None
        least = None
        for t in candidates:
            if t.replica_id == rid:
                pinned = t
            if least is None or t.in_flight < least:
                least = t.in_flight
        if pinned is None or least is None or overloaded(
                pinned, least, self.balance_abs, self.balance_rel):
            self.moved += 1
            return None
        self.pins.move_to_end(session)
        self.kept += 1
        return pinned

    def pin(self, session: str, target: Target) -> None:
        """Pin ``session`` to ``target`` (most recently used)."""
        self.pins[session] = target.replica_id
        self.pins.move_to_end(session)
        while len(self.pins) > self.max_sessions:
            self.pins.popitem(last=False)
