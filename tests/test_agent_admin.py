"""The admin API: token checks, registration, drain, status and Prometheus metrics."""

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

from lb_agent.control.states import ReplicaState


async def test_requests_without_token_get_401_and_change_nothing(tmp_path: Any) -> None:
    async with running_agent(agent_config(tmp_path, [], probe={"interval_seconds": 60})) as agent:
        rt = agent.runtime
        rt.registry.register("spot-0", "http://127.0.0.1:9", state=ReplicaState.READY)
        before = [r.to_json() for r in rt.registry.list()]
        async with httpx.AsyncClient(base_url=agent.admin_url) as admin:
            for headers in ({}, {"Authorization": "Bearer wrong-token-xxxx"},
                            {"Authorization": "Basic dGVzdA=="}):
                calls = [
                    admin.post("/replicas", headers=headers,
                               json={"replica_id": "evil-0", "url": "http://1.2.3.4:80"}),
                    admin.delete("/replicas/spot-0", headers=headers),
                    admin.post("/replicas/spot-0/drain", headers=headers),
                    admin.get("/status", headers=headers),
                    admin.get("/metrics", headers=headers),
                ]
                for call in calls:
                    r = await call
                    assert r.status_code == 401, r.text
                    assert "token" in r.json()["detail"]
                    assert r.headers["www-authenticate"] == "Bearer"
            r = await admin.get("/health")
            assert r.status_code == 200 and r.json()["status"] == "ok"
        assert [r.to_json() for r in rt.registry.list()] == before


async def test_register_probe_route_drain_deregister(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with (
            running_agent(agent_config(tmp_path, [])) as agent,
            httpx.AsyncClient(base_url=agent.admin_url, headers=auth()) as admin,
            httpx.AsyncClient(base_url=agent.url) as client,
        ):
            r = await admin.post("/replicas", json={
                "replica_id": "ondemand-0", "url": rep.url, "accelerator": "L4",
                "group": "ondemand", "index": 0,
            })
            assert r.status_code == 200 and r.json()["state"] == "STARTING"
            await agent.wait_ready(1)
            assert (await client.get("/x")).json()["replica"] == "a"
            r = await admin.post("/replicas", json={"replica_id": "bad", "url": "ftp://x"})
            assert r.status_code == 422
            for bad_id in ("a\nb", "a b", "", "-x", "x" * 201):
                r = await admin.post("/replicas", json={"replica_id": bad_id, "url": rep.url})
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
                    "body", "replica_id"], bad_id
            r = await admin.post("/replicas/ondemand-0/drain")
            assert r.json()["draining"] is True
            assert (await client.get("/x")).status_code == 503
            status = (await admin.get("/status")).json()
            (item,) = status["replicas"]
            assert (item["state"], item["draining"], item["routable"], item["in_flight"]) == (
                "READY", True, False, 0)
            r = await admin.delete("/replicas/ondemand-0")
            assert r.status_code == 200
            assert agent.runtime.registry.list() == []
            assert (await admin.delete("/replicas/ondemand-0")).status_code == 404
    finally:
        await rep.stop()


async def test_status_and_metrics(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            agent.runtime.autoscaler_status = {"target_num_replicas": 2}
            rep.state.fail_status = None
            async with httpx.AsyncClient(base_url=agent.url) as client:
                for _ in range(3):
                    assert (await client.get("/x")).status_code == 200
            rep.state.fail_status = 404
            async with httpx.AsyncClient(base_url=agent.url) as client:
                assert (await client.get("/missing")).status_code == 404
            async with httpx.AsyncClient(base_url=agent.admin_url, headers=auth()) as admin:
                status = (await admin.get("/status")).json()
                text = (await admin.get("/metrics")).text
            assert status["autoscaler"] == {"target_num_replicas": 2}
            assert status["requests_in_window"] == 4 and status["qps"] == 4 / 60
            assert status["ready_replicas"] == 1 and status["policy"] == "least_load"
            assert 'skyform_lb_requests_total{code="200"} 3.0' in text
            assert 'skyform_lb_requests_total{code="404"} 1.0' in text
            assert "skyform_lb_request_duration_seconds_count 4.0" in text
            assert 'skyform_lb_in_flight{replica="static-0"} 0.0' in text
            assert 'skyform_replica_state{replica="static-0",state="READY"} 1.0' in text
            assert "skyform_lb_retries_total 0.0" in text
            assert "skyform_lb_routable_replicas 1.0" in text
    finally:
        await rep.stop()


async def test_lifespan_starts_and_stops_the_scaler(tmp_path: Any, monkeypatch: Any) -> None:
    import asyncio

    import lb_agent.control.scaler

    events: list[str] = []

    async def fake_run_scaler(runtime: Any) -> None:
        events.append("started")
        runtime.autoscaler_status = {"target_num_replicas": 1}
        try:
            await asyncio.Event().wait()
        finally:
            events.append("stopped")

    monkeypatch.setattr(lb_agent.control.scaler, "run_scaler", fake_run_scaler)
    cfg = agent_config(tmp_path, [], autoscaler={"enabled": True})
    async with running_agent(cfg) as agent:
        for _ in range(100):
            if events:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=agent.admin_url, headers=auth()) as admin:
            status = (await admin.get("/status")).json()
        assert status["autoscaler"] == {"target_num_replicas": 1}
    assert events == ["started", "stopped"]
    events.clear()
    async with running_agent(agent_config(tmp_path, [], autoscaler={"enabled": False})):
        await asyncio.sleep(0.1)
    assert events == []


async def test_unexpected_error_answers_500_json(tmp_path: Any) -> None:
    """A failure inside a handler (here: the state file refusing a write) is a JSON 500."""
    import sqlite3

    async with running_agent(agent_config(tmp_path, [], probe={"interval_seconds": 60})) as agent:
        def failing_register(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        agent.runtime.registry.register = failing_register  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=agent.admin_url, headers=auth()) as admin:
            r = await admin.post("/replicas", json={"replica_id": "spot-0",
                                                    "url": "http://127.0.0.1:9"})
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert "internal error" in r.json()["detail"]
