"""Admission at the public endpoint: API keys, per-key rate limits, the FIFO wait queue, and
per-replica circuit breakers. All off by default (docs/routing.md, "Admission").

* ``ApiKeys``: ``Authorization: Bearer <key>``; keys are kept only as SHA-256 digests (the
  config may give the digests alone) and a presented key is looked up by its digest, so no
  comparison leaks a key's prefix by timing.
* ``RateLimiter``: a token bucket per key (or per client address without keys): ``rate``
  requests per second, ``burst`` at once; over it, the seconds until the next token.
* ``WaitQueue``: requests that find no replica able to take them wait in arrival order up to
  a timeout; a waiter that leaves (timeout, client disconnect) frees its place at once.
* ``Breaker``: per replica, opens after ``failures`` consecutive failed attempts, lets one
  trial request through after ``cooldown`` seconds (half-open), closes after ``successes``
  successful ones; a failed trial opens it again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import ClassVar


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def key_digest(key: str) -> str:
    """The hex SHA-256 of a key: what the agent config may hold instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The set of accepted bearer keys (as digests), each with a name."""

    def __init__(self, keys: Sequence[str], named: Sequence[tuple[str, str]] = ()) -> None:
        """``keys``: plain keys (named ``key-<n>``, their index); ``named``: (name, hex
        SHA-256 digest) pairs."""
        self._digests = {_digest(k.encode()): f"key-{i}" for i, k in enumerate(keys)}
        self._digests.update((bytes.fromhex(d), name) for name, d in named)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: bytes | None) -> str | None:
        """The key's name when ``authorization`` is ``Bearer <an accepted key>``, else None."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            return None
        return self._digests.get(_digest(authorization[7:].strip()))


class RateLimiter:
    """Token buckets per key, at most ``max_keys`` of them (least recently used dropped)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(max(1, burst or round(rate) or 1))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def __bool__(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """0.0 when a request of ``key`` may pass (one token taken), else the seconds until
        the next token."""
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            b = [self.burst, now]
            self._buckets[key] = b
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return 0.0
        return (1.0 - b[0]) / self.rate


class Breaker:
    """The circuit breaker of one replica."""

    CLOSED: ClassVar[str] = "closed"
    OPEN: ClassVar[str] = "open"
    HALF_OPEN: ClassVar[str] = "half_open"

    __slots__ = (
        "clock",
        "cooldown",
        "fails",
        "failures",
        "oks",
        "opened_at",
        "state",
        "successes",
        "trial",
    )

    def __init__(self, failures: int, cooldown: float, successes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.successes = successes
        self.clock = clock
        self.state = self.CLOSED
        self.fails = 0  # consecutive failures while closed
        self.oks = 0  # successes while half-open
        self.opened_at = 0.0
        self.trial = False  # a half-open trial request is running

    def allows(self) -> bool:
        """True when a request may go to the replica now (moves open -> half-open after the
        cool-down)."""
        if self.state == self.CLOSED:
            return True
        if self.state == self.OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                return False
            self.state, self.oks, self.trial = self.HALF_OPEN, 0, False
        return not self.trial

    def started(self) -> None:
        """A request was sent (half-open: it is the trial)."""
        if self.state == self.HALF_OPEN:
            self.trial = True

    def record(self, ok: bool) -> None:
        """The outcome of a request sent to the replica."""
        if self.state == self.HALF_OPEN:
            self.trial = False
            if not ok:
                self._open()
            else:
                self.oks += 1
                if self.oks >= self.successes:
                    self.state, self.fails = self.CLOSED, 0
            return
        if ok:
            self.fails = 0
        elif self.state == self.CLOSED:
            self.fails += 1
            if self.fails >= self.failures:
                self._open()

    def _open(self) -> None:
        self.state, self.opened_at, self.fails, self.trial = self.OPEN, self.clock(), 0, False

    @property
    def level(self) -> int:
        """0 closed, 1 half-open, 2 open (the metrics gauge)."""
        return {self.CLOSED: 0, self.HALF_OPEN: 1, self.OPEN: 2}[self.state]


class WaitQueue:
    """FIFO waiting for a replica that can take a request, bounded in depth and time."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        #: The requests waiting, first in line first (empty, hence false, when none waits:
        #: the dispatcher's test on every request, cheaper than ``len``).
        self.waiters: collections.deque[list[asyncio.Future[None]]] = collections.deque()

    def __len__(self) -> int:
        return len(self.waiters)

    def wake(self) -> None:
        """Let the first waiter look again (a slot freed or the routing table changed)."""
        if self.waiters:
            fut = self.waiters[0][0]
            if not fut.done():
                fut.set_result(None)

    async def wait_turn(self, ready: Callable[[], bool], timeout: float) -> bool:
        """True once every earlier waiter has gone and ``ready()`` holds; False after
        ``timeout`` seconds, or at once when the queue is full."""
        if len(self.waiters) >= self.max_depth:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        me: list[asyncio.Future[None]] = [loop.create_future()]
        self.waiters.append(me)
        try:
            while True:
                if self.waiters[0] is me and ready():
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                me[0] = loop.create_future()
                # Re-check at least twice a second: a breaker's cool-down ends by time alone.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(me[0], min(remaining, 0.5))
        finally:
            self.waiters.remove(me)
            self.wake()  # the next in line may go now
