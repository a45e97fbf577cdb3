"""WebSocket connections through the agent, against real uvicorn replicas on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from agent_helpers import (
    Replica,
    agent_config,
    free_port,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from lb_agent.states import ReplicaState


def ws_url(http_url: str, path: str) -> str:
    return http_url.replace("http://", "ws://") + path


async def test_messages_relay_both_ways_with_handshake_details(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            async with connect(
                ws_url(agent.url, "/ws?room=7"), subprotocols=[Subprotocol("chat.v1")],
                additional_headers={"X-App": "kept", "Authorization": "Bearer user"},
                proxy=None,
            ) as ws:
                assert ws.subprotocol == "chat.v1"
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00\x01binary")
                assert await ws.recv() == b"\x00\x01binary"
                await ws.send("whoami")
                seen = json.loads(await ws.recv())
                assert (seen["replica"], seen["path"], seen["query"]) == ("a", "/ws", "room=7")
                headers = seen["headers"]
                assert headers["x-app"] == "kept"
                assert headers["authorization"] == "Bearer user"
                assert headers["x-forwarded-for"] == "127.0.0.1"
                assert headers["x-forwarded-proto"] == "ws"
                assert headers["x-forwarded-host"].startswith("127.0.0.1:")
                # While open, the connection is load on its replica (least-load sees it).
                assert agent.runtime.in_flight_counts() == {"static-0": 1}
            for _ in range(100):
                if agent.runtime.total_in_flight() == 0 and rep.state.active == 0:
                    break
                await asyncio.sleep(0.02)
            assert agent.runtime.total_in_flight() == 0
            assert rep.state.active == 0  # the client's close reached the replica
    finally:
        await rep.stop()


async def test_replica_close_code_reaches_the_client(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            async with connect(ws_url(agent.url, "/ws"), proxy=None) as ws:
                await ws.send("close:4001")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == 4001
            assert ws.close_reason == "bye"
    finally:
        await rep.stop()


async def test_connections_spread_by_least_load(tmp_path: Any) -> None:
    reps = [await Replica(n).start() for n in ("a", "b", "c")]
    try:
        async with running_agent(agent_config(tmp_path, [r.url for r in reps])) as agent:
            await agent.wait_ready(3)
            conns = [await connect(ws_url(agent.url, "/ws"), proxy=None) for _ in range(6)]
            try:
                # Six long-lived connections on three replicas: two each, none idle.
                assert sorted(r.state.active for r in reps) == [2, 2, 2]
            finally:
                for ws in conns:
                    await ws.close()
    finally:
        for r in reps:
            await r.stop()


async def test_no_ready_replica_refuses_the_handshake_with_503_json(tmp_path: Any) -> None:
    async with running_agent(agent_config(tmp_path, [])) as agent:
        with pytest.raises(InvalidStatus) as info:
            await connect(ws_url(agent.url, "/ws"), proxy=None)
        response = info.value.response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert json.loads(response.body or b"{}")["error"] == "no_ready_replica"


async def test_refused_replica_is_ejected_and_the_next_one_serves(tmp_path: Any) -> None:
    rep = await Replica("live").start()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    try:
        # Slow probes: the relay, not the prober, must take the dead replica out.
        config = agent_config(tmp_path, [rep.url], probe={"interval_seconds": 60})
        async with running_agent(config) as agent:
            await agent.wait_ready(1)
            agent.runtime.registry.register("dead-0", dead, state=ReplicaState.READY)
            assert len(agent.runtime.routable) == 2
            for _ in range(4):
                async with connect(ws_url(agent.url, "/ws"), proxy=None) as ws:
                    await ws.send("whoami")
                    assert json.loads(await ws.recv())["replica"] == "live"
            assert rep.state.hits == 4
            assert "dead-0" in agent.runtime.ejected
            assert [t.replica_id for t in agent.runtime.routable] == ["static-0"]
    finally:
        await rep.stop()
