"""Two load balancers in one process over a file lease (lb_agent/control/cluster.py): one
leads; the follower mirrors the leader's replica set, reports its arrivals so the leader's
autoscaler counts them, forwards registrations (checking a replica's credential and address
at the leader) and answers cluster calls with a status and a JSON body."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from agent_helpers import (
    TOKEN,
    AgentHandle,
    Replica,
    agent_config,
    auth,
    in_flight_back_to_zero,  # noqa: F401 - autouse fixture
    running_agent,
    until,
)

from lb_agent import credentials
from lb_agent.control.leadership import FOLLOWER, LEADER


def ha_config(tmp_path: Path, name: str, **extra: Any) -> Any:
    service = {"name": "svc", "service_spec": {
        "readiness_probe": {"path": "/health"},
        "replica_policy": {"min_replicas": 1, "max_replicas": 3,
                           "target_qps_per_replica": 1000}}}
    return agent_config(
        tmp_path, service=service, state_file=str(tmp_path / f"{name}.db"),
        autoscaler={"enabled": True, "decision_interval_seconds": 3600},
        lease={"kind": "file", "name": str(tmp_path / "leader.lock"), "identity": name,
               "renew_seconds": 0.05, "duration_seconds": 15}, **extra)


@contextlib.asynccontextmanager
async def two_lbs(tmp_path: Path) -> AsyncIterator[tuple[AgentHandle, AgentHandle]]:
    async with running_agent(ha_config(tmp_path, "lb-a")) as a:
        await until(lambda: a.runtime.leadership.role == LEADER, "lb-a to lead")
        async with running_agent(ha_config(tmp_path, "lb-b")) as b:
            await until(lambda: b.runtime.leadership.role == FOLLOWER, "lb-b to follow")
            yield a, b


async def test_the_follower_mirrors_the_leader_and_forwards_registrations(
        tmp_path: Path) -> None:
    rep = await Replica("r1").start()
    try:
        async with two_lbs(tmp_path) as (a, b), aiohttp.ClientSession() as http:
            assert b.runtime.leadership.holder == "lb-a"
            assert b.runtime.leadership.address == f"127.0.0.1:{a.config.admin.port}"
            # A registration with the admin token that reaches the follower lands at the leader.
            async with http.post(b.admin_url + "/replicas", headers=auth(),
                                 json={"replica_id": "r1", "url": rep.url}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["replica_id"] == "r1"
            assert a.runtime.registry.get("r1") is not None
            # The follower learns it from the leader and probes it itself.
            await b.wait_ready(1)
            assert rep.state.probes, "the replica was probed"
            # A replica's own credential, forwarded: the leader checks it and the address.
            key = credentials.registration_key(TOKEN)
            mine = {"Authorization": f"Bearer {credentials.credential(key, 'id:r1')}"}
            async with http.post(b.admin_url + "/replicas", headers=mine,
                                 json={"replica_id": "r1", "url": rep.url}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(b.admin_url + "/replicas", headers=mine,
                                 json={"replica_id": "r2", "url": rep.url}) as resp:
                assert resp.status == 401  # the credential does not cover r2
                assert "bearer token" in (await resp.json())["detail"]
            # /status and the metrics say who leads.
            async with http.get(b.admin_url + "/status", headers=auth()) as resp:
                lead = (await resp.json())["leadership"]
            assert (lead["role"], lead["holder"], lead["term"]) == (FOLLOWER, "lb-a", 1)
            async with http.get(a.admin_url + "/metrics", headers=auth()) as resp:
                text = await resp.text()
            assert 'skyform_lb_leader{holder="lb-a",role="leader"} 1.0' in text
            # Cluster calls are the leader's: a follower refuses them with 409 JSON.
            async with http.get(b.admin_url + "/cluster/state", headers=auth()) as resp:
                assert resp.status == 409
                assert "lb-b is not the leader" in (await resp.json())["detail"]
            async with http.get(a.admin_url + "/cluster/state") as resp:
                assert resp.status == 401
            # A call another load balancer forwarded is never forwarded again.
            async with http.post(b.admin_url + "/replicas/r1/drain", headers={
                    **auth(), "x-skyform-forwarded": "1"}) as resp:
                assert resp.status == 503
                assert "not the leader" in (await resp.json())["detail"]
            # Deregistering through the follower removes it everywhere.
            async with http.delete(b.admin_url + "/replicas/r1", headers=auth()) as resp:
                assert resp.status == 200
            assert a.runtime.registry.get("r1") is None
            await until(lambda: b.runtime.registry.get("r1") is None,
                        "the follower to drop r1")
    finally:
        await rep.stop()


async def test_arrivals_at_the_follower_reach_the_leaders_autoscaler(tmp_path: Path) -> None:
    async with two_lbs(tmp_path) as (a, b), aiohttp.ClientSession() as http:
        for _ in range(7):  # no replica: 503s, which SkyServe counts as arrivals too
            async with http.get(b.url + "/x") as resp:
                assert resp.status == 503
        assert b.runtime.arrivals.count(b.runtime.clock()) == 7
        await until(lambda: a.runtime.inbox.received == 7,
                    "the follower's 7 arrivals to reach the leader", timeout=60)
        scaler = a.runtime.scaler
        assert scaler is not None
        await scaler.tick()
        assert len(scaler.autoscaler.state.request_timestamps) == 7
        # The same counts sent again (a lost answer) are not counted twice.
        added = a.runtime.inbox.merge("lb-b", b.runtime.arrivals.counts(0, 2**40),
                                      a.runtime.clock())
        assert added == 0


async def test_a_follower_without_a_reachable_leader_answers_503_json(tmp_path: Path) -> None:
    lonely = ha_config(tmp_path, "lb-a")
    # The leader advertises an address nobody listens on.
    lonely = lonely.replace(lease=lonely.lease.model_copy(update={"address": "127.0.0.1:1"}))
    follower = ha_config(tmp_path, "lb-b")
    # It waits for a first sync at most the lease duration before it listens.
    follower = follower.replace(lease=follower.lease.model_copy(
        update={"duration_seconds": 1.0}))
    async with running_agent(lonely) as a:
        await until(lambda: a.runtime.leadership.role == LEADER, "lb-a to lead")
        async with running_agent(follower) as b, \
                aiohttp.ClientSession() as http:
            await until(lambda: b.runtime.leadership.role == FOLLOWER, "lb-b to follow")
            async with http.post(b.admin_url + "/replicas/x/drain", headers=auth()) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "2"
                assert "is not reachable" in (await resp.json())["detail"]
