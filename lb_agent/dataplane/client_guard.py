"""Client limits on one uvicorn port: head timeout, head size, connection cap, JSON refusals.

``guarded_protocol(limits, cap)`` returns a subclass of uvicorn's httptools protocol (the
class handed to ``uvicorn.Config(http=...)``); each port gets its own class, so the admin port
keeps its own limits and its own count when the public port is full:

* a request head (request line and fields) must arrive within
  ``request_head_timeout_seconds`` of the connection opening or of its first byte; otherwise
  408 (or a silent close when not a byte came);
* a head longer than ``max_request_head_bytes`` gets 431 and the connection closes; the
  bytes kept while a head is incomplete stay bounded by that limit plus one read;
* at ``cap`` open connections, a new one first takes the place of the connection idle the
  longest (no request under way: nginx does the same); when every connection is busy, it is
  answered 503 at once and closed after a short linger (its bytes are read and dropped
  meanwhile so the answer is not lost to a reset);
* a request uvicorn's parser refuses gets a 400 with a JSON body (uvicorn's is plain text);
* the scope's ``extensions["skyform.on_disconnect"]`` lets the app register a callback run
  the moment the client connection is lost (no task blocked in ``receive()`` needed);
* ``extensions["skyform.send_response"]`` (``send_response``) writes a whole response, head
  and body, with one write instead of two ASGI messages (the proxy's common small case).

Every refusal has ``Connection: close`` and a JSON body ``{"error", "detail"}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from lb_agent.dataplane.limits import PortLimits

#: Seconds a refused (over-cap) connection stays open to let the 503 reach the client.
LINGER_SECONDS = 1.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def refusal(status: int, error: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response refusing a request, with a JSON body."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n", body,
    ])


class HeadTooLarge(Exception):
    """Raised from a parser callback: the request head is over the port's size limit."""


#: What a connection's one deadline is for (HeadGuard._waiting).
IDLE, HEAD, KEEP_ALIVE = 0, 1, 2


class HeadGuard:
    """The connection cap, the request-head deadline and the refusals of one client
    connection, shared by the admin port's protocol (GuardedProtocol) and the public port's
    (lb_agent.dataplane.public_http.PublicProtocol).

    At the port's cap a new connection takes the slot of the one idle the longest, else it
    is answered 503 (``_admit``).

    One deadline per connection (``_deadline``, loop time; what it is for in ``_waiting``:
    a request head, or on the public port the keep-alive idle time) and one pending timer,
    moved lazily: a timer that fires early finds a later deadline and re-arms, so a head that
    completes in time costs no timer operation. When the deadline passes: an idle keep-alive
    connection closes; a pipelined head stalled behind a running response closes the
    connection; a head begun gets 408; a connection that sent nothing closes silently.
    A refusal (``_refuse``: 400, 408, 431) is a JSON response with ``Connection: close``,
    never a second response on a connection whose response is being written (that one is
    closed instead).
    """

    limits: PortLimits
    loop: asyncio.AbstractEventLoop
    transport: Any
    #: The port's open connections (uvicorn's ``server_state.connections``) and their cap.
    connections: set[Any]
    cap: int
    _idle_since: float | None  # waiting for a request since (loop time)
    _timer: asyncio.TimerHandle | None
    _deadline: float | None
    _waiting: int
    _head_bytes: int  # counted from data_received: an upper bound of the head size

    def _admit(self, transport: Any) -> bool:
        """Whether a new connection may open: below the port's cap, or once the connection
        idle the longest has been closed to make room. Else it is answered 503 and closed
        after ``LINGER_SECONDS`` (so the client reads the answer), and False."""
        if len(self.connections) < self.cap or self._close_oldest_idle():
            return True
        transport.write(refusal(
            503, "too_many_connections",
            "The load balancer has too many open connections; retry shortly."))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(LINGER_SECONDS, transport.close)
        return False

    def _close_oldest_idle(self) -> bool:
        """Make room by closing the connection idle the longest (no request under way), as
        nginx reuses idle connections when it runs out; False when every one is busy."""
        oldest: HeadGuard | None = None
        oldest_since = 0.0
        for conn in self.connections:
            since = getattr(conn, "_idle_since", None)
            if (since is not None and isinstance(conn, HeadGuard)
                    and not conn.transport.is_closing()
                    and (oldest is None or since < oldest_since)):
                oldest, oldest_since = conn, since
        if oldest is None:
            return False
        oldest._idle_since = None
        self.connections.discard(oldest)
        oldest.transport.close()
        return True

    def _init_guard(self) -> None:
        self._timer = None
        self._deadline = None
        self._waiting = IDLE
        self._head_bytes = 0

    def _responding(self) -> bool:
        """A response is being written on the connection (no second one may start)."""
        raise NotImplementedError

    def _arm(self, waiting: int, deadline: float) -> None:
        """Set the one deadline; a timer is created only when none is pending."""
        self._waiting = waiting
        self._deadline = deadline
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return
        if deadline > self.loop.time():
            self._timer = self.loop.call_at(deadline, self._check)  # a later deadline
            return
        waiting = self._waiting
        self._deadline = None
        self._waiting = IDLE
        if waiting == KEEP_ALIVE:
            self.transport.close()  # idle too long between requests
        elif self._responding():
            self.transport.close()  # a pipelined head stalled behind a running response
        elif self._head_bytes:
            self._refuse(408, "request_timeout", "The request head did not arrive in time.")
        else:
            self.transport.close()  # nothing was asked: close silently, as nginx does

    def _refuse_head_too_large(self) -> None:
        self._refuse(431, "request_head_too_large",
                     f"The request line and header fields exceed "
                     f"{self.limits.max_request_head_bytes} bytes.")

    def _refuse(self, status: int, error: str, detail: str) -> None:
        self._deadline = None
        self._waiting = IDLE
        self._disarm()
        if self._responding():
            self.transport.close()  # a response is being written: no second one
            return
        self.transport.write(refusal(status, error, detail))
        self.transport.close()


def send_response(send: Callable[..., Any], status: int, headers: list[tuple[bytes, bytes]],
                  body: bytes) -> bool:
    """Answer the request of ``send`` (uvicorn's ASGI send) at once: status line, header
    fields and body in one write, with the state uvicorn's two messages would leave (response
    complete, keep-alive or close, the next pipelined request started). ``headers`` carry the
    body's Content-Length (or the status has no body) and no Connection field.

    False, with nothing written, when the caller must send the two ASGI messages instead:
    ``send`` is not a uvicorn httptools cycle, the response has started, the client is gone
    or not reading (flow control), the access log is on, or a field would be refused by
    uvicorn's checks (the two messages then fail as they always did).
    """
    cycle = getattr(send, "__self__", None)
    if (type(cycle) is not RequestResponseCycle or cycle.response_started or cycle.disconnected
            or cycle.flow.write_paused or cycle.access_log):
        return False
    # uvicorn checks each name and value with these two expressions; one search over all
    # the names (a refused character is refused anywhere) and one over the values joined by
    # a tab (the one control character allowed) give the same verdict.
    if (HEADER_RE.search(b"".join([k for k, _ in headers]))
            or HEADER_VALUE_RE.search(b"\t".join([v for _, v in headers]))):
        return False
    line = STATUS_LINE.get(status)
    if line is None:
        return False
    parts = [line]
    for k, v in cycle.default_headers:
        parts += (k, b": ", v, b"\r\n")
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    keep_alive = cycle.keep_alive
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if body and cycle.scope["method"] != "HEAD":
        parts.append(body)
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


class GuardedProtocol(HeadGuard, HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of one port (set by guarded_protocol)."""

    limits: PortLimits = PortLimits()
    cap: int = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._init_guard()
        self._chunk = 0  # size of the read being parsed
        self._on_lost: Callable[[], None] | None = None
        self._idle_since: float | None = None  # waiting for a request since (loop time)
        #: The scope extensions of every request on this connection (one dict per connection).
        self._extensions: dict[str, Any] = {
            "skyform.on_disconnect": self._register, "skyform.send_response": send_response}

    # -- connection ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self._admit(transport):
            self._refused = True
            self.transport = transport
            return
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        self._arm(HEAD, self._idle_since + self.limits.request_head_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    def _register(self, callback: Callable[[], None] | None) -> None:
        """The app's hook: run ``callback`` when the client leaves (None: forget it)."""
        self._on_lost = callback

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the linger ends
        self._unset_keepalive_if_required()
        self._chunk = len(data)
        reading_head = self._waiting == HEAD
        if reading_head:
            self._head_bytes += self._chunk
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse_head_too_large()
            else:
                self._refuse(400, "bad_request", "Invalid HTTP request received.")
            return
        if (reading_head and self._waiting == HEAD
                and self._head_bytes > self.limits.max_request_head_bytes):
            self._refuse_head_too_large()

    # -- parser callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._idle_since = None
        super().on_message_begin()
        extensions: Any = self._extensions  # typed narrowly upstream
        self.scope["extensions"] = extensions
        if self._waiting != HEAD:
            self._head_bytes = self._chunk  # an upper bound: the head began in this read
            self._arm(HEAD, self.loop.time() + self.limits.request_head_timeout_seconds)

    def on_headers_complete(self) -> None:
        self._waiting = IDLE
        self._deadline = None  # the timer, if pending, finds nothing to do
        if self._head_bytes > self.limits.max_request_head_bytes:
            # The count may include body bytes read along: measure the head itself.
            size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if size > self.limits.max_request_head_bytes:
                raise HeadTooLarge
        self._head_bytes = 0
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._idle_since = self.loop.time()

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


def guarded_protocol(limits: PortLimits, cap: int | None = None) -> type[GuardedProtocol]:
    """A protocol class enforcing ``limits`` (``cap`` overrides ``limits.max_connections``)."""
    return type("GuardedProtocol", (GuardedProtocol,), {
        "limits": limits, "cap": limits.max_connections if cap is None else cap,
    })
