"""Session affinity: requests with the same session header go to the same replica.

A session (the value of ``routing.session_header``, default ``x-session-id``) is pinned to its
rendezvous replica (lb_agent.dataplane.rendezvous: the heaviest weight for the session's
digest among the replicas within the bound), so every load balancer in front of the same
replicas sends a new session to the same one without asking the others. The session stays
there while that replica is routable (READY, not draining, not ejected) and not overloaded.
Overloaded is the bound of ``prefix_aware``'s rule (``balance_bound``): more in flight than
the least-loaded replica plus ``max(prefix_balance_abs, prefix_balance_rel * minimum)``. An
unroutable or overloaded pin is replaced by the next rendezvous choice within the bound. At
most ``max_sessions`` pins are kept, least recently used dropped first; a replica that leaves
routing loses its pins.

A pin costs a fixed amount whatever the client sends: the session value is kept only as a
16-byte digest, and a value longer than ``MAX_SESSION_BYTES`` is not a session at all (the
request is routed by the policy and nothing is stored), so ``max_sessions`` bounds memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from lb_agent.dataplane.rendezvous import first_within
from lb_agent.dataplane.target import Target


def balance_bound(least: int, balance_abs: int, balance_rel: float) -> float:
    """The most requests in flight a replica may have to be taken for its prefix
    (``prefix_aware``) or kept for its session, when the least-loaded one has ``least``."""
    return least + max(balance_abs, balance_rel * least)


def overloaded(target: Target, least: int, balance_abs: int, balance_rel: float) -> bool:
    """Above ``balance_bound``: the rule shared by prefix_aware and affinity."""
    return target.in_flight > balance_bound(least, balance_abs, balance_rel)


#: The longest session value that pins (longer ones route by the policy, unpinned).
MAX_SESSION_BYTES = 256
#: Bytes of the digest a pin is keyed by.
DIGEST_BYTES = 16


def session_key(session: str | bytes) -> bytes | None:
    """The fixed-size key of a session value, or None when the value is too long to pin."""
    raw = session.encode("latin-1") if isinstance(session, str) else session
    if not raw or len(raw) > MAX_SESSION_BYTES:
        return None
    return hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()


class Affinity:
    """Bounded session -> replica id pins."""

    def __init__(self, max_sessions: int, balance_abs: int, balance_rel: float) -> None:
        self.max_sessions = max(1, max_sessions)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.pins: OrderedDict[bytes, str] = OrderedDict()
        self.kept = 0  # requests that followed their pin
        self.moved = 0  # pins replaced because the replica was gone or overloaded

    def pick(self, session: str | bytes, candidates: Sequence[Target]) -> Target | None:
        """The replica for the session: its pin when that may take the request, else its
        rendezvous replica within the bound (pinned from now on); None when the value is too
        long to pin (the policy decides) or there is no candidate."""
        key = session_key(session)
        if key is None or not candidates:
            return None
        rid = self.pins.get(key)
        pinned = None
        least = candidates[0].in_flight
        for t in candidates:
            if t.replica_id == rid:
                pinned = t
            if t.in_flight < least:
                least = t.in_flight
        if pinned is not None and not overloaded(pinned, least, self.balance_abs,
                                                 self.balance_rel):
            self.pins.move_to_end(key)
            self.kept += 1
            return pinned
        if rid is not None:
            self.moved += 1
        bound = balance_bound(least, self.balance_abs, self.balance_rel)
        chosen = candidates[first_within(candidates, int.from_bytes(key[:8], "little"), bound)]
        self.pin(session, chosen)
        return chosen

    def pin(self, session: str | bytes, target: Target) -> None:
        """Pin ``session`` to ``target`` (most recently used); too long a value pins nothing."""
        key = session_key(session)
        if key is None:
            return
        self.pins[key] = target.replica_id
        self.pins.move_to_end(key)
        while len(self.pins) > self.max_sessions:
            self.pins.popitem(last=False)
