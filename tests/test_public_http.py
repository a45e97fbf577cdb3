"""The public port's protocol (lb_agent.dataplane.public_http) on its own: one task per
connection, not per request.

A connection's requests run one after another on the connection's one task (made at the first
request, waiting between requests, ended with the connection), keep-alive and pipelined alike,
each answered in order; a handler that absorbs a cancellation leaves none for the next request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from lb_agent.dataplane.limits import PortLimits
from lb_agent.dataplane.public_http import public_protocol


class Recorder:
    """A handler that answers the path back and records the task it ran on."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.cancel_first = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        self.tasks.append(task)
        if self.cancel_first and len(self.tasks) == 1 and task is not None:
            task.cancel()  # absorbed below, as the proxy absorbs its client-gone cancel
            with suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await asyncio.sleep(0)  # a suspension: the next request must still wait its turn
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(handler: Recorder) -> AsyncIterator[tuple[int, ServerState]]:
    cls = public_protocol(handler, PortLimits(), cap=16)
    config = uvicorn.Config(app=handler, http=cls, lifespan="off")
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: cls(config, state, {}), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], state
    finally:
        server.close()


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def _response(path: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(path)}\r\n\r\n{path}".encode()


async def test_keep_alive_and_pipelined_requests_share_the_connection_task() -> None:
    handler = Recorder()
    async with serving(handler) as (port, state):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in ("/a", "/b"):
            writer.write(_request(path))
            assert await asyncio.wait_for(reader.readexactly(len(_response(path))), 10) == (
                _response(path))
        writer.write(_request("/c") + _request("/d") + _request("/e"))  # pipelined
        want = _response("/c") + _response("/d") + _response("/e")
        assert await asyncio.wait_for(reader.readexactly(len(want)), 10) == want
        assert len(handler.tasks) == 5 and len(set(map(id, handler.tasks))) == 1
        assert len(state.tasks) == 1  # the connection's task, waiting for the next request
        # A second connection has a task of its own.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(_request("/f"))
        assert await asyncio.wait_for(r2.readexactly(len(_response("/f"))), 10) == (
            _response("/f"))
        assert handler.tasks[-1] is not handler.tasks[0]
        writer.close()
        w2.close()
        task = handler.tasks[0]
        assert task is not None
        await asyncio.wait_for(task, 10)  # the connection's task ends with it
        for _ in range(100):
            if not state.tasks:
                break
            await asyncio.sleep(0.01)
        assert not state.tasks


async def test_an_absorbed_cancellation_does_not_reach_the_next_request() -> None:
    handler = Recorder()
    handler.cancel_first = True
    async with serving(handler) as (port, _state):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("/a") + _request("/b"))
        want = _response("/a") + _response("/b")
        assert await asyncio.wait_for(reader.readexactly(len(want)), 10) == want
        task = handler.tasks[0]
        assert task is not None and task is handler.tasks[1] and task.cancelling() == 0
        writer.close()
