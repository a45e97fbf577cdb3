"""Failure paths that used to go untested: every attempt failing, idle and connect timeouts,
``retry_body_limit``, ``max_connections_per_replica``, an overflowing wait queue, a failing
scaler tick, and the ``skyform_autoscaler_*`` / ``skyform_deployer_*`` metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any

import httpx
import pytest
from agent_helpers import (
    Replica,
    agent_config,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)
from test_deployer_pulumi import StackDouble, until
from test_deployer_pulumi import make as make_deployer
from test_hostile_peers import RawReplica, agent_for, bad_gateway, errors, exchange, get, settled
from test_scaler import POLICY, Clock
from test_scaler import make as make_scaler

from lb_agent.control.states import ReplicaState


async def test_every_attempt_failing_gives_502_json_after_trying_each_replica(
        tmp_path: Any) -> None:
    async def garbage(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"SPAM 200 OK\r\n\r\n")
        return True

    reps = [await RawReplica(garbage).start() for _ in range(3)]
    async with agent_for(tmp_path, reps, proxy={"max_attempts": 2}) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == bad_gateway(2)  # max_attempts bounds the tries
        await settled(agent)
        assert sorted(len(r.requests) for r in reps) == [0, 1, 1]  # two different replicas
        assert errors(agent, "protocol") == 2
        assert agent.runtime.metrics.retries._value.get() == 1
        assert not agent.runtime.ejected  # it answered: not a connect failure


async def test_idle_timeout_on_an_idempotent_request_tries_the_next_replica(
        tmp_path: Any) -> None:
    async def silent(reader: asyncio.StreamReader, _w: Any, _req: bytes) -> bool:
        await reader.read()
        return False

    reps = [await RawReplica(silent).start(), await RawReplica(silent).start()]
    async with agent_for(tmp_path, reps, proxy={"idle_timeout_seconds": 0.3}) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == bad_gateway(2)
        await settled(agent)
        assert [len(r.requests) for r in reps] == [1, 1]
        assert errors(agent, "timeout") == 2


async def test_connect_timeout_ejects_the_replica_and_the_request_goes_elsewhere(
        tmp_path: Any) -> None:
    # A listener that never accepts, its backlog full: new SYNs get no answer (Linux).
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(black.getsockname())
        fillers.append(s)
    good = await RawReplica().start()
    try:
        async with agent_for(tmp_path, [good], proxy={"connect_timeout_seconds": 0.2},
                             policy="round_robin") as agent:
            agent.runtime.registry.register(
                "black-0", f"http://127.0.0.1:{black.getsockname()[1]}",
                state=ReplicaState.READY)
            for _ in range(2):
                got = await exchange(agent.runtime.bound_ports["public"], get("/ok"))
                assert got.endswith(b"\r\n\r\nok")
            await settled(agent)
            assert errors(agent, "connect") == 1
            assert agent.runtime.ejected == {"black-0"}
            assert len(good.requests) == 2
    finally:
        for s in fillers:
            s.close()
        black.close()


async def test_retry_body_limit_decides_whether_a_put_can_be_resent(tmp_path: Any) -> None:
    bad, good = await Replica("bad").start(), await Replica("good").start()
    bad.state.fail_status = 503
    try:
        cfg = agent_config(tmp_path, [bad.url, good.url], policy="round_robin",
                           proxy={"retry_body_limit": 1024})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(2)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                small = [await client.put("/x", content=b"s" * 100) for _ in range(4)]
                assert [r.status_code for r in small] == [200] * 4
                hits = bad.state.hits
                assert hits >= 1
                # Over the limit the body is streamed, not kept: no retry is possible, so the
                # replica's own answer reaches the client.
                async def streamed() -> Any:
                    for _ in range(4):
                        yield b"b" * 1024
                        await asyncio.sleep(0.05)  # separate reads on the agent's side

                big = [await client.put("/x", content=streamed()) for _ in range(4)]
            codes = sorted(r.status_code for r in big)
            assert 503 in codes and codes.count(503) == bad.state.hits - hits
            assert all(r.json()["size"] == 4096 for r in big if r.status_code == 200)
    finally:
        await bad.stop()
        await good.stop()


async def test_max_connections_per_replica_bounds_the_idle_pool(tmp_path: Any) -> None:
    async def slow(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        await asyncio.sleep(0.2)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk")
        return True

    rep = await RawReplica(slow).start()
    async with agent_for(tmp_path, [rep], proxy={"max_connections_per_replica": 2}) as agent:
        port = agent.runtime.bound_ports["public"]
        for _ in range(2):
            got = await asyncio.gather(*(exchange(port, get("/s")) for _ in range(6)))
            assert all(g.endswith(b"\r\n\r\nk") for g in got)
        await settled(agent)
        # Six at once need six connections; only two were kept for the second round.
        assert rep.connections == 6 + 4
        assert len(rep.requests) == 12


async def test_overflowing_wait_queue_answers_503_at_once(tmp_path: Any) -> None:
    rep = await Replica("late").start()
    rep.state.healthy = False
    try:
        cfg = agent_config(tmp_path, [rep.url], proxy={"queue_wait_seconds": 5},
                           admission={"queue_max_depth": 2})
        async with running_agent(cfg) as agent:
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                waiting = [asyncio.create_task(client.get("/x")) for _ in range(2)]
                await until(lambda: len(agent.runtime.queue) == 2)
                overflow = await asyncio.wait_for(client.get("/x"), 2)  # no room: no wait
                assert overflow.status_code == 503
                assert overflow.json()["error"] == "no_ready_replica"
                assert not any(t.done() for t in waiting)
                rep.state.healthy = True
                answers = await asyncio.gather(*waiting)
            assert [r.status_code for r in answers] == [200, 200]
            assert agent.runtime.metrics.no_replica._value.get() == 1
    finally:
        await rep.stop()


class _FlakyDeployerError(RuntimeError):
    pass


async def test_scaler_loop_survives_a_failing_tick(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    sc, dep, rt = make_scaler(POLICY, clock)
    real_scale_up = dep.scale_up
    failures = [1]

    async def flaky(spot: bool | None) -> str:
        if failures:
            failures.pop()
            raise _FlakyDeployerError("cloud API down")
        return await real_scale_up(spot)

    dep.scale_up = flaky  # type: ignore[method-assign]
    sc.autoscaler.decision_interval = lambda: 0.01  # type: ignore[method-assign]
    seen_errors: list[str] = []
    with caplog.at_level(logging.ERROR, logger="lb_agent.control.scaler"):
        task = asyncio.create_task(sc.run())
        try:
            await until(lambda: sc.last_error is not None or dep.launched != [])
            if sc.last_error:
                seen_errors.append(sc.last_error)
            await until(lambda: dep.launched == ["local-1"])  # the next tick did launch
            await until(lambda: sc.last_error is None)
            # The published status catches up on the tick after (it is built during a tick).
            await until(lambda: rt.autoscaler_status is not None
                        and rt.autoscaler_status["error"] is None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert seen_errors == ["_FlakyDeployerError: cloud API down"]
    assert [r.message for r in caplog.records] == ["scaler tick failed"]
    assert ("close", None) in dep.calls  # the loop still ended the deployer's work


async def test_autoscaler_metrics_follow_the_decisions() -> None:
    clock = Clock()
    sc, _dep, rt = make_scaler(POLICY, clock)
    reg = rt.metrics_registry

    def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
        return reg.get_sample_value(name, labels or {})

    await sc.tick()  # min_replicas 1: one scale-up
    assert sample("skyform_autoscaler_target_replicas") == 1
    assert sample("skyform_autoscaler_decisions_total", {"operator": "scale_up"}) == 1
    rt.registry.register("local-1", "http://127.0.0.1:9", state=ReplicaState.READY)
    clock.t += 20
    for i in range(180):  # 3 qps over the window: target 3
        rt.arrivals.record(clock.t - 59.9 + i / 3)
    await sc.tick()
    assert sample("skyform_autoscaler_qps") == 3.0
    assert sample("skyform_autoscaler_target_replicas") == 3
    assert sample("skyform_autoscaler_decisions_total", {"operator": "scale_up"}) == 3
    for rid in ("local-2", "local-3"):
        rt.registry.register(rid, "http://127.0.0.1:9", state=ReplicaState.READY)
    rt.targets["local-3"].in_flight = 1  # still busy when the scale-down comes
    sc.drain_timeout = 0.05
    clock.t += 200  # no load: down to 1 after the downscale delay
    await sc.tick()
    await sc.wait_removals()
    assert sample("skyform_autoscaler_qps") == 0.0
    downs = sample("skyform_autoscaler_decisions_total", {"operator": "scale_down"})
    assert downs == 2
    clean = sample("skyform_autoscaler_drains_total", {"outcome": "clean"}) or 0
    timeout = sample("skyform_autoscaler_drains_total", {"outcome": "timeout"}) or 0
    assert (clean, timeout) == (1, 1)


async def test_deployer_metrics_count_refreshes_busy_and_desired() -> None:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    double = StackDouble()
    double.gate = threading.Event()
    dep, registry = make_deployer(double, metrics_registry=reg,
                                  initial_counts={"spot": 1, "ondemand": 0})
    registry.register("spot-0", "http://10.0.0.1:8080", spot=True, group="spot", index=0)
    await dep.start()
    await dep.scale_up(False)
    await until(double.up_started.is_set)
    assert reg.get_sample_value("skyform_deployer_busy") == 1
    assert reg.get_sample_value("skyform_deployer_desired_replicas", {"group": "ondemand"}) == 1
    double.gate.set()
    await until(lambda: dep.updates_ok == 1)
    await until(lambda: reg.get_sample_value("skyform_deployer_busy") == 0)
    await dep.replace("spot-0", "preempted")  # a vanished replica: refresh, then up
    await until(lambda: dep.updates_ok == 2)
    assert reg.get_sample_value("skyform_deployer_refreshes_total") == 1
    assert reg.get_sample_value("skyform_deployer_updates_total", {"result": "ok"}) == 2
    assert reg.get_sample_value("skyform_deployer_desired_replicas", {"group": "spot"}) == 1
    await dep.close()
