"""Readiness probing: SkyServe's state machine, POST probes, initial delay, failure window."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_helpers import (
    Replica,
    agent_config,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
    until,
)

from lb_agent.control.prober import Prober
from lb_agent.control.states import ReplicaState
from lb_agent.runtime import AgentRuntime


def _runtime(tmp_path: Any, **probe: Any) -> tuple[AgentRuntime, Prober]:
    cfg = agent_config(tmp_path, [], probe=probe)
    rt = AgentRuntime(cfg)
    return rt, Prober(rt)


def test_initial_delay_counts_from_first_failed_probe(tmp_path: Any) -> None:
    rt, prober = _runtime(tmp_path, initial_delay_seconds=100)
    rec = rt.registry.register("spot-0", "http://127.0.0.1:1")
    assert rec.state is ReplicaState.STARTING
    # Registered long before the first probe: launch time does not count.
    prober.apply(rec, False, 1000.0)
    assert rec.first_failure_at == 1000.0
    prober.apply(rec, False, 1100.0)  # exactly the delay: still tolerated
    assert rec.state is ReplicaState.STARTING
    prober.apply(rec, False, 1100.5)
    assert rec.state is ReplicaState.FAILED_INITIAL_DELAY
    assert rec.state.is_terminal
    assert not prober._due(rec)  # never probed again
    rt.close()


def test_ready_not_ready_and_failed_probing_window(tmp_path: Any) -> None:
    rt, prober = _runtime(tmp_path, failure_window_seconds=180)
    rec = rt.registry.register("spot-0", "http://127.0.0.1:1")
    prober.apply(rec, False, 10.0)
    prober.apply(rec, True, 20.0)
    assert rec.state is ReplicaState.READY and rec.first_failure_at is None
    assert [t.replica_id for t in rt.routable] == ["spot-0"]
    prober.apply(rec, False, 30.0)
    assert rec.state is ReplicaState.NOT_READY
    assert rt.routable == []
    prober.apply(rec, True, 40.0)  # a success clears the failure list
    assert rec.state is ReplicaState.READY
    for t in range(50, 230, 10):
        prober.apply(rec, False, float(t))
    assert rec.state is ReplicaState.NOT_READY  # 220 - 50 = 170 < 180
    prober.apply(rec, False, 230.0)
    assert rec.state is ReplicaState.FAILED_PROBING
    rt.close()


def test_static_replica_recovers_from_failed_probing(tmp_path: Any) -> None:
    rt, prober = _runtime(tmp_path, failure_window_seconds=1)
    rec = rt.registry.register("static-9", "http://127.0.0.1:1", static=True)
    prober.apply(rec, True, 1.0)
    prober.apply(rec, False, 2.0)
    prober.apply(rec, False, 3.5)
    assert rec.state is ReplicaState.FAILED_PROBING
    assert prober._due(rec)
    prober.apply(rec, True, 4.0)
    assert rec.state is ReplicaState.READY
    rt.close()


async def test_post_probe_with_headers_and_only_200_counts(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(
            tmp_path, [rep.url],
            probe={"post_data": {"model": "m", "prompt": "hi"}, "headers": {"X-Key": "k1"}},
        )
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            probe = rep.state.probes[-1]
            assert probe["method"] == "POST"
            assert probe["headers"]["x-key"] == "k1"
            assert probe["headers"]["content-type"] == "application/json"
            assert probe["size"] == len(b'{"model": "m", "prompt": "hi"}')
            rep.state.health_code = 204  # not 200: a failure
            await until(lambda: not agent.runtime.routable, "the failing probe to take it out")
            assert agent.runtime.registry.get("static-0").state is ReplicaState.NOT_READY  # type: ignore[union-attr]
            rep.state.health_code = 200
            await agent.wait_ready(1)
            assert agent.runtime.registry.get("static-0").state is ReplicaState.READY  # type: ignore[union-attr]
    finally:
        await rep.stop()


async def test_probe_timeout_is_a_failure(tmp_path: Any) -> None:
    rt, prober = _runtime(tmp_path, timeout_seconds=0.2)

    never = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()  # never answers: only the probe's own timeout ends the probe
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rec = rt.registry.register("spot-0", f"http://127.0.0.1:{port}")
    await asyncio.wait_for(prober.probe_once(), 60)
    assert rt.probe_results["spot-0"] == "timeout after 0.2s"
    assert rec.first_failure_at is not None and rec.state is ReplicaState.STARTING
    never.set()
    server.close()
    await prober.close()
    rt.close()
