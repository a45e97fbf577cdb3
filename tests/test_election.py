"""The election loop (lb_agent/control/election.py) over a fake lease store and clock: the
leader alone runs the leader's work (the scaler), a follower does not, and the work stops at
once when the lease is taken or has not been renewed for its duration."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from agent_helpers import agent_config, until

from lb_agent.control.cluster import lead
from lb_agent.control.election import Election
from lb_agent.control.leadership import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    Leadership,
    LeaseState,
    LeaseUnavailable,
)
from lb_agent.runtime import AgentRuntime


class FakeStore:
    """A lease in memory: a holder with a term; ``fail`` makes every call raise,
    ``hang`` makes acquire never answer."""

    duration_seconds = 15.0

    def __init__(self) -> None:
        self.holder: str | None = None
        self.term = 0
        self.fail = False
        self.hang = False
        self.released: list[str] = []

    async def acquire_or_renew(self, identity: str, address: str) -> LeaseState:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise LeaseUnavailable("store down")
        if self.holder is None:
            self.holder, self.term = identity, self.term + 1
        return LeaseState(self.holder, f"{self.holder}:1", 0.0, self.term)

    async def release(self, identity: str) -> None:
        self.released.append(identity)
        if self.holder == identity:
            self.holder = None


class Work:
    """Leader work that records its start and its cancellation."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.terms: list[int] = []

    async def __call__(self, state: LeaseState) -> None:
        self.terms.append(state.term)
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def election(store: FakeStore, name: str, work: Any, clock: list[float]) -> Election:
    return Election(store, Leadership(name), lambda: f"{name}:1", work, renew_seconds=5.0,
                    duration_seconds=15.0, clock=lambda: clock[0])


async def test_leader_runs_the_work_follower_does_not() -> None:
    store, clock = FakeStore(), [100.0]
    wa, wb = Work(), Work()
    a, b = election(store, "a", wa, clock), election(store, "b", wb, clock)
    assert (await a.step()).role == LEADER
    view = await b.step()
    assert (view.role, view.holder, view.address, view.term) == (FOLLOWER, "a", "a:1", 1)
    await wa.started.wait()
    assert wa.terms == [1] and not wb.started.is_set() and not b.leading
    # The lease changes hands: A stops at its next step, B starts at its own.
    store.holder = "b"
    store.term = 2
    assert (await a.step()).role == FOLLOWER
    assert wa.cancelled.is_set() and not a.leading
    assert (await b.step()).role == LEADER
    await wb.started.wait()
    assert wb.terms == [2]
    await b.close()
    assert store.released == ["b"] and store.holder is None


async def test_failed_renewals_stop_the_leader_after_the_duration() -> None:
    store, clock = FakeStore(), [100.0]
    work = Work()
    a = election(store, "a", work, clock)
    await a.step()
    await work.started.wait()
    store.fail = True
    clock[0] += 10  # within the duration: still leads
    view = await a.step()
    assert view.role == LEADER and view.error == "store down" and a.leading
    clock[0] += 5.1  # 15.1 s since the last successful renewal
    view = await a.step()
    assert view.role == CANDIDATE and view.holder is None
    assert work.cancelled.is_set() and not a.leading
    assert store.released == ["a"]  # given up, so a successor need not wait


async def test_a_hanging_store_is_cut_off_at_the_deadline() -> None:
    store, clock = FakeStore(), [100.0]
    work = Work()
    a = election(store, "a", work, clock)
    await a.step()
    await work.started.wait()
    store.hang = True
    clock[0] += 15.0  # the deadline is now: the call gets no time at all
    view = await a.step()
    assert view.role == CANDIDATE and work.cancelled.is_set()


async def test_expire_stops_a_leader_between_steps() -> None:
    store, clock = FakeStore(), [100.0]
    work = Work()
    a = election(store, "a", work, clock)
    await a.step()
    await work.started.wait()
    clock[0] += 14.9
    await a.expire()
    assert a.leading
    clock[0] += 0.1
    await a.expire()
    assert not a.leading and work.cancelled.is_set()


def scaling_config(tmp_path: Path, name: str) -> Any:
    service = {"name": "svc", "service_spec": {
        "readiness_probe": {"path": "/health"},
        "replica_policy": {"min_replicas": 1, "max_replicas": 3,
                           "target_qps_per_replica": 5}}}
    return agent_config(tmp_path, service=service,
                        state_file=str(tmp_path / f"{name}.db"),
                        autoscaler={"enabled": True, "decision_interval_seconds": 3600})


async def test_the_leader_runs_the_scaler_and_losing_the_lease_stops_it(tmp_path: Path) -> None:
    store, clock = FakeStore(), [100.0]
    ra = AgentRuntime(scaling_config(tmp_path, "a"))
    rb = AgentRuntime(scaling_config(tmp_path, "b"))
    try:
        async def work_a(state: LeaseState) -> None:
            await lead(ra, state)

        async def work_b(state: LeaseState) -> None:
            await lead(rb, state)

        a = election(store, "a", work_a, clock)
        b = election(store, "b", work_b, clock)
        await a.step()
        await b.step()
        await until(lambda: ra.scaler is not None and ra.scaler.ticks >= 1,
                    "the leader's first scale decision")
        assert rb.scaler is None and rb.autoscaler_status is None
        assert ra.autoscaler_status is not None and ra.autoscaler_status["target"] == 1
        # The scaler's metrics are the term's: served while leading, gone after.
        from prometheus_client import generate_latest

        assert b"skyform_autoscaler_target_replicas" in generate_latest(ra.metrics_registry)
        store.fail = True
        clock[0] += 15.0
        await a.step()
        assert ra.scaler is None and not a.leading
        assert b"skyform_autoscaler_target_replicas" not in generate_latest(ra.metrics_registry)
        # The stopped scaler no longer follows the registry (the routed versions are the
        # new leader's, mirrored by the cluster client).
        ra.active_versions = frozenset({99})
        ra.registry.register("r9", "http://127.0.0.1:9")
        assert ra.active_versions == frozenset({99})
        ra.registry.remove("r9")
        # Elected again later, it builds a fresh scaler (its metrics registered anew).
        store.fail = False
        await a.step()
        await until(lambda: ra.scaler is not None and ra.scaler.ticks >= 1,
                    "the second term's first decision")
        await a.close()
        await b.close()
    finally:
        ra.close()
        rb.close()


async def test_a_poke_tries_the_lease_at_once() -> None:
    """A follower that finds the leader unreachable steps now, not at its next renewal."""
    store, clock = FakeStore(), [100.0]
    store.holder, store.term = "gone", 1
    work = Work()
    a = Election(store, Leadership("a"), lambda: "a:1", work, renew_seconds=3600.0,
                 duration_seconds=15.0, clock=lambda: clock[0])
    runner = asyncio.create_task(a.run())
    try:
        await until(lambda: a.leadership.role == FOLLOWER, "a to follow")
        store.holder = None  # the holder died and its lease is free
        a.poke()
        await asyncio.wait_for(work.started.wait(), 60)
        assert a.leadership.term == 2
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert work.cancelled.is_set() and store.released == ["a"]
