"""Test helpers for the agent: real uvicorn replicas and a real agent on 127.0.0.1 free ports.

``Replica`` is a small ASGI service run by uvicorn in the test's event loop (or, with
``start_replica_process``, in a subprocess that a test can kill). ``running_agent`` runs
``lb_agent.server.serve`` in-process and checks, when it stops, that every in-flight count
went back to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn

from lb_agent.config import AgentConfig
from lb_agent.runtime import AgentRuntime
from lb_agent.server import serve

TOKEN = "test-token-0123456789"

#: Every runtime an agent ran with during the current test (checked by in_flight_back_to_zero).
RUNTIMES: list[AgentRuntime] = []


@pytest.fixture(autouse=True)
def in_flight_back_to_zero() -> Any:
    """Autouse (import it into a test module): after each test, no in-flight count is left,
    and no prefill a request-aware policy charged a replica (``Target.owed``)."""
    RUNTIMES.clear()
    yield
    for rt in RUNTIMES:
        counts = rt.in_flight_counts()
        assert all(n == 0 for n in counts.values()), f"in-flight counts leaked: {counts}"
        owed = {rid: t.owed for rid, t in rt.targets.items()}
        assert all(n == 0 for n in owed.values()), f"owed prefill leaked: {owed}"
    RUNTIMES.clear()


#: ``skyform`` as a command run at a terminal, where SIGINT raises KeyboardInterrupt: a test
#: run started in the background (``cmd &``, as CI may be) hands its children SIGINT ignored.
#: The disposition is set by the child's own first statement, not by ``preexec_fn``: that
#: forces a fork that runs Python in the child before ``exec``, and a parent with gRPC loaded
#: (earlier engine tests) then aborts in gRPC's fork handlers.
SKYFORM_AT_A_TERMINAL = [sys.executable, "-c",
                         "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
                         "\nfrom components.cli import main; main()"]


#: Ports ``free_port`` handed out in this test run: the kernel may offer a port again as soon
#: as its probe socket closes, and two servers given one port (an agent's public and admin
#: ports) fail to start.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now that no earlier call in this run returned."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


async def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class ReplicaState:
    """What a test replica saw and how it behaves."""

    name: str
    healthy: bool = True
    health_code: int = 200
    hits: int = 0
    active: int = 0
    max_active: int = 0
    probes: list[dict[str, Any]] = field(default_factory=list)
    fail_status: int | None = None  # answer every non-probe request with this code
    #: ``/hold`` requests wait until a test sets this (an event, so no test waits on a clock).
    release: asyncio.Event = field(default_factory=asyncio.Event)


def replica_app(state: ReplicaState) -> Any:
    """The ASGI app of a test replica."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await _websocket_echo(state, scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        size = 0
        digest = hashlib.sha256()
        while True:
            msg = await receive()
            chunk = msg.get("body", b"")
            size += len(chunk)
            digest.update(chunk)
            if not msg.get("more_body"):
                break

        async def reply(
            code: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
        ) -> None:
            body = json.dumps(payload).encode()
            await send({
                "type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])],
            })
            await send({"type": "http.response.body", "body": body})

        if path == "/health":
            state.probes.append({"method": scope["method"], "headers": headers, "size": size})
            await reply(state.health_code if state.healthy else 503, {"ok": state.healthy})
            return
        state.hits += 1
        state.active += 1
        state.max_active = max(state.max_active, state.active)
        try:
            if state.fail_status is not None:
                await reply(state.fail_status, {"replica": state.name, "failing": True})
                return
            if path == "/hold":
                await state.release.wait()
            if path == "/hold-stream":  # the first chunk, then the rest once released
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})
                await send({"type": "http.response.body", "body": b"data: 0\n\n",
                            "more_body": True})
                await state.release.wait()
                await send({"type": "http.response.body", "body": b"data: 1\n\n",
                            "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            if path == "/slow":
                await asyncio.sleep(float(query.get("t", ["0.2"])[0]))
            if path == "/stream":
                n = int(query.get("n", ["5"])[0])
                delay = float(query.get("delay", ["0.2"])[0])
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})
                for i in range(n):
                    await send({"type": "http.response.body",
                                "body": f"data: {i} {time.monotonic()}\n\n".encode(),
                                "more_body": True})
                    await asyncio.sleep(delay)
                await send({"type": "http.response.body", "body": b""})
                return
            if path == "/hop":
                await reply(200, {"replica": state.name}, [
                    (b"connection", b"keep-alive, x-private"), (b"x-private", b"secret"),
                    (b"keep-alive", b"timeout=5"), (b"x-kept", b"yes"),
                ])
                return
            await reply(200, {
                "replica": state.name, "method": scope["method"], "path": path,
                "raw_path": (scope.get("raw_path") or b"").decode(),
                "query": scope["query_string"].decode(), "headers": headers,
                "size": size, "sha256": digest.hexdigest(),
            })
        finally:
            state.active -= 1

    return app


async def _websocket_echo(state: ReplicaState, scope: dict[str, Any], receive: Any,
                          send: Any) -> None:
    """``/ws``: echo text and bytes; ``whoami`` answers the replica's name and the handshake
    (path, query, headers); ``close:<code>`` closes with that code."""
    await receive()  # websocket.connect
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    state.hits += 1
    state.active += 1
    state.max_active = max(state.max_active, state.active)
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            if text == "whoami":
                await send({"type": "websocket.send", "text": json.dumps({
                    "replica": state.name, "path": scope["path"],
                    "query": scope["query_string"].decode(),
                    "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                })})
            elif text is not None and text.startswith("close:"):
                await send({"type": "websocket.close", "code": int(text[6:]), "reason": "bye"})
                return
            elif text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})
    finally:
        state.active -= 1


class Replica:
    """A test replica served by uvicorn in the current event loop."""

    def __init__(self, name: str) -> None:
        self.state = ReplicaState(name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Replica:
        config = uvicorn.Config(
            replica_app(self.state), host="127.0.0.1", port=self.port, log_level="error",
            access_log=False, lifespan="off", timeout_keep_alive=30,
        )
        self.server = uvicorn.Server(config)
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 30
        while not self.server.started:
            if self.task.done():
                self.task.result()  # the server's own failure
                raise RuntimeError(f"replica {self.state.name} stopped before it started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.state.name} did not start within 30 s")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        """Stop the server; a failure of its task (it crashed, or will not stop) is raised."""
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            self.server.force_exit = True
            await finish_task(self.task, f"replica {self.state.name}", cancel=False)


async def finish_task(task: asyncio.Task[Any], what: str, *, cancel: bool,
                      timeout: float = 30.0) -> None:
    """End ``task`` (cancel it first when ``cancel``) and re-raise whatever it failed with.

    A cancelled task is the normal end; an exception the task raised (before or while it was
    stopped) is the test's failure, so it is raised here instead of being swallowed. A task
    that does not end within ``timeout`` is cancelled and reported.
    """
    if cancel:
        task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise AssertionError(f"{what} did not stop within {timeout:g} s")
    if not task.cancelled():
        task.result()  # re-raises the task's own exception, if any


def start_replica_process(name: str) -> tuple[subprocess.Popen[bytes], str]:
    """A test replica in its own process (so a test can kill it): (process, url)."""
    port = free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys, uvicorn; sys.path[:0] = [{here!r}, {os.path.dirname(here)!r}]; "
        "from agent_helpers import ReplicaState, replica_app; "
        f"uvicorn.run(replica_app(ReplicaState({name!r})), host='127.0.0.1', port={port}, "
        "log_level='error', lifespan='off')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("replica process did not start")


def agent_config(tmp_path: Any, replicas: list[str] | None = None, **extra: Any) -> AgentConfig:
    """A config for an in-process agent on free ports, fast probes, state in ``tmp_path``."""
    d: dict[str, Any] = {
        "public": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "token": TOKEN,
        "state_file": str(tmp_path / "agent.db"),
        "probe": {"path": "/health", "interval_seconds": 0.1, "timeout_seconds": 1},
        "replicas": [{"url": u, "replica_id": f"static-{i}"} for i, u in enumerate(replicas or [])],
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return AgentConfig.from_dict(d)


@dataclass
class AgentHandle:
    """A running in-process agent."""

    config: AgentConfig
    runtime: AgentRuntime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.bound_ports['public']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.bound_ports['admin']}"

    async def wait_ready(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` replicas are routable."""
        deadline = time.monotonic() + timeout
        while len(self.runtime.routable) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(self.runtime.routable)} of {n} replicas became routable: "
                    f"{[(r.replica_id, r.state) for r in self.runtime.registry.list()]}"
                )
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[AgentHandle]:
    """Run the agent for ``config``; on exit, assert every in-flight count is back to 0."""
    runtime = AgentRuntime(config)
    RUNTIMES.append(runtime)
    started = asyncio.Event()
    task = asyncio.create_task(serve(config, started=started, runtime=runtime))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        waiter.cancel()
        if task.done():
            task.result()
        raise RuntimeError("agent did not start")
    handle = AgentHandle(config, runtime)
    try:
        yield handle
        # Every outcome must decrement: wait for finishing requests (a generous deadline for
        # a busy machine; the loop ends as soon as the counts are back), then check.
        deadline = time.monotonic() + 30
        while runtime.total_in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        counts = runtime.in_flight_counts()
        assert all(n == 0 for n in counts.values()), f"in-flight counts leaked: {counts}"
    finally:
        try:
            await finish_task(task, "the agent", cancel=True)
        finally:
            runtime.close()


def auth() -> dict[str, str]:
    """The admin bearer header."""
    return {"Authorization": f"Bearer {TOKEN}"}
