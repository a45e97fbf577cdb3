"""Rendezvous (highest-random-weight) hashing: the replica a key prefers, on every balancer.

Several load balancers in front of one replica set keep no shared routing state; each learns
only from the requests it routes. For the same prompt prefix or the same session to reach the
same replica from any of them, the first choice must be a function of the key and the replica
ids alone: every replica gets the weight ``mix(key ^ hash(replica id))`` and the heaviest one
within the load bound is the key's replica. Two load balancers with the same replica set
therefore agree on it whatever each has seen; a replica that joins or leaves moves only the
keys for which it is (or becomes) the heaviest.

The values are fixed across processes and machines (BLAKE2b or CRC-32, then splitmix64's
finalizer), not seeded: a key only ranks replicas, it is never a dict key here, so a client
that aims prompts at one replica gains nothing a repeated prompt would not, and the load bound
still caps it. The C helper of ``prefix_aware`` (``_prefix_native.c``, ``scan``) computes the
same weights.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Sequence

from lb_agent.dataplane.target import Target

_MASK = (1 << 64) - 1


def key_of(data: bytes) -> int:
    """A 64-bit rendezvous key of ``data``, the same in every process."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def anchor_of(data: bytes) -> int:
    """The rendezvous key of a prompt's first blocks: its CRC-32 (zlib's), which the C helper
    of ``prefix_aware`` computes alike while it hashes the prompt, at no extra pass in
    Python. 32 bits are plenty to rank replicas: two prefixes that collide only share their
    order of replicas."""
    return zlib.crc32(data)


@functools.lru_cache(maxsize=4096)
def replica_hash(replica_id: str) -> int:
    """A replica id's 64-bit value in the weights."""
    return key_of(replica_id.encode("utf-8", "surrogatepass"))


def weight(key: int, rid_hash: int) -> int:
    """The weight of a replica (its ``replica_hash``) for ``key``: splitmix64's finalizer of
    their xor."""
    z = (key ^ rid_hash) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def first_within(candidates: Sequence[Target], key: int, bound: float) -> int:
    """The index of the heaviest candidate for ``key`` among those with at most ``bound``
    requests in flight, or -1 when none is."""
    best, best_w = -1, -1
    for i, t in enumerate(candidates):
        if t.in_flight > bound:
            continue
        w = weight(key, replica_hash(t.replica_id))
        if w > best_w:
            best, best_w = i, w
    return best
