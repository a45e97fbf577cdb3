"""WebSocket proxying on the public port: one client connection relayed to one replica.

SkyServe's balancer does not handle WebSocket upgrades at all; realtime and streaming APIs
need them. Each connection is placed by the same policy as HTTP requests and counts as one
in-flight request on its replica for as long as it stays open, so least-load sees it. The
upstream handshake (no byte of the conversation has reached a replica before it succeeds) is
tried on up to ``max_attempts`` *different* replicas, whether the replica refused the
connection (ejected, as for HTTP), answered another status, or sent an invalid handshake.
Messages are relayed both ways as they arrive (text stays text, bytes stay bytes), and a
close on either side closes the other with the same code. When no replica can take the
connection the client gets an HTTP 503 (or 502) JSON answer where the server supports the
ASGI ``websocket.http.response`` extension, and a 1013 "try again later" close otherwise.

A handshake goes through the same admission as an HTTP request (docs/routing.md,
"Admission"): the API key (401) and rate limit (429) of lb_agent.dataplane.gate, then the
same dispatch (lb_agent.dataplane.dispatch): the FIFO wait queue when no replica can take it
(none READY, all at ``max_in_flight_per_replica``, breakers open), and the circuit breakers:
a replica whose breaker is open is not chosen, and each handshake is its breaker's verdict
(a failed one counts as a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from lb_agent import constants as C
from lb_agent.dataplane.dispatch import Dispatcher, Failed, Try
from lb_agent.dataplane.forwarding import forwarded_headers
from lb_agent.dataplane.gate import admit
from lb_agent.dataplane.responses import json_response_parts
from lb_agent.dataplane.target import Target
from lb_agent.runtime import AgentRuntime

log = logging.getLogger("lb_agent.dataplane.websocket")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
#: Headers the websocket client sets itself (handshake) or the agent sets (forwarding).
_NOT_FORWARDED = frozenset({
    b"host", b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version",
    b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-length",
    b"transfer-encoding", b"keep-alive", b"te", b"trailer", b"proxy-authorization",
    b"proxy-connection", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
})
#: RFC 6455 close codes that must not be sent in a close frame; 1000 replaces them.
_RESERVED_CLOSE = frozenset({1005, 1006, 1015})


def _forward_headers(scope: Scope, strip_authorization: bool = False) -> list[tuple[str, str]]:
    """The handshake headers for the replica; ``strip_authorization`` when admission
    consumed the client's API key (the replica does not get it)."""
    out: list[tuple[str, str]] = []
    xff = host = b""
    for k, v in scope["headers"]:
        if k == b"x-forwarded-for":
            xff = v if not xff else xff + b", " + v
        elif k == b"host":
            host = v
        if k not in _NOT_FORWARDED and not (strip_authorization and k == b"authorization"):
            out.append((k.decode("latin-1"), v.decode("latin-1")))
    proto = b"wss" if scope.get("scheme") == "wss" else b"ws"
    out.extend((k.decode("latin-1"), v.decode("latin-1"))
               for k, v in forwarded_headers(scope, xff, host, proto))
    return out


def _upstream_url(target: Target, scope: Scope) -> str:
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    qs = scope.get("query_string", b"")
    return f"ws://{target.host}:{target.port}{path}" + (f"?{qs.decode('latin-1')}" if qs else "")


#: Close codes for a refused handshake where the server cannot send an HTTP answer.
_CLOSE_FOR = {401: 1008, 429: 1013}  # 1008: policy violation; 1013: try again later


async def _reject(scope: Scope, send: Send, status: int, payload: dict[str, Any],
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Refuse the handshake: an HTTP answer with a JSON body where the server allows it
    (``extra`` header fields; by default a Retry-After), else a close frame."""
    if "websocket.http.response" in scope.get("extensions", {}):
        if extra is None:
            extra = [(b"retry-after", str(C.LB_NO_REPLICA_RETRY_AFTER_SECONDS).encode())]
        start, body = json_response_parts(status, payload, extra,
                                          kind="websocket.http.response")
        await send(start)
        await send(body)
    else:
        await send({"type": "websocket.close", "code": _CLOSE_FOR.get(status, 1013),
                    "reason": payload["error"]})


async def proxy_websocket(dispatcher: Dispatcher, scope: Scope, receive: Receive,
                          send: Send) -> int:
    """Relay one WebSocket connection; returns the status for the metrics (101 when relayed)."""
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return 499
    rt = dispatcher.runtime
    cfg = rt.config.proxy
    if rt.api_keys or rt.rate_limiter:
        refusal = admit(rt, scope)
        if refusal is not None:
            await _reject(scope, send, refusal.status, refusal.body, refusal.headers)
            return refusal.status
    headers = _forward_headers(
        scope, bool(rt.api_keys) and not rt.config.admission.forward_api_key)
    subprotocols = [Subprotocol(p) for p in scope.get("subprotocols", [])]

    async def attempt(target: Target, handle: Try) -> int | Failed:
        upstream: ClientConnection | None = None
        failed: Failed | None = None
        try:
            upstream = await connect(
                _upstream_url(target, scope), additional_headers=headers,
                subprotocols=subprotocols or None, open_timeout=cfg.connect_timeout_seconds,
                max_size=C.LB_WEBSOCKET_MAX_MESSAGE_BYTES, proxy=None, compression=None,
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            rt.metrics.errors.labels(kind="status").inc()
            failed = Failed(f"replica {target.replica_id} answered "
                            f"{exc.response.status_code}", sent=True)
        except InvalidHandshake as exc:  # a bad accept key, upgrade header, HTTP, ...
            rt.metrics.errors.labels(kind="protocol").inc()
            failed = Failed(f"replica {target.replica_id}: invalid handshake: {exc}", sent=True)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ConnectionRefusedError):
                rt.eject(target.replica_id)
            rt.metrics.errors.labels(kind="connect").inc()
            failed = Failed(f"replica {target.replica_id}: {exc or type(exc).__name__}",
                            sent=True)
        handle.verdict(upstream is not None)  # the handshake is the breaker's verdict
        if upstream is None:
            assert failed is not None
            return failed
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await _relay(receive, send, upstream)
        return 101

    async def answer(status: int, payload: dict[str, Any],
                     extra: list[tuple[bytes, bytes]]) -> None:
        await _reject(scope, send, status, payload, extra)

    # Every failed handshake is retried on another replica: none of the conversation has
    # reached a replica before the handshake succeeds.
    return await dispatcher.run(attempt, answer, pick=_select(rt), retry=lambda _: True,
                                label="websocket", what="the WebSocket connection",
                                failing="refused the WebSocket handshake")


def _select(rt: AgentRuntime) -> Callable[[list[Target]], Target]:
    def pick(candidates: list[Target]) -> Target:
        target = rt.policy.select(candidates)
        assert target is not None
        return target

    return pick


async def _relay(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Pump messages both ways until either side closes; close the other side alike."""

    async def client_to_replica() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                code = int(msg.get("code", 1000))
                await upstream.close(1000 if code in _RESERVED_CLOSE else code)
                return
            if msg["type"] == "websocket.receive":
                data = msg.get("text")
                if data is None:
                    data = msg.get("bytes") or b""
                await upstream.send(data)

    async def replica_to_client() -> None:
        try:
            async for data in upstream:
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        code, reason = upstream.close_code, upstream.close_reason or ""
        if code is None or code in (1006, 1015):  # the replica went away without a close
            code, reason = 1014, "replica connection lost"  # 1014: bad gateway
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "websocket.close",
                        "code": 1000 if code in _RESERVED_CLOSE else code, "reason": reason})

    tasks = [asyncio.ensure_future(client_to_replica()),
             asyncio.ensure_future(replica_to_client())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                log.warning("websocket relay ended with %r", exc)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
