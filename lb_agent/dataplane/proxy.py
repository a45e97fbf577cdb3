"""The public proxy: a raw ASGI app (no framework on the hot path) over lb_agent.dataplane.upstream.

Per request: record the arrival, pick a replica with the policy, count it in flight, send the
request (body streamed; bodies up to ``retry_body_limit`` are kept so a retry can resend them),
and stream the response back chunk by chunk. The retry rule: a request goes to a *different*
replica again only if no byte of it reached a replica (connect failure), or if its method is
idempotent and no response byte reached the client (a POST is never sent twice); retries wait
a jittered milliseconds-scale backoff (the queue, placement, breakers, retries and the
503 answer are lb_agent.dataplane.dispatch's, shared with WebSocket handshakes). A replica
that refuses connections is ejected from routing until its next successful probe. A client
that disconnects cancels its request at once. The in-flight count is decremented in
``finally`` on every outcome. WebSocket connections are handed to lb_agent.dataplane.websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lb_agent.dataplane.dispatch import Dispatcher, Failed, Try
from lb_agent.dataplane.forwarding import forwarded_headers
from lb_agent.dataplane.gate import admit
from lb_agent.dataplane.http1 import ResponseParser
from lb_agent.dataplane.responses import json_response_parts
from lb_agent.dataplane.target import Target
from lb_agent.dataplane.upstream import Pool, StreamBroken, UpstreamError
from lb_agent.dataplane.websocket import proxy_websocket
from lb_agent.runtime import AgentRuntime

log = logging.getLogger("lb_agent.dataplane.proxy")

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
#: Also never forwarded upstream: the agent sets these itself.
_STRIP_REQUEST = HOP_BY_HOP | {
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"content-length", b"expect",
}
#: Also never passed back: the agent frames the response for the client itself.
_STRIP_RESPONSE = HOP_BY_HOP | {b"content-length"}
#: Fields a request's Connection header cannot remove (they are not hop-by-hop).
_NEVER_CONNECTION_TOKEN = frozenset({b"host"})
#: Connection values that name no other field (the common case: nothing to filter).
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})
RETRY_STATUSES = frozenset({502, 503, 504})
#: Methods resent to another replica after a failure (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _listed(connection: bytes) -> set[bytes]:
    """Header names a Connection field value lists (also hop-by-hop for this message);
    ``connection`` is every Connection value of the message joined by commas."""
    return {t.strip().lower() for t in connection.split(b",")} - {b""}


class ProxyApp:
    """ASGI application of the public port."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.cfg = runtime.config.proxy
        self.limits = runtime.config.limits
        self.pools: dict[tuple[str, int], Pool] = {}
        #: The one dispatch path of HTTP requests and WebSocket handshakes.
        self.dispatcher = Dispatcher(runtime)
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        # Admission is fixed at start-up: what it needs per request is decided once here.
        adm = runtime.config.admission
        #: API keys or a rate limit to check (else the gate is skipped without a call).
        self.gated = bool(runtime.api_keys or runtime.rate_limiter)
        #: Request fields never forwarded; the API key too when admission consumed it.
        self.strip_request = (_STRIP_REQUEST | {b"authorization"}
                              if runtime.api_keys and not adm.forward_api_key
                              else _STRIP_REQUEST)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to open: pools are created per replica on first use."""

    async def stop(self) -> None:
        """Close every pooled connection."""
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    def pool_for(self, target: Target) -> Pool:
        """The connection pool of ``target``'s address."""
        key = (target.host, target.port)
        pool = self.pools.get(key)
        if pool is None:
            pool = Pool(
                target.host, target.port,
                connect_timeout=self.cfg.connect_timeout_seconds,
                idle_timeout=self.limits.upstream_keepalive_seconds,
                max_idle=self.cfg.max_connections_per_replica,
                max_response_head=self.limits.max_response_head_bytes,
            )
            self.pools[key] = pool
        return pool

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
            await self.handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request (lb_agent.dataplane.public_http calls this directly)."""
        rt = self.runtime
        started = time.perf_counter()
        rt.arrivals.record(rt.clock())
        try:
            status = await self._proxy(scope, receive, send)
        except Exception:
            rt.metrics.count_status(500)
            log.exception("proxy error")
            if not await _send_internal_error(send):
                raise  # the response had started: uvicorn cuts the connection
            return
        rt.metrics.count_status(status)
        rt.metrics.latency.observe(time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.runtime
        started = time.perf_counter()
        rt.arrivals.record(rt.clock())
        try:
            status = await proxy_websocket(self.dispatcher, scope, receive, send)
        except Exception:
            rt.metrics.count_status(500)
            log.exception("websocket relay error")
            with contextlib.suppress(Exception):  # the handshake may be over already
                await send({"type": "websocket.close", "code": 1011})
            return
        rt.metrics.count_status(status)
        rt.metrics.latency.observe(time.perf_counter() - started)

    def _upstream_headers(self, scope: Scope) -> tuple[list[bytes], bytes | None] | str:
        """Request header lines for the replica and the client's Content-Length, or the
        reason to refuse the request with 400."""
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        drop = self.strip_request
        out: list[bytes] = []
        host = b""
        hosts = 0
        xff = b""
        clen: bytes | None = None
        connection: bytes | None = None
        for k, v in raw:  # ASGI gives lower-case names
            if k in drop:
                if k == b"x-forwarded-for":
                    xff = v if not xff else xff + b", " + v
                elif k == b"content-length":
                    clen = v
                elif k == b"connection":
                    connection = v if connection is None else connection + b"," + v
                continue
            if k == b"host":
                host = v
                hosts += 1
            out.append(k + b": " + v + b"\r\n")
        if connection is not None:
            # Fields the Connection header lists are hop-by-hop too (never Host).
            tokens = _listed(connection) - drop - _NEVER_CONNECTION_TOKEN
            if tokens:
                out = [line for line in out if line.partition(b":")[0] not in tokens]
        if hosts > 1:
            return "more than one Host header field"
        if hosts == 0 and scope.get("http_version", "1.1") == "1.1":
            return "an HTTP/1.1 request needs a Host header field"
        proto = scope.get("scheme", "http").encode()
        out.extend(k + b": " + v + b"\r\n" for k, v in forwarded_headers(scope, xff, host, proto))
        return out, clen

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
        if self.gated:
            refused = await self._admit(scope, send)
            if refused:
                return refused
        # On the agent's public port a body that has all arrived is taken without the
        # ASGI messages (lb_agent.dataplane.public_http: the scope extension
        # ``skyform.whole_body``, None when the body is still coming).
        whole = scope["extensions"].get("skyform.whole_body") if "extensions" in scope else None
        whole_body = whole() if whole is not None else None
        if whole_body is not None:
            body, complete, gone = whole_body, True, False
        else:
            body, complete, gone = await self._read_body_prefix(receive)
        if gone:
            rt.metrics.errors.labels(kind="client_disconnect").inc()
            return 499
        parts = self._upstream_headers(scope)
        if isinstance(parts, str):
            start, end = json_response_parts(400, {"detail": f"Bad request: {parts}.",
                                                   "error": "bad_request"})
            await send(start)
            await send(end)
            return 400
        lines, clen = parts
        method: str = scope["method"]
        path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        if qs:
            path = path + b"?" + qs
        if complete:
            if body or clen is not None or method in _BODY_METHODS:
                lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
            chunked = False
        elif clen is not None:
            lines.append(b"content-length: " + clen + b"\r\n")
            chunked = False
        else:
            lines.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        head = b"".join([method.encode(), b" ", path, b" HTTP/1.1\r\n", *lines, b"\r\n"])
        policy = rt.policy
        # A request-aware policy reads the body only when the proxy already holds all of it.
        key = (policy.request_key(method, scope["path"], body if complete else None)
               if policy.uses_request else None)
        session: bytes | None = None
        if rt.affinity is not None:
            name = rt.session_header
            for k, v in scope["headers"]:
                if k == name:
                    session = v
                    break
        # From here on a client that leaves cancels this task at once (nothing is retried
        # for it). While a large body is still being read, the uploader watches instead.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        watch = _ClientWatch(asyncio.current_task(loop), scope)
        if complete:
            watch.start(receive)
        try:
            return await self._dispatch(head, body, complete, chunked, method, send, receive,
                                        watch, key, session)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            _uncancel()
            rt.metrics.errors.labels(kind="client_disconnect").inc()
            return 499
        finally:
            watch.stop()

    async def _admit(self, scope: Scope, send: Send) -> int:
        """API key and rate limit (lb_agent.dataplane.gate): 0 to go on, else the status sent."""
        refusal = admit(self.runtime, scope)
        if refusal is None:
            return 0
        start, end = json_response_parts(refusal.status, refusal.body, refusal.headers)
        await send(start)
        await send(end)
        return refusal.status

    def _dispatch(self, head: bytes, body: bytes, complete: bool, chunked: bool,
                  method: str, send: Send, receive: Receive, watch: _ClientWatch,
                  key: Any = None, session: bytes | None = None) -> Awaitable[int]:
        """Try replicas under the retry rule (docs/agent.md, "Proxy behaviour") and answer:
        the dispatcher's coroutine, for the caller to await (no coroutine level of its own)."""
        rt = self.runtime
        idempotent = method in IDEMPOTENT
        stream = None if complete else (receive, chunked)

        def pick(candidates: list[Target]) -> Target:
            affinity = rt.affinity if session else None
            if affinity is not None and session is not None:
                pinned = affinity.pick(session.decode("latin-1"), candidates)
                if pinned is not None:
                    return pinned
            policy = rt.policy
            target = (policy.choose(candidates, key) if policy.uses_request
                      else policy.select(candidates))
            assert target is not None
            if affinity is not None and session is not None:
                affinity.pin(session.decode("latin-1"), target)
            return target

        def attempt(target: Target, handle: Try) -> Awaitable[int | Failed]:
            return self._attempt(target, head, body, stream, method == "HEAD", send, watch,
                                 handle if complete and idempotent else None,
                                 idempotent=idempotent)

        def retry(failed: Failed) -> bool:
            # The retry rule: resend only what never reached a replica, or an idempotent
            # request (nothing has reached the client yet at this point). Never a POST twice.
            return complete and (idempotent or not failed.sent)

        async def answer(status: int, payload: dict[str, Any],
                         headers: list[tuple[bytes, bytes]]) -> None:
            start, end = json_response_parts(status, payload, headers)
            await send(start)
            await send(end)

        # A request-aware policy learns when each attempt it chose ends (prefix_aware: the
        # prefill it charged there is done, and the replica holds the prompt).
        release = rt.policy.release if key is not None else None
        return self.dispatcher.run(attempt, answer, pick=pick, retry=retry, label=method,
                                   what="the request", failing="did not answer correctly",
                                   release=release, key=key)

    async def _attempt(
        self,
        target: Target,
        head: bytes,
        body: bytes,
        stream: tuple[Receive, bool] | None,
        head_only: bool,
        send: Send,
        watch: _ClientWatch,
        retryable: Try | None,
        *,
        idempotent: bool,
    ) -> int | Failed:
        """One try on ``target``: the status sent to the client, or why it failed (before
        any byte reached the client). ``retryable``: the attempt's handle when a 502/503/504
        may be retried on another replica (if one is left), else None.

        ``stream`` is None when ``body`` is the whole request body, else (receive, chunked)
        to stream the rest of it after ``body``.
        """
        rt = self.runtime
        errors = rt.metrics.errors
        pool = self.pool_for(target)
        idle = self.cfg.idle_timeout_seconds
        uploader: asyncio.Task[None] | None = None
        conn = None
        try:
            # A second go only when a pooled keep-alive connection turned out stale, and only
            # for an idempotent request; it uses a fresh connection.
            for fresh in (False, True):
                try:
                    conn = None if fresh else pool.take_idle()
                    if conn is None:
                        conn = await pool.connect()
                    if stream is None:
                        conn.send_head(head, body, head_only=head_only)
                    else:
                        conn.send_head(head, b"", head_only=head_only)
                        uploader = asyncio.ensure_future(
                            _upload(conn, body, stream[0], stream[1], watch)
                        )
                    await conn.read_head(idle)
                    break
                except UpstreamError as exc:
                    if conn is not None:
                        conn.close()
                    if exc.reused and stream is None and not fresh and idempotent:
                        conn = None
                        continue
                    if exc.connect:
                        rt.eject(target.replica_id)
                        errors.labels(kind="connect").inc()
                        return Failed(f"replica {target.replica_id}: {exc}", sent=False)
                    errors.labels(kind="protocol" if exc.protocol else "closed").inc()
                    return Failed(f"replica {target.replica_id}: {exc}", sent=True)
                except TimeoutError:
                    if conn is not None:
                        conn.close()
                    errors.labels(kind="timeout").inc()
                    return Failed(f"replica {target.replica_id}: no answer within {idle:g}s",
                                   sent=True)
            assert conn is not None
            parser = conn.parser
            assert parser is not None
            status = parser.status
            if status in RETRY_STATUSES and retryable is not None and retryable.others:
                conn.close()
                errors.labels(kind="status").inc()
                return Failed(f"replica {target.replica_id} answered {status}", sent=True)
            out = _response_headers(parser)
            if parser.done and not conn.paused:
                # The whole response is already here (the common small case): one write on
                # the agent's own ports (lb_agent.dataplane.client_guard), else two sends.
                data = conn.take_body()
                # In one write only when the fields frame the body (a Content-Length, or no
                # body); a chunked response stays chunked to the client (uvicorn frames it).
                if (watch.send_response is not None
                        and (parser.content_length >= 0 or head_only or status in (204, 304))
                        and watch.send_response(send, status, out, data)):
                    return status
                await send({"type": "http.response.start", "status": status, "headers": out})
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return status
            await send({"type": "http.response.start", "status": status, "headers": out})
            try:
                async for chunk in conn.iter_body(idle):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (StreamBroken, TimeoutError) as exc:
                errors.labels(kind="stream").inc()
                log.warning("replica %s: response stream broke: %s", target.replica_id, exc)
                conn.close()
                # Do not finish the response: uvicorn then closes the client connection
                # without the final chunk, so the client sees the truncation.
                return 502
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return status
        finally:
            if uploader is not None and not uploader.done():
                uploader.cancel()
            if conn is not None:
                if uploader is not None and not (uploader.done() and not uploader.cancelled()
                                                 and uploader.exception() is None):
                    conn.close()
                pool.release(conn)


class _ClientWatch:
    """Cancels the request's task the moment its client disconnects.

    On the agent's own ports the server calls back on a lost connection (the scope extension
    ``skyform.on_disconnect`` of lb_agent.dataplane.client_guard); elsewhere a task waits in
    ``receive()``, which only reports a disconnect once the request body is all read.
    """

    __slots__ = ("gone", "register", "send_response", "stopped", "task", "watcher")

    def __init__(self, task: asyncio.Task[Any] | None, scope: Scope) -> None:
        self.task = task
        extensions = scope.get("extensions") or {}
        self.register: Callable[[Callable[[], None] | None], None] | None = extensions.get(
            "skyform.on_disconnect")
        #: lb_agent.dataplane.client_guard.send_response on the agent's own ports, else None.
        self.send_response: Callable[[Send, int, list[tuple[bytes, bytes]], bytes], bool] | None = (
            extensions.get("skyform.send_response"))
        self.watcher: asyncio.Task[None] | None = None
        self.gone = False
        self.stopped = False
        if self.register is not None:
            self.register(self.trip)

    def start(self, receive: Receive) -> None:
        """Watch ``receive`` (the request body must have been read whole)."""
        if self.register is None and self.watcher is None and not self.stopped:
            self.watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
        # uvicorn also reports http.disconnect once the response is complete; by then the
        # proxy has stopped this watcher, so a trip only lands while the request is open.
        self.trip()

    def trip(self) -> None:
        """The client left: cancel the request (once)."""
        if self.stopped or self.gone:
            return
        self.gone = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def stop(self) -> None:
        self.stopped = True
        if self.register is not None:
            self.register(None)
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


def _response_headers(parser: ResponseParser) -> list[tuple[bytes, bytes]]:
    """The replica's header fields for the client: hop-by-hop ones (and those its
    Connection names) dropped, one canonical Content-Length where the response has one."""
    out = []
    connection: bytes | None = None
    for field in parser.headers:  # lb_agent.dataplane.http1 gives lower-case names
        k = field[0]
        if k in _STRIP_RESPONSE:
            if k == b"connection":
                connection = field[1] if connection is None else connection + b"," + field[1]
            continue
        out.append(field)
    if connection is not None and connection not in _PLAIN_CONNECTION:
        tokens = _listed(connection) - _STRIP_RESPONSE
        if tokens:
            out = [field for field in out if field[0] not in tokens]
    length = parser.content_length
    if length >= 0 and parser.status not in (204, 304):
        # 204/304 carry no body; uvicorn would expect one from a Content-Length.
        out.append((b"content-length", b"%d" % length))
    return out


async def _send_internal_error(send: Send) -> bool:
    """Answer 500 with a JSON body; False when a response was already started."""
    start, end = json_response_parts(
        500,
        {"detail": "Internal error in the load balancer; see the agent log.",
         "error": "internal_error"},
    )
    try:
        await send(start)
    except RuntimeError:  # uvicorn refuses a second response start
        return False
    await send(end)
    return True


async def _upload(conn: Any, prefix: bytes, receive: Receive, chunked: bool,
                  watch: _ClientWatch) -> None:
    """Stream the rest of a large request body to the replica (a disconnect trips ``watch``)."""

    def put(data: bytes) -> None:
        if chunked:
            conn.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            conn.write(data)

    if prefix:
        put(prefix)
    while True:
        await conn.drain()
        msg = await receive()
        if msg["type"] == "http.disconnect":
            conn.close()
            watch.trip()
            return
        chunk = msg.get("body", b"")
        if chunk:
            put(chunk)
        if not msg.get("more_body", False):
            break
    if chunked:
        conn.write(b"0\r\n\r\n")
    watch.start(receive)  # the body is all read: from now on receive() only reports a leave


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
