"""Probing until the first READY: a replica that is STARTING is probed quickly and
at once when it registers, not after a whole ``interval_seconds``; once READY it is probed at
the interval; the last probe's outcome is kept for the status display."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_helpers import Replica, agent_config

from lb_agent.control.prober import Prober
from lb_agent.control.states import ReplicaState
from lb_agent.runtime import AgentRuntime


async def _wait(pred: Any, rounds: int = 200) -> None:
    for _ in range(rounds):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_starting_replica_is_probed_fast_then_at_the_interval(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    rep.state.health_code = 503
    rt = AgentRuntime(agent_config(tmp_path, [], probe={"interval_seconds": 3600}))
    prober = Prober(rt)
    task = asyncio.create_task(prober.run())
    try:
        await asyncio.sleep(0.2)  # the prober's first (empty) round is done: it now sleeps
        rec = rt.registry.register("local-1", rep.url)
        # Registering wakes the prober, and a STARTING replica is probed again and again
        # although the interval is an hour.
        await _wait(lambda: len(rep.state.probes) >= 3)
        assert rt.probe_results["local-1"] == "HTTP 503"
        assert rec.state is ReplicaState.STARTING
        rep.state.health_code = 200
        await _wait(lambda: rec.state is ReplicaState.READY)
        assert rt.probe_results["local-1"] == "HTTP 200"
        seen = len(rep.state.probes)
        await asyncio.sleep(1.5)  # longer than the slowest fast round (1 s)
        assert len(rep.state.probes) == seen  # READY: back to the hour-long interval
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rt.close()
        await rep.stop()


async def test_connection_refused_is_the_recorded_result(tmp_path: Any) -> None:
    rt = AgentRuntime(agent_config(tmp_path, []))
    prober = Prober(rt)
    try:
        rt.registry.register("local-1", "http://127.0.0.1:1")
        await prober.probe_once()
        assert rt.probe_results["local-1"].startswith("connection failed: ")
        rt.registry.remove("local-1")
        assert "local-1" not in rt.probe_results  # forgotten with the replica
    finally:
        await prober.close()
        rt.close()
