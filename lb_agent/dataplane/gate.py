"""The admission gate of one client request or WebSocket handshake: the API key, then the
rate limit (docs/routing.md, "Admission"). HTTP (lb_agent.dataplane.proxy) and WebSocket
(lb_agent.dataplane.websocket)
both ask ``admit``; each sends the refusal in its own framing."""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from lb_agent.dataplane.forwarding import client_address
from lb_agent.runtime import AgentRuntime


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its status, JSON body and extra header fields."""

    status: int
    body: dict[str, Any]
    headers: list[tuple[bytes, bytes]]


def admit(rt: AgentRuntime, scope: MutableMapping[str, Any]) -> Refusal | None:
    """None when the request may go on (a rate-limit token taken), else the refusal (and
    the ``rejected`` metric counted)."""
    who: str | None = None
    if rt.api_keys:
        auth = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
                break
        who = rt.api_keys.check(auth)
        if who is None:
            rt.metrics.rejected.labels(reason="unauthorized").inc()
            return Refusal(401, {"detail": "A valid API key is required: Authorization: "
                                 "Bearer <key>.", "error": "unauthorized"},
                           [(b"www-authenticate", b"Bearer")])
    limiter = rt.limiter_for(who)
    if limiter:
        if who is None:
            who = "addr-" + client_address(scope, rt.trusted_proxies)
        wait = limiter.take(who)
        if wait > 0:
            rt.metrics.rejected.labels(reason="rate_limited").inc()
            return Refusal(429, {"detail": "Rate limit exceeded; retry after the Retry-After "
                                 "seconds.", "error": "rate_limited"},
                           [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
    return None
