"""The way of one request to a replica, for HTTP requests and WebSocket handshakes alike.

``Dispatcher.run`` owns what both share: the FIFO wait queue when no replica can take the
request (none READY, all at ``max_in_flight_per_replica``, breakers open, or others waiting
already), the choice among the admissible replicas, the circuit breaker's trial and verdict,
the in-flight count (held for as long as the attempt runs, so a streamed response or an open
WebSocket counts as one request), up to ``proxy.max_attempts`` tries on *different*
replicas spaced by SkyServe's backoff (lb_agent.backoff), and the JSON answer when no replica
could be tried (503) or every try failed (502). The caller gives what differs: how a replica
is picked, how one attempt runs, whether a failed one may be retried, and how an answer is
sent (an HTTP response, or the WebSocket ``websocket.http.response`` extension).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Any

from lb_agent import constants as C
from lb_agent.backoff import Backoff
from lb_agent.dataplane.admission import Breaker
from lb_agent.dataplane.target import Target
from lb_agent.runtime import AgentRuntime

log = logging.getLogger("lb_agent.dataplane.dispatch")

#: The replicas tried before a request's first attempt (none; never added to).
_NONE_TRIED: frozenset[str] = frozenset()


class Failed:
    """An attempt that failed before any byte reached the client."""

    __slots__ = ("reason", "sent")

    def __init__(self, reason: str, *, sent: bool) -> None:
        self.reason = reason
        self.sent = sent  # bytes of the request may have reached the replica


class Try:
    """One attempt's handle: whether a retry could go to another replica, and the breaker's
    verdict (given by ``verdict`` as soon as the attempt knows it, else when it returns)."""

    __slots__ = ("_last", "_routable", "_target", "_tried", "breaker", "recorded")

    def __init__(self, breaker: Breaker | None, target: Target, last: bool,
                 routable: list[Target], tried: AbstractSet[str]) -> None:
        self.breaker = breaker
        self.recorded = False
        self._target = target
        self._last = last
        self._routable = routable
        self._tried = tried

    @property
    def others(self) -> bool:
        """Another attempt is allowed and another routable replica is untried (looked at
        only when an attempt asks: most never do)."""
        if self._last:
            return False
        target, tried = self._target, self._tried
        return any(t is not target and t.replica_id not in tried for t in self._routable)

    def verdict(self, ok: bool) -> None:
        """Record the attempt's outcome in its replica's breaker (once)."""
        if not self.recorded:
            self.recorded = True
            if self.breaker is not None:
                self.breaker.record(ok)


#: One attempt on a replica: the status sent to the client, or why it failed.
Attempt = Callable[[Target, Try], Awaitable["int | Failed"]]
#: Sends an answer of the agent's own: status, JSON payload, extra header fields.
Answer = Callable[[int, dict[str, Any], list[tuple[bytes, bytes]]], Awaitable[None]]


class Dispatcher:
    """Queue, placement, breakers, in-flight counts, retries and the refusals of one agent."""

    def __init__(self, runtime: AgentRuntime, rng: random.Random | None = None) -> None:
        self.runtime = runtime
        self._rng = rng or random.Random()

    async def run(
        self,
        attempt: Attempt,
        answer: Answer,
        *,
        pick: Callable[[list[Target]], Target],
        retry: Callable[[Failed], bool],
        label: str,
        what: str,
        failing: str,
        release: Callable[[Target, Any], None] | None = None,
        key: Any = None,
    ) -> int:
        """Try replicas until one attempt answers; returns the status for the metrics.

        ``label`` names the request in the log, ``what`` in the 503 ("the request"),
        ``failing`` says how the replicas failed in the 502 ("did not answer correctly").
        ``release`` is called with the target and ``key`` after each attempt on it ends,
        however it ends (a request-aware policy's ``release`` and the request's key: passed
        apart, no per-request closure or partial to make and call).
        """
        rt = self.runtime
        queue = rt.queue
        waiting = queue.waiters
        # The common case costs no retry bookkeeping: the set of replicas tried and the
        # backoff are made only once an attempt has failed.
        tried: AbstractSet[str] = _NONE_TRIED
        n = 0
        timed_out = False
        attempts = rt.config.proxy.max_attempts
        candidates = rt.admissible()
        # FIFO: while others wait, a new request queues behind them.
        queue_wait = rt.config.queue_wait_seconds
        if queue_wait > 0 and (not candidates or waiting):
            timed_out = not await rt.wait_for_slot(queue_wait)
            candidates = [] if timed_out else rt.admissible()
        pause: Backoff | None = None
        while candidates:
            target = pick(candidates)
            if n:
                rt.metrics.retries.inc()
            n += 1
            handle = Try(rt.breaker(target.replica_id) if rt.breakers_on else None, target,
                         n >= attempts, rt.routable, tried)
            if handle.breaker is not None:
                handle.breaker.started()
            target.in_flight += 1
            try:
                outcome = await attempt(target, handle)
            except BaseException:
                if handle.breaker is not None and not handle.recorded:
                    handle.breaker.trial = False  # the client left: no verdict on the replica
                raise
            finally:
                target.in_flight -= 1
                if release is not None:
                    release(target, key)
                if waiting:
                    queue.wake()  # a slot is free: the first waiter looks again
            if not isinstance(outcome, Failed):
                if handle.breaker is not None:  # without one a verdict records nothing
                    handle.verdict(outcome < 500)
                return outcome
            handle.verdict(False)
            tried = {*tried, target.replica_id}  # a new set (the first one is shared)
            log.warning("%s %s: attempt %d failed: %s", label, target.replica_id, n,
                        outcome.reason)
            if not retry(outcome) or n >= attempts:
                break
            if pause is None:
                pause = Backoff(rt.config.proxy.backoff_seconds, self._rng)
            delay = pause.current()
            if delay > 0:
                await asyncio.sleep(delay)
            candidates = rt.admissible(tried)
        if not tried:
            rt.metrics.no_replica.inc()
            within = f" within {queue_wait:g}s" if timed_out else ""
            if rt.routable:  # ready replicas, all at their cap or with an open breaker
                payload = {"detail": f"No replica could take {what}{within}; retry later.",
                           "error": "no_replica_available"}
            else:
                payload = {"detail": f"No ready replicas for {what}{within}. Check the replica "
                           "states with the agent's /status endpoint (admin port).",
                           "error": "no_ready_replica"}
            await answer(503, payload,
                         [(b"retry-after", str(C.LB_NO_REPLICA_RETRY_AFTER_SECONDS).encode())])
            return 503
        # Replica addresses and error messages stay in the log (above), not in the answer.
        await answer(502, {
            "detail": f"The service's replicas {failing} ({len(tried)} attempt(s)); details "
            "are in the load balancer's log.",
            "error": "upstream_unavailable", "attempts": len(tried),
        }, [(b"retry-after", b"1")])
        return 502
