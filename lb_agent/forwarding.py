"""The X-Forwarded-* headers the agent adds to a client request (HTTP and WebSocket)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def forwarded_headers(scope: MutableMapping[str, Any], prior_for: bytes, host: bytes,
                      proto: bytes) -> list[tuple[bytes, bytes]]:
    """``X-Forwarded-For`` (the client's own value, then the client address), ``-Proto``
    and ``-Host`` (the ``Host`` the client asked for, when it sent one)."""
    xff = prior_for
    client = scope.get("client")
    if client:
        ip = str(client[0]).encode()
        xff = xff + b", " + ip if xff else ip
    out = [(b"x-forwarded-for", xff)] if xff else []
    out.append((b"x-forwarded-proto", proto))
    if host:
        out.append((b"x-forwarded-host", host))
    return out
