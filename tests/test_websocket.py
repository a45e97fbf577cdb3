"""WebSocket connections through the agent, against real uvicorn replicas on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
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

from lb_agent.control.states import ReplicaState

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
        # Slow probes: the relay, not the prober, must take the dead replica out. Round robin:
        # the dead replica is certain to be picked (least-load ties are random).
        config = agent_config(tmp_path, [rep.url], probe={"interval_seconds": 60},
                              policy="round_robin")
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


async def _raw_ws_replica(accept: str | None) -> tuple[Any, str, list[int]]:
    """A raw replica answering the handshake with ``accept`` (None: the correct key), then
    dropping the TCP connection without a close frame. Returns (server, url, hits)."""
    hits: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /health"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        hits.append(1)
        key = re.search(rb"(?i)\r\nsec-websocket-key: *([^\r]+)", head).group(1)  # type: ignore[union-attr]
        good = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept or good}\r\n\r\n"
                      ).encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()  # gone without a close frame

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", hits


async def test_bad_accept_header_is_retried_on_another_replica(tmp_path: Any) -> None:
    rep = await Replica("live").start()
    server, bad_url, hits = await _raw_ws_replica("bm90IHRoZSByaWdodCBrZXk=")
    try:
        # Round robin: the bad replica is certain to be picked first some of the time.
        config = agent_config(tmp_path, [rep.url], probe={"interval_seconds": 60},
                              policy="round_robin")
        async with running_agent(config) as agent:
            await agent.wait_ready(1)
            agent.runtime.registry.register("bad-0", bad_url, state=ReplicaState.READY)
            for _ in range(6):
                async with connect(ws_url(agent.url, "/ws"), proxy=None) as ws:
                    await ws.send("whoami")
                    assert json.loads(await ws.recv())["replica"] == "live"
            assert rep.state.hits == 6
            assert len(hits) >= 2  # the bad replica was tried, and the retry went elsewhere
            errors = agent.runtime.metrics.errors.labels(kind="protocol")._value.get()
            assert errors == len(hits)
    finally:
        server.close()
        await rep.stop()


async def test_every_handshake_failing_gives_502_json_without_addresses(tmp_path: Any) -> None:
    s1, u1, h1 = await _raw_ws_replica("bm90IHRoZSByaWdodCBrZXk=")
    s2, u2, h2 = await _raw_ws_replica("YWxzbyB3cm9uZw==")
    try:
        config = agent_config(tmp_path, [], probe={"interval_seconds": 60})
        async with running_agent(config) as agent:
            agent.runtime.registry.register("bad-0", u1, state=ReplicaState.READY)
            agent.runtime.registry.register("bad-1", u2, state=ReplicaState.READY)
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(agent.url, "/ws"), proxy=None)
            response = info.value.response
            assert response.status_code == 502
            body = json.loads(response.body or b"{}")
            assert body["error"] == "upstream_unavailable" and body["attempts"] == 2
            assert "127.0.0.1" not in (response.body or b"").decode()
            assert len(h1) == 1 and len(h2) == 1
    finally:
        s1.close()
        s2.close()


async def test_replica_vanishing_mid_connection_closes_the_client_with_1014(
        tmp_path: Any) -> None:
    server, url, hits = await _raw_ws_replica(None)
    try:
        config = agent_config(tmp_path, [], probe={"interval_seconds": 60})
        async with running_agent(config) as agent:
            agent.runtime.registry.register("gone-0", url, state=ReplicaState.READY)
            async with connect(ws_url(agent.url, "/ws"), proxy=None) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1014
                assert ws.close_reason == "replica connection lost"
            assert len(hits) == 1
    finally:
        server.close()


async def test_api_keys_guard_the_handshake_too(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    key = "sk-ws-0123456789abcdef"
    try:
        cfg = agent_config(tmp_path, [rep.url], admission={"api_keys": [key]})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(agent.url, "/ws"), proxy=None)
            assert info.value.response.status_code == 401
            assert json.loads(info.value.response.body or b"{}")["error"] == "unauthorized"
            async with connect(ws_url(agent.url, "/ws"), proxy=None,
                               additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                await ws.send("hi")
                assert "hi" in str(await ws.recv())
                # The key admission consumed is not forwarded to the replica.
                await ws.send("whoami")
                assert "authorization" not in json.loads(await ws.recv())["headers"]
    finally:
        await rep.stop()


# -- admission: the handshake goes through the same gate, queue and breakers as HTTP ---------

async def test_rate_limit_refuses_the_handshake_with_429_and_retry_after(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url],
                           admission={"rate_limit_rps": 0.5, "rate_limit_burst": 1})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            async with connect(ws_url(agent.url, "/ws"), proxy=None) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(agent.url, "/ws"), proxy=None)
            response = info.value.response
            assert response.status_code == 429
            assert 1 <= int(response.headers["Retry-After"]) <= 2
            assert json.loads(response.body or b"{}")["error"] == "rate_limited"
            assert rep.state.hits == 1  # the refused handshake never reached the replica
            rejected = agent.runtime.metrics.rejected.labels(reason="rate_limited")
            assert rejected._value.get() == 1
    finally:
        await rep.stop()


async def _queued(agent: Any, n: int) -> None:
    for _ in range(200):
        if len(agent.runtime.queue) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue depth {len(agent.runtime.queue)}, expected {n}")


async def test_handshake_waits_in_the_queue_at_the_per_replica_cap(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], proxy={"queue_wait_seconds": 10},
                           admission={"max_in_flight_per_replica": 1})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            first = await connect(ws_url(agent.url, "/ws"), proxy=None)
            second = asyncio.ensure_future(connect(ws_url(agent.url, "/ws"), proxy=None))
            await _queued(agent, 1)  # the open connection holds the replica's one slot
            await asyncio.sleep(0.2)
            assert not second.done() and rep.state.hits == 1
            await first.close()
            ws = await asyncio.wait_for(second, 5)  # the slot freed: it goes now
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.close()
            assert rep.state.max_active == 1 and rep.state.hits == 2
            assert len(agent.runtime.queue) == 0
    finally:
        await rep.stop()


async def test_handshake_waits_for_the_first_ready_replica(tmp_path: Any) -> None:
    rep = Replica("late")
    try:
        cfg = agent_config(tmp_path, [], proxy={"queue_wait_seconds": 20})
        async with running_agent(cfg) as agent:
            pending = asyncio.ensure_future(connect(ws_url(agent.url, "/ws"), proxy=None))
            await _queued(agent, 1)
            await rep.start()
            agent.runtime.registry.register("r-1", rep.url, state=ReplicaState.READY)
            ws = await asyncio.wait_for(pending, 10)
            await ws.send("whoami")
            assert json.loads(await ws.recv())["replica"] == "late"
            await ws.close()
    finally:
        await rep.stop()


async def test_queue_timeout_refuses_the_handshake_with_503(tmp_path: Any) -> None:
    cfg = agent_config(tmp_path, [], proxy={"queue_wait_seconds": 0.3})
    async with running_agent(cfg) as agent:
        with pytest.raises(InvalidStatus) as info:
            await connect(ws_url(agent.url, "/ws"), proxy=None)
        assert info.value.response.status_code == 503
        assert json.loads(info.value.response.body or b"{}")["error"] == "no_ready_replica"
        assert agent.runtime.metrics.rejected.labels(reason="queue_timeout")._value.get() == 1


async def test_failed_handshakes_open_the_breaker_and_an_open_replica_is_not_chosen(
        tmp_path: Any) -> None:
    server, bad_url, hits = await _raw_ws_replica("bm90IHRoZSByaWdodCBrZXk=")
    rep = Replica("live")
    try:
        cfg = agent_config(tmp_path, [], probe={"interval_seconds": 60}, admission={
            "breaker_failures": 2, "breaker_cooldown_seconds": 60})
        async with running_agent(cfg) as agent:
            agent.runtime.registry.register("bad-0", bad_url, state=ReplicaState.READY)
            for _ in range(2):
                with pytest.raises(InvalidStatus) as info:
                    await connect(ws_url(agent.url, "/ws"), proxy=None)
                assert info.value.response.status_code == 502
            breaker = agent.runtime.breakers["bad-0"]
            assert breaker.state == "open" and len(hits) == 2
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(agent.url, "/ws"), proxy=None)
            assert info.value.response.status_code == 503  # not sent to the open replica
            assert json.loads(info.value.response.body or b"{}")["error"] \
                == "no_replica_available"
            assert len(hits) == 2
            await rep.start()
            agent.runtime.registry.register("live-0", rep.url, state=ReplicaState.READY)
            for _ in range(3):
                async with connect(ws_url(agent.url, "/ws"), proxy=None) as ws:
                    await ws.send("whoami")
                    assert json.loads(await ws.recv())["replica"] == "live"
            assert len(hits) == 2 and rep.state.hits == 3
            assert agent.runtime.breakers["live-0"].state == "closed"
    finally:
        server.close()
        await rep.stop()
