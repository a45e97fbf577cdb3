"""The data plane against broken and hostile peers: raw-socket replicas and clients.

Each case asserts the exact bytes the client received, what the replica received, that every
in-flight count is back to 0, and that the next normal request succeeds. The replicas here
speak raw bytes (``RawReplica``), so they can send what no framework would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from agent_helpers import (
    TOKEN,
    AgentHandle,
    agent_config,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
    until,
)

from lb_agent.control.states import ReplicaState
from lb_agent.dataplane.client_guard import refusal

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Behave = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


class RawReplica:
    """A replica on a raw socket. ``/ok`` is answered normally; every other request goes to
    ``behave(reader, writer, request)``, which returns False to close the connection."""

    def __init__(self, behave: Behave | None = None) -> None:
        self.behave = behave
        self.requests: list[bytes] = []  # every non-probe request, head and body
        self.connections = 0
        self.closed_by_agent = 0  # connections on which the agent closed first
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RawReplica:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def paths(self) -> list[str]:
        return [r.split(b" ", 2)[1].decode() for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_agent += 1
                    return
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                if head.startswith(b"GET /health "):  # the prober
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.requests.append(head + body)
                if head.startswith(b"GET /ok ") or self.behave is None:
                    writer.write(OK)
                    continue
                if not await self.behave(reader, writer, head + body):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def agent_for(tmp_path: Any, replicas: list[RawReplica],
                    **extra: Any) -> AsyncIterator[AgentHandle]:
    """An agent routing to ``replicas`` (READY at once, probes out of the way)."""
    try:
        cfg = agent_config(tmp_path, [], probe={"interval_seconds": 60}, **extra)
        async with running_agent(cfg) as agent:
            for i, rep in enumerate(replicas):
                agent.runtime.registry.register(f"raw-{i}", rep.url, state=ReplicaState.READY)
            yield agent
    finally:
        for rep in replicas:
            await rep.stop()


async def exchange(port: int, data: bytes, *, timeout: float = 5.0,
                   close_after: float | None = None) -> bytes:
    """Send ``data`` on a new connection; everything received until the agent closes (or
    until ``close_after`` seconds, when the client leaves first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_after is not None:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(reader.read(65536), close_after)
            return b""
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


POST_ONCE = b"POST /buy HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nonce"


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


async def settled(agent: AgentHandle) -> None:
    """Every in-flight count back to 0 (a generous deadline: the loop ends when they are)."""
    deadline = time.monotonic() + 30
    while agent.runtime.total_in_flight() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert agent.runtime.in_flight_counts() == dict.fromkeys(agent.runtime.in_flight_counts(), 0)


async def next_request_ok(agent: AgentHandle) -> None:
    """A normal request right after the hostile one is answered normally."""
    port = agent.runtime.bound_ports["public"]
    got = await exchange(port, get("/ok"))
    assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    await settled(agent)


def errors(agent: AgentHandle, kind: str) -> float:
    return float(agent.runtime.metrics.errors.labels(kind=kind)._value.get())


def status_count(agent: AgentHandle, code: int) -> float:
    return float(agent.runtime.metrics.requests.labels(code=str(code))._value.get())


def bad_gateway(attempts: int) -> bytes:
    body = json.dumps({
        "detail": f"The service's replicas did not answer correctly ({attempts} attempt(s)); "
        "details are in the load balancer's log.",
        "error": "upstream_unavailable", "attempts": attempts,
    }).encode()
    return (b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n" % len(body)
            + body)


# -- framing -------------------------------------------------------------------------------


async def test_merged_responses_end_at_content_length(tmp_path: Any) -> None:
    async def merged(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\n"
                b"Set-Cookie: sess=attacker\r\nContent-Length: 0\r\n\r\n")
        return True

    rep = await RawReplica(merged).start()
    async with agent_for(tmp_path, [rep]) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        await settled(agent)
        await next_request_ok(agent)
        # The connection with the smuggled second response was never reused.
        assert rep.paths() == ["/a", "/ok"]
        assert rep.connections == 2
        assert rep.closed_by_agent == 1


async def test_partial_stray_head_is_not_read_as_the_next_answer(tmp_path: Any) -> None:
    async def partial(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Le")
        return True

    rep = await RawReplica(partial).start()
    async with agent_for(tmp_path, [rep], proxy={"idle_timeout_seconds": 30}) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        await settled(agent)
        await next_request_ok(agent)
        # No wait for a timeout (the idle timeout is 30 s), no retry elsewhere.
        assert errors(agent, "timeout") == 0
        assert agent.runtime.metrics.retries._value.get() == 0
        assert rep.paths() == ["/a", "/ok"]
        assert rep.connections == 2
        assert status_count(agent, 502) == 0


async def test_stray_head_on_an_idle_pooled_connection_retires_it(tmp_path: Any) -> None:
    async def late(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await w.drain()
        await asyncio.sleep(0.1)  # the connection is idle in the agent's pool by now
        w.write(b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0")
        await w.drain()
        return True

    rep = await RawReplica(late).start()
    async with agent_for(tmp_path, [rep]) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        # The agent drops the connection when the stray bytes come (no request needed).
        await until(lambda: rep.closed_by_agent == 1, "the agent to drop the connection")
        await next_request_ok(agent)
        assert rep.paths() == ["/a", "/ok"]
        assert rep.connections == 2


async def test_chunked_body_with_a_second_response_appended(tmp_path: Any) -> None:
    async def appended(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nEVIL!!\r\n0\r\n\r\n")
        return True

    rep = await RawReplica(appended).start()
    async with agent_for(tmp_path, [rep]) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == (b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked"
                       b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await settled(agent)
        await next_request_ok(agent)
        assert rep.paths() == ["/a", "/ok"]
        assert rep.connections == 2


async def test_trailers_never_become_headers(tmp_path: Any) -> None:
    async def trailers(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nX-Real: yes\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: Set-Cookie, Location, Connection\r\n\r\n"
                b"5\r\nhello\r\n0\r\nSet-Cookie: sess=attacker\r\n"
                b"Location: http://evil.example/\r\nConnection: x-real\r\n\r\n")
        return True

    rep = await RawReplica(trailers).start()
    async with agent_for(tmp_path, [rep]) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == (b"HTTP/1.1 200 OK\r\nx-real: yes\r\nconnection: close\r\n"
                       b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await settled(agent)
        await next_request_ok(agent)
        # Correctly framed, trailers and all: the connection was reused.
        assert rep.paths() == ["/a", "/ok"]
        assert rep.connections == 1


async def test_304_and_204_with_a_length_keep_the_client_connection(tmp_path: Any) -> None:
    async def no_body(_r: Any, w: asyncio.StreamWriter, req: bytes) -> bool:
        if req.startswith(b"GET /304 "):
            w.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 5\r\n\r\n')
        else:  # and bytes after a 204 are not its body
            w.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello")
        return True

    rep = await RawReplica(no_body).start()
    async with agent_for(tmp_path, [rep]) as agent:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", agent.runtime.bound_ports["public"])
        try:
            expected = {
                "/304": b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n',
                "/204": b"HTTP/1.1 204 No Content\r\n\r\n",
                "/ok": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            }
            for path, want in expected.items():  # one keep-alive client connection
                writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                got = await asyncio.wait_for(reader.readexactly(len(want)), 5)
                assert got == want, path
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            tail = await asyncio.wait_for(reader.read(), 5)
            assert tail == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        finally:
            writer.close()
        await settled(agent)
        assert status_count(agent, 500) == 0
        assert rep.paths() == ["/304", "/204", "/ok", "/ok"]
        # The 304 ended at its head (reused); the 204's stray "hello" retired its connection.
        assert rep.connections == 2


async def test_upstream_101_to_a_plain_get_is_a_502(tmp_path: Any) -> None:
    async def switch(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n"
                b"Connection: Upgrade\r\n\r\nraw bytes of another protocol")
        return True

    rep = await RawReplica(switch).start()
    async with agent_for(tmp_path, [rep]) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == bad_gateway(1)
        assert b"127.0.0.1" not in got and b"101" not in got  # details stay in the log
        await settled(agent)
        assert errors(agent, "protocol") == 1
        assert errors(agent, "connect") == 0
        await next_request_ok(agent)
        assert rep.paths() == ["/a", "/ok"]


async def test_response_head_over_the_limit_is_a_502(tmp_path: Any) -> None:
    async def huge(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\nContent-Length: 0\r\n\r\n")
        return True

    rep = await RawReplica(huge).start()
    async with agent_for(tmp_path, [rep], limits={"max_response_head_bytes": 4096}) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert got == bad_gateway(1)
        await settled(agent)
        assert errors(agent, "protocol") == 1
        await next_request_ok(agent)


async def test_transfer_encodings_other_than_chunked_are_refused(tmp_path: Any) -> None:
    async def odd(_r: Any, w: asyncio.StreamWriter, req: bytes) -> bool:
        te = {b"/x": b"xchunked", b"/g": b"gzip, chunked", b"/both": b"chunked"}[
            req.split(b" ")[1]]
        extra = b"Content-Length: 3\r\n" if req.startswith(b"GET /both") else b""
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te + b"\r\n" + extra
                + b"\r\n5\r\nhello\r\n0\r\n\r\n")
        return True

    rep = await RawReplica(odd).start()
    async with agent_for(tmp_path, [rep]) as agent:
        for path in ("/x", "/g", "/both"):
            got = await exchange(agent.runtime.bound_ports["public"], get(path))
            assert got == bad_gateway(1), path
        await settled(agent)
        assert errors(agent, "protocol") == 3
        await next_request_ok(agent)
        assert rep.paths() == ["/x", "/g", "/both", "/ok"]


# -- retries -------------------------------------------------------------------------------


async def test_post_to_replicas_closing_without_answer_reaches_one_once(tmp_path: Any) -> None:
    async def vanish(_r: Any, _w: Any, _req: bytes) -> bool:
        return False  # read the whole request, then close without a byte

    reps = [await RawReplica(vanish).start(), await RawReplica(vanish).start()]
    async with agent_for(tmp_path, reps, proxy={"max_attempts": 3}) as agent:
        port = agent.runtime.bound_ports["public"]
        # A pooled connection first, so the POST also meets the "stale connection" path.
        await next_request_ok(agent)
        post = POST_ONCE
        got = await exchange(port, post)
        assert got == bad_gateway(1)
        await settled(agent)
        posts = [r for rep in reps for r in rep.requests if r.startswith(b"POST")]
        assert len(posts) == 1 and posts[0].endswith(b"\r\n\r\nonce")
        assert agent.runtime.metrics.retries._value.get() == 0
        # The same failure for an idempotent method is retried on the other replica.
        got = await exchange(port, get("/read"))
        assert got == bad_gateway(2)
        gets = [r for rep in reps for r in rep.requests if r.startswith(b"GET /read")]
        assert len(gets) >= 2 and all(any(r.startswith(b"GET /read") for r in rep.requests)
                                      for rep in reps)
        assert errors(agent, "closed") >= 3
        await next_request_ok(agent)


async def test_post_to_a_silent_replica_is_not_resent_after_a_timeout(tmp_path: Any) -> None:
    async def silent(reader: asyncio.StreamReader, _w: Any, _req: bytes) -> bool:
        await reader.read()  # never answers; waits for the agent to give up
        return False

    reps = [await RawReplica(silent).start(), await RawReplica(silent).start()]
    async with agent_for(tmp_path, reps, proxy={"idle_timeout_seconds": 0.3}) as agent:
        post = POST_ONCE
        got = await exchange(agent.runtime.bound_ports["public"], post)
        assert got == bad_gateway(1)
        await settled(agent)
        assert sum(len(rep.requests) for rep in reps) == 1
        assert errors(agent, "timeout") == 1
        await next_request_ok(agent)


async def test_client_leaving_before_the_head_cancels_at_once(tmp_path: Any) -> None:
    arrived = asyncio.Event()
    cancelled: list[bool] = []

    async def slow(reader: asyncio.StreamReader, _w: Any, _req: bytes) -> bool:
        arrived.set()
        await reader.read()  # answers nothing; returns when the agent closes
        cancelled.append(True)
        return False

    reps = [await RawReplica(slow).start(), await RawReplica(slow).start()]
    # An idle timeout far beyond the test's wait: only the client leaving can end it.
    async with agent_for(tmp_path, reps, proxy={"idle_timeout_seconds": 600}) as agent:
        _, client = await asyncio.open_connection("127.0.0.1", agent.runtime.bound_ports["public"])
        client.write(get("/think"))
        await client.drain()
        await asyncio.wait_for(arrived.wait(), 30)
        client.close()  # the client leaves before any byte of the head
        await until(lambda: bool(cancelled), "the agent to close the upstream connection")
        await settled(agent)
        # The agent closed the upstream connection because the client left, not at a timeout.
        assert len(cancelled) == 1 and errors(agent, "timeout") == 0
        assert sum(len(r.requests) for r in reps) == 1  # never retried for nobody
        assert errors(agent, "client_disconnect") == 1
        assert agent.runtime.metrics.retries._value.get() == 0
        await next_request_ok(agent)


# -- client limits -------------------------------------------------------------------------


async def test_slowloris_head_gets_408_and_a_silent_connection_is_closed(tmp_path: Any) -> None:
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep],
                         limits={"request_head_timeout_seconds": 0.5}) as agent:
        port = agent.runtime.bound_ports["public"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        got = b""
        with contextlib.suppress(ConnectionError):
            # One header byte every 50 ms: the head never ends and the connection is never
            # idle, so only a deadline on the whole head can stop it (the loop's bound is
            # far beyond the 0.5 s timeout, for a busy machine).
            for _ in range(600):
                writer.write(b"X")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    got += await asyncio.wait_for(reader.read(65536), 0.05)
                if reader.at_eof():
                    break
        writer.close()
        assert got == refusal(408, "request_timeout", "The request head did not arrive in time.")
        silent = await exchange(port, b"", timeout=3)  # no byte at all: closed without a word
        assert silent == b""
        assert rep.requests == []
        await next_request_ok(agent)
        assert rep.paths() == ["/ok"]


async def test_admin_port_has_the_same_head_guard(tmp_path: Any) -> None:
    """The admin port's protocol (client_guard.GuardedProtocol) shares the public port's head
    deadline and refusals (client_guard.HeadGuard): 408 for a head begun and not finished, a
    silent close for a connection that sent nothing, 431 over the size limit, 400 for what
    the parser refuses, each on the admin port's own limits."""
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep], limits={"admin": {
            "request_head_timeout_seconds": 0.5, "max_request_head_bytes": 4096}}) as agent:
        port = agent.runtime.bound_ports["admin"]
        slow = await exchange(port, b"GET /health HTTP/1.1\r\nHost: t\r\n", timeout=10)
        assert slow == refusal(408, "request_timeout", "The request head did not arrive in time.")
        assert await exchange(port, b"", timeout=10) == b""
        big = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        assert await exchange(port, big) == refusal(
            431, "request_head_too_large", "The request line and header fields exceed 4096 bytes.")
        bad = b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        assert await exchange(port, bad) == refusal(400, "bad_request",
                                                    "Invalid HTTP request received.")
        async with httpx.AsyncClient(base_url=agent.admin_url) as admin:
            assert (await admin.get("/health")).status_code == 200
        assert rep.requests == []


async def test_huge_request_head_gets_431_and_reaches_no_replica(tmp_path: Any) -> None:
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep], limits={"max_request_head_bytes": 8192}) as agent:
        port = agent.runtime.bound_ports["public"]
        big = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        got = await exchange(port, big)
        assert got == refusal(431, "request_head_too_large",
                              "The request line and header fields exceed 8192 bytes.")
        # The same head as the second request of a keep-alive connection, in one read.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert await asyncio.wait_for(reader.readexactly(len(first)), 5) == first
        writer.write(big)
        assert await asyncio.wait_for(reader.read(), 5) == refusal(
            431, "request_head_too_large",
            "The request line and header fields exceed 8192 bytes.")
        writer.close()
        # 4 MB of one header: cut off early (the answer may be lost to the reset).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"a" * 65536)
                await writer.drain()
        with contextlib.suppress(ConnectionError):
            rest = await asyncio.wait_for(reader.read(), 5)
            assert rest in (b"", refusal(431, "request_head_too_large",
                                         "The request line and header fields exceed 8192 "
                                         "bytes."))
        writer.close()
        assert rep.requests == [rep.requests[0]] and rep.paths() == ["/ok"]
        await next_request_ok(agent)


async def test_connection_cap_answers_503_and_the_admin_port_still_answers(
        tmp_path: Any) -> None:
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep], limits={"max_connections": 8,
                                                  "admin": {"max_connections": 4}}) as agent:
        port = agent.runtime.bound_ports["public"]
        # Eight connections each in the middle of a request head: all busy.
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        for _, w in busy:
            w.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        await asyncio.sleep(0.1)
        try:
            full = refusal(503, "too_many_connections",
                           "The load balancer has too many open connections; retry shortly.")
            for _ in range(5):
                assert await exchange(port, get("/ok")) == full
            async with httpx.AsyncClient(base_url=agent.admin_url) as admin:
                r = await admin.get("/health")
                assert r.status_code == 200
                r = await admin.get("/status", headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 200
        finally:
            for _, w in busy:
                w.close()
        await asyncio.sleep(0.1)
        assert rep.requests == []
        await next_request_ok(agent)


async def test_idle_connections_make_room_for_new_ones_at_the_cap(tmp_path: Any) -> None:
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep], limits={"max_connections": 8}) as agent:
        port = agent.runtime.bound_ports["public"]
        idle = []
        for _ in range(8):  # connected, never a byte sent: what a socket flood looks like
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        try:
            for _ in range(3):  # a slot is taken from the connection idle the longest
                await next_request_ok(agent)
            oldest = await asyncio.wait_for(idle[0][0].read(), 1)
            assert oldest == b""  # closed without a word
            for reader, _ in idle[1:]:  # the others still open (one slot was enough)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.read(), 0.05)
        finally:
            for _, w in idle:
                w.close()
        assert rep.paths() == ["/ok"] * 3


# -- requests the agent refuses itself -----------------------------------------------------


async def test_duplicate_or_missing_host_is_400_and_connection_cannot_drop_host(
        tmp_path: Any) -> None:
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep]) as agent:
        port = agent.runtime.bound_ports["public"]
        for head, why in (
            (b"GET /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n", "more than one Host header field"),
            (b"GET /ok HTTP/1.1\r\n", "an HTTP/1.1 request needs a Host header field"),
        ):
            got = await exchange(port, head + b"Connection: close\r\n\r\n")
            body = json.dumps({"detail": f"Bad request: {why}.", "error": "bad_request"}).encode()
            assert got == (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        got = await exchange(port, b"GET /ok HTTP/1.1\r\nHost: kept\r\nConnection: host, close"
                                   b"\r\n\r\n")
        assert got.endswith(b"\r\n\r\nok")
        assert rep.requests == [rep.requests[0]]
        assert b"\r\nhost: kept\r\n" in rep.requests[0].lower()
        await next_request_ok(agent)



async def test_a_control_character_in_a_response_field_never_reaches_the_client(
        tmp_path: Any) -> None:
    # The one-write answer (client_guard.send_response) declines what uvicorn's own checks
    # refuse; uvicorn then refuses it as it always did: the client gets no response at all.
    async def bad_value(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 5\r\n\r\nhello")
        return True

    rep = await RawReplica(bad_value).start()
    async with agent_for(tmp_path, [rep]) as agent:
        got = await exchange(agent.runtime.bound_ports["public"], get("/a"))
        assert b"\x01" not in got and b"hello" not in got
        await settled(agent)
        await next_request_ok(agent)


async def test_whole_responses_on_one_connection_keep_their_framing(tmp_path: Any) -> None:
    # Keep-alive, pipelined, HEAD and HTTP/1.0 requests answered in one write each.
    async def head(_r: Any, w: asyncio.StreamWriter, req: bytes) -> bool:
        assert req.startswith(b"HEAD /h ")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
        return True

    rep = await RawReplica(head).start()
    async with agent_for(tmp_path, [rep]) as agent:
        port = agent.runtime.bound_ports["public"]
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(len(ok)), 5) == ok
            # Two requests in one write: both answered, in order, on the same connection.
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nHEAD /h HTTP/1.1\r\nHost: t\r\n"
                         b"Connection: close\r\n\r\n")
            got = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert got == ok + (b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close"
                            b"\r\n\r\n")
        got = await exchange(port, b"GET /ok HTTP/1.0\r\nHost: t\r\n\r\n")
        assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        await settled(agent)
        assert rep.paths() == ["/ok", "/ok", "/h", "/ok"]


# -- request framing the public port refuses (lb_agent.dataplane.public_http) ---------------


async def test_ambiguous_request_framing_is_400_and_reaches_no_replica(tmp_path: Any) -> None:
    # The shapes of request smuggling: each gets the JSON 400 (or, once the request has
    # started, a closed connection) and no byte of it reaches a replica.
    rep = await RawReplica().start()
    bad_request = refusal(400, "bad_request", "Invalid HTTP request received.")
    async with agent_for(tmp_path, [rep]) as agent:
        port = agent.runtime.bound_ports["public"]
        for head in (
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # both framings
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
            b"hello!",  # two lengths
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
            b"hello",  # a repeated length
            b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
            b"GET /p HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n",  # obs-fold
            b"GET /p HTTP/1.1\nHost: t\n\n",  # bare LF
        ):
            assert await exchange(port, head) == bad_request, head
        for body in (b"zz\r\nhello\r\n0\r\n\r\n",  # a chunk size that is not hex
                     b"5\r\nhelloXX0\r\n\r\n"):  # chunk data not followed by CRLF
            got = await exchange(port, b"POST /p HTTP/1.1\r\nHost: t\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n" + body)
            assert got in (b"", bad_request), body
        await settled(agent)
        assert rep.requests == []
        await next_request_ok(agent)


async def test_chunked_upload_with_expect_continue_then_a_pipelined_get(tmp_path: Any) -> None:
    # 100 Continue before the body is read; the body reaches the replica with a length of
    # its own; the request pipelined behind it is answered after it, on the same connection.
    rep = await RawReplica().start()
    async with agent_for(tmp_path, [rep]) as agent:
        port = agent.runtime.bound_ports["public"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            cont = b"HTTP/1.1 100 Continue\r\n\r\n"
            assert await asyncio.wait_for(reader.readexactly(len(cont)), 5) == cont
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                         b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert got == ok + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        assert rep.paths() == ["/up", "/ok"]
        assert rep.requests[0].lower().endswith(b"\r\ncontent-length: 11\r\n\r\nhello world")
        await settled(agent)


async def test_a_streamed_response_is_chunked_to_the_client_and_ends_cleanly(
        tmp_path: Any) -> None:
    async def stream(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"3\r\ntwo\r\n0\r\n\r\n")
        return True

    rep = await RawReplica(stream).start()
    async with agent_for(tmp_path, [rep]) as agent:
        port = agent.runtime.bound_ports["public"]
        got = await exchange(port, get("/s"))
        assert got == (b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked"
                       b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
        head = await exchange(port, b"HEAD /s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        await settled(agent)
        await next_request_ok(agent)
