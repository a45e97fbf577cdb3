"""Registry, StateStore and ArrivalWindow: persistence across restarts and the 60 s window."""

from __future__ import annotations

from typing import Any

import httpx
from agent_helpers import (
    Replica,
    agent_config,
    auth,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)

from lb_agent.control.arrivals import ArrivalWindow
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState
from lb_agent.control.store import StateStore


def test_registry_and_store_survive_reopen(tmp_path: Any) -> None:
    path = str(tmp_path / "s.db")
    store = StateStore(path)
    reg = Registry(store, clock=lambda: 50.0)
    reg.register("spot-0", "http://10.0.0.5:8080/", version=2, spot=True, accelerator="A100",
                 group="spot", index=0)
    reg.register("ondemand-0", "http://10.0.0.6:8080", group="ondemand", index=0)
    reg.set_state("spot-0", ReplicaState.READY)
    reg.mark_draining("ondemand-0")
    reg.register("gone-0", "http://10.0.0.7:8080")
    reg.remove("gone-0")
    store.put_json("autoscaler", {"target": 3, "ticks": [1, 2]})
    store.close()

    store2 = StateStore(path)
    reg2 = Registry(store2)
    assert [r.replica_id for r in reg2.list()] == ["ondemand-0", "spot-0"]
    spot = reg2.get("spot-0")
    assert spot is not None
    assert (spot.url, spot.state, spot.version, spot.spot, spot.accelerator, spot.group,
            spot.index, spot.registered_at) == (
        "http://10.0.0.5:8080", ReplicaState.READY, 2, True, "A100", "spot", 0, 50.0)
    assert reg2.get("ondemand-0").draining  # type: ignore[union-attr]
    assert store2.get_json("autoscaler") == {"target": 3, "ticks": [1, 2]}
    assert store2.get_json("missing") is None
    mode = store2.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store2.close()


def test_heartbeat_keeps_state_new_url_restarts(tmp_path: Any) -> None:
    now = [10.0]
    reg = Registry(StateStore(str(tmp_path / "s.db")), clock=lambda: now[0])
    reg.register("spot-1", "http://10.0.0.5:8080")
    reg.set_state("spot-1", ReplicaState.READY)
    now[0] = 20.0
    rec = reg.register("spot-1", "http://10.0.0.5:8080")
    assert rec.state is ReplicaState.READY
    assert (rec.registered_at, rec.last_heartbeat) == (10.0, 20.0)
    rec = reg.register("spot-1", "http://10.0.0.9:8080")  # a new process elsewhere
    assert rec.state is ReplicaState.STARTING and rec.registered_at == 20.0


def test_arrival_window_is_sixty_seconds() -> None:
    w = ArrivalWindow()
    for t in (0.0, 10.0, 30.0, 59.0, 61.0):
        w.record(t)
    assert w.timestamps(61.0) == [10.0, 30.0, 59.0, 61.0]
    assert w.qps(61.0) == 4 / 60
    assert w.timestamps(200.0) == []


async def test_agent_restart_recovers_registry(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [])
        async with running_agent(cfg) as agent:
            async with httpx.AsyncClient(base_url=agent.admin_url) as admin:
                r = await admin.post("/replicas", headers=auth(), json={
                    "replica_id": "spot-0", "url": rep.url, "spot": True, "version": 3,
                    "group": "spot", "index": 0,
                })
                assert r.status_code == 200
            await agent.wait_ready(1)
        # Same state file, new process state: the replica is known and READY at once.
        cfg2 = agent_config(tmp_path, [], probe={"interval_seconds": 30})
        async with running_agent(cfg2) as agent2:
            rec = agent2.runtime.registry.get("spot-0")
            assert rec is not None
            assert (rec.state, rec.version, rec.spot, rec.url) == (
                ReplicaState.READY, 3, True, rep.url)
            async with httpx.AsyncClient(base_url=agent2.url) as client:
                r = await client.get("/x")
            assert r.status_code == 200 and r.json()["replica"] == "a"
    finally:
        await rep.stop()


def test_static_replicas_follow_the_config_across_restarts(tmp_path: Any) -> None:
    from lb_agent.runtime import AgentRuntime

    cfg = agent_config(tmp_path, ["http://127.0.0.1:7001", "http://127.0.0.1:7002"])
    rt = AgentRuntime(cfg)
    rt.registry.register("spot-0", "http://127.0.0.1:7100")  # registered through the API
    rt.close()
    cfg2 = agent_config(tmp_path, ["http://127.0.0.1:7009"])
    rt2 = AgentRuntime(cfg2)
    assert {(r.replica_id, r.url) for r in rt2.registry.list()} == {
        ("static-0", "http://127.0.0.1:7009"), ("spot-0", "http://127.0.0.1:7100")}
    rt2.close()


def test_arrival_window_out_of_order_and_fractional_seconds() -> None:
    w = ArrivalWindow(window_seconds=10)
    for t in (100.5, 100.9, 101.2, 99.7, 111.0):  # 99.7 arrives late (clock skew)
        w.record(t)
    assert w.timestamps(110.6) == [100.9, 101.2]
    assert w.timestamps(111.0) == [101.2, 111.0]
    many = ArrivalWindow(window_seconds=2)
    for i in range(10_000):
        many.record(1000 + i / 1000)  # 10 s of 1,000 req/s
    assert many.count(1009.999) == 2001
