"""The proxy against real uvicorn replicas: methods, headers, streaming, balance, failures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from typing import Any

import httpx
from agent_helpers import (
    Replica,
    agent_config,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
    start_replica_process,
    until,
)

from lb_agent.control.states import ReplicaState


async def test_every_method_path_query_and_body(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
                    body = b"x" * 1000 if method in ("POST", "PUT", "PATCH") else b""
                    r = await client.request(method, "/a/b%20c/?q=1&q=2&e=%2F", content=body)
                    assert r.status_code == 200, (method, r.text)
                    data = r.json()
                    assert data["method"] == method
                    assert data["raw_path"] == "/a/b%20c/"
                    assert data["query"] == "q=1&q=2&e=%2F"
                    assert data["size"] == len(body)
                    assert data["sha256"] == hashlib.sha256(body).hexdigest()
                r = await client.head("/anything")
                assert r.status_code == 200
                assert r.content == b""
                assert int(r.headers["content-length"]) > 0
    finally:
        await rep.stop()


async def test_hop_by_hop_stripped_and_forwarded_headers_added(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                r = await client.get("/echo", headers={
                    "Connection": "keep-alive, X-Secret", "X-Secret": "s", "TE": "trailers",
                    "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x",
                    "X-Forwarded-For": "10.9.8.7", "X-App": "kept",
                })
                seen = r.json()["headers"]
                for name in ("x-secret", "te", "keep-alive", "proxy-authorization"):
                    assert name not in seen, name
                assert seen["x-app"] == "kept"
                assert seen["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
                assert seen["x-forwarded-proto"] == "http"
                assert seen["x-forwarded-host"] == agent.url.split("//")[1]
                r = await client.get("/hop")
                assert r.headers["x-kept"] == "yes"
                assert "x-private" not in r.headers  # named in the replica's Connection header
                assert "keep-alive" not in r.headers
    finally:
        await rep.stop()


async def test_streamed_chunks_arrive_incrementally(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url, timeout=30) as client:
                # The replica sends its first chunk and then waits for the test: the client
                # gets that chunk while the rest of the response does not exist yet.
                async with client.stream("GET", "/hold-stream") as r:
                    assert r.headers["content-type"] == "text/event-stream"
                    chunks = r.aiter_raw()
                    first = await anext(chunks)
                    assert first == b"data: 0\n\n" and not rep.state.release.is_set()
                    rep.state.release.set()
                    rest = b"".join([c async for c in chunks])
                assert rest == b"data: 1\n\n"
    finally:
        await rep.stop()


async def test_large_streamed_upload_is_not_buffered_whole(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            payload = os.urandom(512 * 1024)

            async def gen() -> Any:
                for i in range(0, len(payload), 16384):
                    yield payload[i:i + 16384]

            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                r = await client.post("/upload", content=gen())  # chunked, no length
                assert r.json()["size"] == len(payload)
                assert r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
                r = await client.put("/upload", content=payload)  # with content-length
                assert r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    finally:
        await rep.stop()


async def test_least_load_spreads_in_flight_evenly(tmp_path: Any) -> None:
    reps = [await Replica(n).start() for n in "abc"]
    try:
        async with running_agent(agent_config(tmp_path, [r.url for r in reps])) as agent:
            await agent.wait_ready(3)
            async with httpx.AsyncClient(
                base_url=agent.url, timeout=60, limits=httpx.Limits(max_connections=100)
            ) as client:
                async def one() -> str:
                    r = await client.get("/hold")
                    return str(r.json()["replica"])

                tasks = [asyncio.create_task(one()) for _ in range(30)]
                await until(lambda: sum(r.state.active for r in reps) == 30,
                            "30 requests held by the replicas")
                counts = agent.runtime.in_flight_counts()
                assert sorted(counts.values()) == [10, 10, 10], counts
                for r in reps:
                    r.state.release.set()
                names = await asyncio.gather(*tasks)
            assert sorted(names.count(n) for n in "abc") == [10, 10, 10]
            assert [r.state.max_active for r in reps] == [10, 10, 10]
    finally:
        for r in reps:
            await r.stop()


async def test_retry_goes_to_a_different_replica(tmp_path: Any) -> None:
    bad, good = await Replica("bad").start(), await Replica("good").start()
    bad.state.fail_status = 503
    try:
        async with running_agent(agent_config(tmp_path, [bad.url, good.url])) as agent:
            await agent.wait_ready(2)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                for _ in range(20):  # PUT is idempotent: retried with its body
                    r = await client.put("/x", content=b"payload")
                    assert r.status_code == 200
                    assert r.json()["replica"] == "good"
                    assert r.json()["sha256"] == hashlib.sha256(b"payload").hexdigest()
                retried = bad.state.hits
                assert retried >= 1  # it was tried, and each time the retry went elsewhere
                assert agent.runtime.metrics.retries._value.get() == retried
                # A POST reached a replica: never sent again; the replica's answer is passed on.
                answers = [(await client.post("/x", content=b"p")).status_code
                           for _ in range(20)]
            assert set(answers) <= {200, 503}
            assert bad.state.hits - retried == answers.count(503) >= 1
            assert agent.runtime.metrics.retries._value.get() == retried
    finally:
        await bad.stop()
        await good.stop()


async def test_only_failing_replicas_give_their_answer_or_502(tmp_path: Any) -> None:
    a, b = await Replica("a").start(), await Replica("b").start()
    a.state.fail_status = 502
    b.state.fail_status = 502
    try:
        async with running_agent(agent_config(tmp_path, [a.url, b.url])) as agent:
            await agent.wait_ready(2)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                r = await client.get("/x")
            # Two different replicas tried; the last one's own answer is passed on.
            assert r.status_code == 502
            assert r.json()["failing"] is True
            assert a.state.hits == 1 and b.state.hits == 1
    finally:
        await a.stop()
        await b.stop()


async def test_refused_connection_ejects_replica_and_retries(tmp_path: Any) -> None:
    good = await Replica("good").start()
    dead = Replica("dead")  # never started: its port refuses connections
    try:
        # Slow probes: the proxy, not the prober, must take the dead replica out.
        cfg = agent_config(tmp_path, [good.url], probe={"interval_seconds": 60})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            agent.runtime.registry.register("dead-0", dead.url, state=ReplicaState.READY)
            assert len(agent.runtime.routable) == 2
            async with httpx.AsyncClient(base_url=agent.url) as client:
                results = [await client.get("/x") for _ in range(10)]
            assert all(r.status_code == 200 and r.json()["replica"] == "good" for r in results)
            assert "dead-0" in agent.runtime.ejected
            assert [t.replica_id for t in agent.runtime.routable] == ["static-0"]
    finally:
        await good.stop()


async def test_no_ready_replica_gives_503_json_with_retry_after(tmp_path: Any) -> None:
    async with running_agent(agent_config(tmp_path, [])) as agent:
        async with httpx.AsyncClient(base_url=agent.url) as client:
            r = await client.get("/v1/chat")
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"] == "no_ready_replica"
        # The arrival counts for QPS even though it ended in a 503.
        assert agent.runtime.arrivals.count(agent.runtime.clock()) == 1


async def test_queue_waits_for_a_starting_replica(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    rep.state.healthy = False
    try:
        cfg = agent_config(tmp_path, [rep.url], proxy={"queue_wait_seconds": 120})
        async with running_agent(cfg) as agent:
            async with httpx.AsyncClient(base_url=agent.url, timeout=120) as client:
                pending = asyncio.create_task(client.get("/x"))
                await until(lambda: len(agent.runtime.queue) == 1, "the request to be queued")
                assert not pending.done()
                assert agent.runtime.registry.get("static-0").state is ReplicaState.STARTING  # type: ignore[union-attr]
                rep.state.healthy = True
                r = await pending
            assert r.status_code == 200
    finally:
        await rep.stop()


async def test_client_disconnect_cancels_upstream(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", agent.runtime.bound_ports["public"]
            )
            writer.write(b"GET /stream?n=100&delay=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b"data: 0")
            assert agent.runtime.in_flight("static-0") == 1
            writer.close()
            await until(lambda: agent.runtime.in_flight("static-0") == 0,
                        "the client's leaving to end its request")
            errors = agent.runtime.metrics.errors.labels(kind="client_disconnect")._value.get()
            assert errors == 1
    finally:
        await rep.stop()


async def test_replica_killed_under_load_loses_no_new_request(tmp_path: Any) -> None:
    (pa, ua), (pb, ub) = start_replica_process("a"), start_replica_process("b")
    try:
        cfg = agent_config(tmp_path, [ua, ub], probe={"interval_seconds": 0.5})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(2)
            killed_at: list[float] = []
            results: list[tuple[float, int, str]] = []
            #: Requests sent after the kill that the test waits for (a count, not a duration).
            wanted_after = 80

            def sent_after_kill() -> int:
                return sum(1 for r in results if killed_at and r[0] > killed_at[0])

            async with httpx.AsyncClient(
                base_url=agent.url, timeout=30, limits=httpx.Limits(max_connections=50)
            ) as client:
                async def worker() -> None:
                    while sent_after_kill() < wanted_after:
                        started = time.monotonic()
                        try:
                            r = await client.get("/slow?t=0.01")
                            results.append((started, r.status_code, r.json()["replica"]))
                        except httpx.HTTPError as exc:
                            results.append((started, 0, repr(exc)))

                async def killer() -> None:
                    # Kill "a" once both replicas have served under this load.
                    await until(lambda: {r[2] for r in results if r[1] == 200} == {"a", "b"},
                                "both replicas to serve", timeout=60)
                    os.kill(pa.pid, signal.SIGKILL)
                    while pa.poll() is None:  # reaped: its sockets are gone
                        await asyncio.sleep(0.001)
                    killed_at.append(time.monotonic())

                await asyncio.wait_for(
                    asyncio.gather(killer(), *(worker() for _ in range(16))), 120)
            after = [r for r in results if r[0] > killed_at[0]]
            failures = [r for r in after if r[1] != 200]
            assert len(after) >= wanted_after
            assert failures == []
            assert {r[2] for r in after[-20:]} == {"b"}
            # Before the kill both replicas served (a request in flight on "a" at the kill may
            # fail: its response had started, so it cannot be retried).
            assert {r[2] for r in results if r[0] < killed_at[0] and r[1] == 200} == {"a", "b"}
    finally:
        for p in (pa, pb):
            p.kill()
            p.wait()


async def test_drain_waits_for_in_flight_and_stops_new_requests(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)
            rt = agent.runtime
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                slow = asyncio.create_task(client.get("/hold"))
                await until(lambda: rt.in_flight("static-0") == 1, "the request in flight")
                assert await rt.drain("static-0", 0.1) is False  # still busy
                assert (await client.get("/x")).status_code == 503  # no new requests
                # A drain with a long timeout ends when the request does, not at the timeout.
                drained = asyncio.create_task(rt.drain("static-0", 600))
                await asyncio.sleep(0)
                assert not drained.done()
                rep.state.release.set()
                assert await asyncio.wait_for(drained, 60) is True
                assert slow.done() and (await slow).status_code == 200
                assert rt.registry.get("static-0").draining  # type: ignore[union-attr]
    finally:
        await rep.stop()


async def test_broken_upstream_stream_is_not_passed_off_as_complete(tmp_path: Any) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()  # dies mid-stream, no terminating chunk

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        cfg = agent_config(tmp_path, [], probe={"interval_seconds": 60})
        async with running_agent(cfg) as agent:
            agent.runtime.registry.register("spot-0", url, state=ReplicaState.READY)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                got = b""
                try:
                    async with client.stream("GET", "/s") as r:
                        async for chunk in r.aiter_raw():
                            got += chunk
                    raise AssertionError("a truncated stream looked complete")
                except httpx.RemoteProtocolError:
                    pass
            assert got == b"hello"
            assert agent.runtime.metrics.errors.labels(kind="stream")._value.get() == 1
    finally:
        server.close()


async def test_body_delimited_by_connection_close_is_complete(tmp_path: Any) -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"world")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(old_style, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        cfg = agent_config(tmp_path, [], probe={"interval_seconds": 60})
        async with running_agent(cfg) as agent:
            agent.runtime.registry.register("spot-0", url, state=ReplicaState.READY)
            async with httpx.AsyncClient(base_url=agent.url) as client:
                for _ in range(2):
                    r = await client.get("/old")
                    assert r.status_code == 200 and r.content == b"hello world"
            assert agent.runtime.metrics.errors.labels(kind="stream")._value.get() == 0
    finally:
        server.close()


async def test_stale_pooled_connections_are_replaced_transparently(tmp_path: Any) -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers one request per connection, keeps it open, then drops it on the next one
        # without answering: what a replica restarting behind pooled connections looks like.
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(one_shot, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        cfg = agent_config(tmp_path, [], probe={"interval_seconds": 60})
        async with running_agent(cfg) as agent:
            agent.runtime.registry.register("spot-0", url, state=ReplicaState.READY)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                first = await asyncio.gather(*(client.get(f"/{i}") for i in range(3)))
                assert [r.status_code for r in first] == [200, 200, 200]  # 3 pooled conns
                r = await client.get("/again")  # every pooled connection is stale now
                assert r.status_code == 200 and r.content == b"ok"
            assert "spot-0" not in agent.runtime.ejected
    finally:
        server.close()


async def test_unexpected_error_answers_500_json_not_plain_text(tmp_path: Any) -> None:
    """A bug inside the proxy (here: the policy raising) still gives the client a JSON body."""
    rep = await Replica("a").start()
    try:
        async with running_agent(agent_config(tmp_path, [rep.url])) as agent:
            await agent.wait_ready(1)

            def broken(candidates: Any) -> Any:
                raise RuntimeError("policy exploded")

            agent.runtime.policy.select = broken  # type: ignore[method-assign]
            async with httpx.AsyncClient(base_url=agent.url) as client:
                r = await client.get("/x")
            assert r.status_code == 500
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"] == "internal_error"
            assert "policy exploded" not in r.text  # details go to the log, not the client
    finally:
        await rep.stop()
