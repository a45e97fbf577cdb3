"""The public proxy: a raw ASGI app (no framework on the hot path) over a pooled aiohttp client.

Per request: record the arrival, pick a replica with the policy, count it in flight, send the
request (body streamed; bodies up to ``retry_body_limit`` are kept so a retry can resend them),
and stream the response back chunk by chunk. Connection errors, and 502/503/504 answers before
any byte reached the client, are retried on a *different* replica with a jittered
milliseconds-scale backoff. A replica that refuses connections is ejected from routing until
its next successful probe. The in-flight count is decremented in ``finally`` on every outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from lb_agent import constants as C
from lb_agent.runtime import AgentRuntime
from lb_agent.target import Target

log = logging.getLogger("lb_agent.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: RFC 9110 section 7.6.1 connection-specific headers, never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
    }
)
_STRIP_REQUEST = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
RETRY_STATUSES = frozenset({502, 503, 504})
_SKIP_AUTO = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")


class _ClientGone(Exception):
    """The client disconnected while its request body was being streamed upstream."""


def json_response_parts(status: int, payload: dict[str, Any],
                        extra: list[tuple[bytes, bytes]] | None = None
                        ) -> tuple[Message, Message]:
    """ASGI start/body messages of a JSON error response."""
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in Connection: (also hop-by-hop for this message)."""
    out: set[bytes] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            out.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return out


class ProxyApp:
    """ASGI application of the public port."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.cfg = runtime.config.proxy
        self.session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Open the pooled upstream client."""
        if self.session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=self.cfg.max_connections_per_replica,
                keepalive_timeout=self.cfg.idle_timeout_seconds,
                ttl_dns_cache=300,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=_SKIP_AUTO,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.cfg.connect_timeout_seconds,
                    sock_read=self.cfg.idle_timeout_seconds,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def stop(self) -> None:
        """Close the upstream client."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                    for fn in self.on_startup:
                        await fn()
                except Exception as exc:  # report to uvicorn, which exits cleanly
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                for fn in self.on_shutdown:
                    await fn()
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- request path ---------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.runtime
        started = time.perf_counter()
        rt.arrivals.record(rt.clock())
        status = await self._proxy(scope, receive, send)
        rt.metrics.count_status(status)
        rt.metrics.latency.observe(time.perf_counter() - started)

    def _upstream_headers(self, scope: Scope) -> list[tuple[str, str]]:
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        drop = _STRIP_REQUEST | _connection_tokens(raw)
        out: list[tuple[str, str]] = []
        host = b""
        xff = b""
        for k, v in raw:
            if k in drop:
                if k == b"x-forwarded-for":
                    xff = v if not xff else xff + b", " + v
                continue
            if k == b"host":
                host = v
            out.append((k.decode("latin-1"), v.decode("latin-1")))
        client = scope.get("client")
        ip = client[0].encode() if client else b""
        if ip:
            xff = xff + b", " + ip if xff else ip
        if xff:
            out.append(("X-Forwarded-For", xff.decode("latin-1")))
        out.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if host:
            out.append(("X-Forwarded-Host", host.decode("latin-1")))
        return out

    async def _read_body_prefix(self, receive: Receive) -> tuple[bytes, bool, bool]:
        """Read the body up to the retry limit: (data, complete, client_gone)."""
        limit = self.cfg.retry_body_limit
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b"".join(chunks), True, True
            body = msg.get("body", b"")
            if body:
                chunks.append(body)
                size += len(body)
            if not msg.get("more_body", False):
                return b"".join(chunks), True, False
            if size > limit:
                return b"".join(chunks), False, False

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> int:
        rt = self.runtime
        cfg = self.cfg
        body, complete, gone = await self._read_body_prefix(receive)
        if gone:
            rt.metrics.errors.labels(kind="client_disconnect").inc()
            return 499
        headers = self._upstream_headers(scope)
        path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        target_path = path.decode("latin-1") + ("?" + qs.decode("latin-1") if qs else "")
        method = scope["method"]

        body_used = False

        async def body_stream() -> AsyncIterator[bytes]:
            nonlocal body_used
            body_used = True
            if body:
                yield body
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise _ClientGone("client disconnected while sending the body")
                chunk = msg.get("body", b"")
                if chunk:
                    yield chunk
                if not msg.get("more_body", False):
                    return

        tried: set[str] = set()
        last_error = ""
        attempts = cfg.max_attempts
        waited = False
        for attempt in range(attempts):
            candidates = rt.routable
            if tried:
                candidates = [t for t in candidates if t.replica_id not in tried]
            if not candidates:
                if not tried and not waited and cfg.queue_wait_seconds > 0:
                    waited = True
                    if await rt.wait_routable(cfg.queue_wait_seconds):
                        candidates = rt.routable
                if not candidates:
                    break
            target = rt.policy.select(candidates)
            assert target is not None
            if attempt:
                rt.metrics.retries.inc()
            more = (
                attempt + 1 < attempts
                and complete
                and any(t is not target and t.replica_id not in tried for t in rt.routable)
            )
            outcome = await self._attempt(
                target, method, target_path, headers,
                body if complete else body_stream(), send, receive,
                allow_retry=more, watch=complete,
            )
            if isinstance(outcome, int):
                return outcome
            tried.add(target.replica_id)
            last_error = outcome
            if not (complete and not body_used) or attempt + 1 >= attempts:
                break
            delay = cfg.backoff_seconds * (1.6 ** attempt) * self._rng.uniform(0.6, 1.4)
            if delay > 0:
                await asyncio.sleep(min(delay, 5 * cfg.backoff_seconds))
        if not tried:
            rt.metrics.no_replica.inc()
            start, end = json_response_parts(
                503,
                {
                    "detail": "No ready replicas. Check the replica states with the agent's "
                    "/status endpoint (or `skyform status`).",
                    "error": "no_ready_replica",
                },
                [(b"retry-after", str(C.LB_NO_REPLICA_RETRY_AFTER_SECONDS).encode())],
            )
            await send(start)
            await send(end)
            return 503
        start, end = json_response_parts(
            502,
            {
                "detail": f"All {len(tried)} attempt(s) failed. Last error: {last_error}",
                "error": "upstream_unavailable",
                "attempts": len(tried),
            },
            [(b"retry-after", b"1")],
        )
        await send(start)
        await send(end)
        return 502

    async def _attempt(
        self,
        target: Target,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes],
        send: Send,
        receive: Receive,
        *,
        allow_retry: bool,
        watch: bool,
    ) -> int | str:
        """One try on ``target``: the status sent to the client, or an error text to retry on."""
        rt = self.runtime
        session = self.session
        assert session is not None
        target.in_flight += 1
        watcher: asyncio.Task[None] | None = None
        try:
            url = URL(target.url + path, encoded=True)
            try:
                resp = await session.request(
                    method, url, headers=headers, data=data or None,
                    allow_redirects=False, compress=None, auto_decompress=False,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError) as exc:
                rt.metrics.errors.labels(kind="connect").inc()
                if isinstance(exc, aiohttp.ClientConnectorError):
                    rt.eject(target.replica_id)
                log.warning("replica %s: %s", target.replica_id, exc)
                return f"{type(exc).__name__}: {exc}"
            except TimeoutError as exc:
                rt.metrics.errors.labels(kind="timeout").inc()
                return f"timeout: {exc}"
            except _ClientGone:
                rt.metrics.errors.labels(kind="client_disconnect").inc()
                return 499
            except aiohttp.ClientError as exc:
                rt.metrics.errors.labels(kind="connect").inc()
                return f"{type(exc).__name__}: {exc}"
            try:
                if allow_retry and resp.status in RETRY_STATUSES:
                    rt.metrics.errors.labels(kind="status").inc()
                    return f"replica {target.replica_id} answered {resp.status}"
                hdrs = resp.raw_headers
                drop = HOP_BY_HOP | _connection_tokens(list(hdrs))
                out = [(k.lower(), v) for k, v in hdrs if k.lower() not in drop]
                await send({"type": "http.response.start", "status": resp.status, "headers": out})
                # Cancel the upstream read when the client goes away mid-response.
                if watch:
                    watcher = asyncio.ensure_future(
                        _watch_disconnect(receive, asyncio.current_task())
                    )
                content = resp.content
                while True:
                    try:
                        chunk = await content.readany()
                    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                            TimeoutError) as exc:
                        rt.metrics.errors.labels(kind="stream").inc()
                        log.warning("replica %s: stream broke: %s", target.replica_id, exc)
                        break
                    if not chunk:
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return resp.status
            except asyncio.CancelledError:
                if watcher is not None and watcher.done() and not watcher.cancelled():
                    rt.metrics.errors.labels(kind="client_disconnect").inc()
                    resp.close()
                    _uncancel()
                    return 499
                raise
            finally:
                resp.release()
        finally:
            target.in_flight -= 1
            if watcher is not None and not watcher.done():
                watcher.cancel()


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` if the client disconnects before the response is complete."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
    # uvicorn also reports http.disconnect once the response is complete; only a cancel
    # that lands while the task is still streaming matters, and then the task ends.
    if task is not None and not task.done():
        task.cancel()


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
