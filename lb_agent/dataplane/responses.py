"""JSON error answers as ASGI messages, shared by the HTTP proxy and the WebSocket relay."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

Message = MutableMapping[str, Any]


def json_response_parts(status: int, payload: dict[str, Any],
                        extra: list[tuple[bytes, bytes]] | None = None,
                        *, kind: str = "http.response") -> tuple[Message, Message]:
    """ASGI start/body messages of a JSON error response.

    ``kind`` is ``http.response``, or ``websocket.http.response`` to refuse a WebSocket
    handshake with an HTTP answer.
    """
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    return (
        {"type": f"{kind}.start", "status": status, "headers": headers},
        {"type": f"{kind}.body", "body": body, "more_body": False},
    )
