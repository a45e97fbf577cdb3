"""The election loop: which load balancer of several is the controller, and what each does.

Every ``renew_seconds`` the loop calls the lease store's ``acquire_or_renew``. While this load
balancer holds the lease it runs the leader's work (``lead``: the scaler, its autoscaler and
deployer, so every ``up`` starts here); the moment the lease is another's, or no renewal has
succeeded for ``duration_seconds`` (counted from the start of the last successful call, so the
leader stops no later than the lease lapses for the others), the work is cancelled. A store
call that hangs is cut off at that deadline. ``runtime.leadership`` (lb_agent.control.leadership.
Leadership) always says the role, the holder, its address and the term.

The loop is stepped (``step``) by tests with a fake store and clock; ``run`` steps it forever
and ``close`` stops leading and releases the lease (a clean shutdown hands over at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from lb_agent.control.leadership import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    Leadership,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
)

log = logging.getLogger(__name__)

#: The leader's work: runs until cancelled (the lease lost) or done.
LeadWork = Callable[[LeaseState], Awaitable[None]]


class Election:
    """One load balancer's side of the election over ``store``."""

    def __init__(
        self,
        store: LeaseStore,
        leadership: Leadership,
        address: Callable[[], str | None],
        lead: LeadWork,
        *,
        renew_seconds: float,
        duration_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.address = address
        self.lead = lead
        self.renew_seconds = renew_seconds
        self.duration_seconds = duration_seconds
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_ok: float | None = None
        #: Set whenever the role or the holder changes (tests and the cluster client wait on it).
        self.changed = asyncio.Event()
        self._poked = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self._task is not None

    def _deadline(self) -> float | None:
        """When the leader must stop unless a renewal succeeds (None when not leading)."""
        if self._task is None or self._last_ok is None:
            return None
        return self._last_ok + self.duration_seconds

    async def step(self) -> Leadership:
        """One acquire/renew; start or stop the leader's work to match. Returns the view."""
        lead = self.leadership
        address = self.address()
        if address is None:  # the admin port is not bound yet: nobody could reach us
            return lead
        started = self.clock()
        deadline = self._deadline()
        timeout = self.renew_seconds if deadline is None else max(
            0.0, min(self.renew_seconds, deadline - started))
        try:
            state = await asyncio.wait_for(
                self.store.acquire_or_renew(lead.identity, address), timeout)
        except (LeaseUnavailable, TimeoutError) as exc:
            lead.error = str(exc) or f"the lease store did not answer within {timeout:.1f} s"
            deadline = self._deadline()
            if deadline is not None and self.clock() >= deadline:
                log.warning("lease not renewed for %.0f s (%s): stopping as leader",
                            self.duration_seconds, lead.error)
                await self._stop_leading()
                await self._release()
                self._set(CANDIDATE, None, None, lead.term)
            return lead
        lead.error = None
        if state.held_by(lead.identity):
            self._last_ok = started
            if self._task is None:
                self._start_leading(state)
            self._set(LEADER, state.holder, state.address, state.term)
        else:
            if self._task is not None:
                log.warning("lease taken by %s (term %d): stopping as leader", state.holder,
                            state.term)
                await self._stop_leading()
            self._set(FOLLOWER if state.holder else CANDIDATE, state.holder, state.address,
                      state.term)
        return lead

    async def expire(self) -> None:
        """Stop leading when the deadline passed (the loop calls it between steps)."""
        deadline = self._deadline()
        if deadline is not None and self.clock() >= deadline:
            await self._stop_leading()
            await self._release()
            self._set(CANDIDATE, None, None, self.leadership.term)

    def _start_leading(self, state: LeaseState) -> None:
        log.info("elected leader (term %d)", state.term)
        self.leadership.elected += 1
        self._task = asyncio.create_task(self._lead(state), name="skyform-leader")

    async def _lead(self, state: LeaseState) -> None:
        try:
            await self.lead(state)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the leader's work failed")

    async def _stop_leading(self) -> None:
        task, self._task = self._task, None
        self._last_ok = None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _release(self) -> None:
        with contextlib.suppress(LeaseUnavailable, OSError, TimeoutError):
            await asyncio.wait_for(self.store.release(self.leadership.identity),
                                   self.renew_seconds)

    def _set(self, role: str, holder: str | None, address: str | None, term: int) -> None:
        lead = self.leadership
        if (lead.role, lead.holder, lead.address, lead.term) != (role, holder, address, term):
            lead.role, lead.holder, lead.address, lead.term = role, holder, address, term
            self.changed.set()
            self.changed = asyncio.Event()

    def poke(self) -> None:
        """Step now rather than at the next renewal: a follower found the leader unreachable
        (a lease that a dead holder freed, like the file lease, is taken at once)."""
        self._poked.set()

    async def run(self) -> None:
        """Step every ``renew_seconds`` (sooner when the lease would lapse first, or when
        poked) until cancelled; then stop leading and release the lease."""
        try:
            while True:
                self._poked.clear()
                await self.step()
                wait = self.renew_seconds
                deadline = self._deadline()
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - self.clock()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), wait)
                await self.expire()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop leading and give the lease up (a successor need not wait for expiry)."""
        was_leading = self._task is not None
        await self._stop_leading()
        if was_leading:
            await self._release()
