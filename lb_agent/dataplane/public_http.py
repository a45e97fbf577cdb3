"""The public port's HTTP/1.1 server protocol: requests go straight to the proxy, no ASGI cycle.

uvicorn still runs the public port (listener, lifespan, graceful shutdown), but each client
connection is this protocol (``public_protocol(app, limits, cap)``, the class handed to
``uvicorn.Config(http=...)``) instead of uvicorn's httptools protocol and its
``RequestResponseCycle``. It parses with the same parser (httptools, llhttp in its strict
mode: a request with both Content-Length and Transfer-Encoding, two different Content-Length
values, a Transfer-Encoding other than a final ``chunked``, a bad chunk size, obs-fold or a
bad field name is refused with 400) and hands the request to ``ProxyApp.handle_http`` with
per-request state of its own (``Exchange``: one object per request, no ``asyncio.Event``, no
keep-alive timer per response). The admin port stays on uvicorn's protocol
(lb_agent.dataplane.client_guard).

The client limits are client_guard's, with the same answers:

* a request head must arrive within ``request_head_timeout_seconds`` of the connection
  opening or of its first byte: else 408, or a silent close when not a byte came; a
  pipelined head stalled behind a running response closes the connection;
* a head longer than ``max_request_head_bytes`` gets 431 and the connection closes;
* at ``cap`` open connections a new one takes the place of the connection idle the longest,
  or is answered 503 at once and closed after a short linger;
* a request the parser refuses gets a 400 with a JSON body;
* an idle keep-alive connection closes after ``KEEP_ALIVE_SECONDS`` (uvicorn's
  ``timeout_keep_alive`` on the admin port).

One pending timer per connection covers the head deadline and the keep-alive deadline
(client_guard.HeadGuard, shared with the admin port: the deadline and the refusals); it
is moved lazily (a keep-alive request costs no timer operation). A WebSocket upgrade is handed
to uvicorn's WebSocket protocol, as uvicorn's own HTTP protocol does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

from lb_agent.dataplane.client_guard import (
    HEAD,
    IDLE,
    KEEP_ALIVE,
    HeadGuard,
    HeadTooLarge,
)
from lb_agent.dataplane.limits import PortLimits

log = logging.getLogger("lb_agent.dataplane.public_http")

Message = MutableMapping[str, Any]
#: The proxy's entry point: (scope, receive, send).
Handler = Callable[[dict[str, Any], Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

#: Seconds an idle keep-alive connection stays open (the admin port's uvicorn setting too).
KEEP_ALIVE_SECONDS = 75.0
#: Request body bytes buffered before reading from the client pauses.
HIGH_WATER = 65536
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class Exchange:
    """One request on a client connection: its body as it arrives and its response state.

    ``receive`` and ``send`` keep the ASGI message shapes the proxy speaks (``http.request``,
    ``http.disconnect``, ``http.response.start`` / ``.body``) without uvicorn's cycle.
    """

    __slots__ = ("body", "chunked", "conn", "disconnected", "expected", "head_only",
                 "keep_alive", "last_given", "more_body", "response_complete",
                 "response_started", "scope", "waiter", "waiting_100")

    def __init__(self, conn: PublicProtocol, scope: dict[str, Any], *, keep_alive: bool,
                 head_only: bool, waiting_100: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.waiting_100 = waiting_100
        self.body = bytearray()
        self.more_body = True
        self.last_given = False  # the final body message was handed out
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.expected = 0  # body bytes the response still owes (Content-Length framing)

    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def receive(self) -> Message:
        conn = self.conn
        if self.waiting_100:
            self.waiting_100 = False
            if not conn.transport.is_closing():
                conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not (self.disconnected or self.response_complete):
            if self.body or not (self.more_body or self.last_given):
                break
            if conn.reading_paused:
                conn.resume_reading()
            self.waiter = conn.loop.create_future()
            await self.waiter
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = bytes(self.body)
        self.body.clear()
        if not self.more_body:
            self.last_given = True
        elif conn.reading_paused:
            conn.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']!r}")
            self.response_started = True
            self.waiting_100 = False
            status: int = message["status"]
            headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
            parts = [STATUS_LINE[status]]
            length: int | None = None
            for name, value in headers:
                if HEADER_RE.search(name):
                    raise RuntimeError("invalid HTTP header name")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("invalid HTTP header value")
                name = name.lower()
                if name == b"content-length" and length is None:
                    length = int(value)
                elif name == b"connection" and b"close" in {
                        t.strip().lower() for t in value.split(b",")}:
                    self.keep_alive = False
                    continue
                parts += (name, b": ", value, b"\r\n")
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            if length is not None:
                self.expected = length
            elif not self.head_only and status not in (204, 304):
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            parts.append(b"\r\n")
            conn.transport.write(b"".join(parts))
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected {message['type']!r} after the response")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {message['type']!r}")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.head_only:
            self.expected = 0
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
            if data:
                conn.transport.write(data)
        elif body:
            if len(body) > self.expected:
                raise RuntimeError("response content longer than Content-Length")
            self.expected -= len(body)
            conn.transport.write(body)
        if not more:
            if self.expected:
                raise RuntimeError("response content shorter than Content-Length")
            self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        self.wake()
        if not self.keep_alive:
            self.conn.transport.close()
        self.conn.response_done(self)


def send_response(send: Callable[..., Any], status: int, headers: list[tuple[bytes, bytes]],
                  body: bytes) -> bool:
    """The scope extension ``skyform.send_response`` on this port: status line, fields and
    body in one write (client_guard.send_response's contract: False, nothing written, when
    the caller must send the two messages instead)."""
    ex = getattr(send, "__self__", None)
    if type(ex) is not Exchange or ex.response_started or ex.disconnected or ex.conn.write_paused:
        return False
    # The names are the replica's, already tokens (lb_agent.dataplane.http1 refuses any
    # other), or the proxy's own; a value may still hold a control character uvicorn's
    # check refuses (one search over the values joined by a tab, the one allowed).
    if HEADER_VALUE_RE.search(b"\t".join([v for _, v in headers])):
        return False
    line = STATUS_LINE.get(status)
    if line is None:
        return False
    parts = [line]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    if not ex.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if body and not ex.head_only:
        parts.append(body)
    ex.response_started = True
    ex.waiting_100 = False
    ex.conn.transport.write(b"".join(parts))
    ex._complete()
    return True


class PublicProtocol(HeadGuard, asyncio.Protocol):
    """One client connection of the public port (limits and handler set by public_protocol)."""

    limits: PortLimits = PortLimits()
    cap: int = 4096
    handler: Handler

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.loop = _loop or asyncio.get_event_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.refused = False
        self.reading_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The request being parsed, and the one being answered.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = False
        self._parsing: Exchange | None = None
        self.current: Exchange | None = None
        self._pipeline: deque[Exchange] = deque()
        self._upgrading = False
        # The connection's one task (``_serve``), the request it takes next when it is still
        # finishing one, and the future it waits on between requests.
        self._worker: asyncio.Task[None] | None = None
        self._ready: Exchange | None = None
        self._idle_waiter: asyncio.Future[Exchange | None] | None = None
        # The one deadline (head or keep-alive) and its lazily moved timer (HeadGuard).
        self._init_guard()
        self._chunk = 0
        self._on_lost: Callable[[], None] | None = None
        self._idle_since: float | None = None  # waiting for a request since (loop time)
        self._extensions: dict[str, Any] = {
            "skyform.on_disconnect": self._register, "skyform.send_response": send_response,
            "skyform.whole_body": self._whole_body}

    # -- connection ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._admit(transport):
            self.refused = True
            return
        self.connections.add(self)
        server = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        self.server = (str(server[0]), int(server[1])) if isinstance(server, tuple) else None
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._idle_since = self.loop.time()
        self._arm(HEAD, self._idle_since + self.limits.request_head_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        self._disarm()
        if self.refused:
            return
        self.connections.discard(self)
        for ex in (self.current, *self._pipeline):
            if ex is not None and not ex.response_complete:
                ex.disconnected = True
                ex.wake()
        self._pipeline.clear()
        self._ready = None
        waiter, self._idle_waiter = self._idle_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the connection's task ends
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if exc is None:
            self.transport.close()
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    def eof_received(self) -> bool | None:
        if self.refused:
            self.transport.close()
        return None

    def _whole_body(self) -> bytes | None:
        """The scope extension ``skyform.whole_body``: the request body of the request being
        answered when all of it has arrived and none was received yet (what one ``receive``
        would give), else None (``receive`` then). Never with ``Expect: 100-continue``
        pending, whose answer ``receive`` writes."""
        ex = self.current
        if (ex is None or ex.more_body or ex.last_given or ex.waiting_100 or ex.disconnected
                or ex.response_complete):
            return None
        ex.last_given = True
        body = bytes(ex.body)
        ex.body.clear()
        return body

    def _register(self, callback: Callable[[], None] | None) -> None:
        """The proxy's hook: run ``callback`` when the client leaves (None: forget it)."""
        self._on_lost = callback

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close when idle, else after the current response."""
        if self.current is None or self.current.response_complete:
            self.transport.close()
        else:
            self.current.keep_alive = False

    # -- flow control ------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        while self.write_paused and not self.transport.is_closing():
            self._drain = self.loop.create_future()
            await self._drain

    def resume_reading(self) -> None:
        if self.reading_paused and not self._pipeline:
            self.reading_paused = False
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    # -- input ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # read and dropped until the linger ends
        self._chunk = len(data)
        reading_head = self._waiting == HEAD
        if reading_head:
            self._head_bytes += self._chunk
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._upgrading:
                self._upgrade()
            else:
                log.warning("Unsupported upgrade request.")
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

    # parser callbacks
    def on_message_begin(self) -> None:
        self._idle_since = None
        self._url = b""
        self._headers = []
        self._expect_100 = False
        if self._waiting != HEAD:
            self._head_bytes = self._chunk  # an upper bound: the head began in this read
            self._arm(HEAD, self.loop.time() + self.limits.request_head_timeout_seconds)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing white space
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._waiting = IDLE
        self._deadline = None  # the timer, if pending, finds nothing to do
        limit = self.limits.max_request_head_bytes
        if self._head_bytes > limit:
            # The count may include body bytes read along: measure the head itself.
            size = len(self._url) + sum(len(k) + len(v) + 4 for k, v in self._headers)
            if size > limit:
                raise HeadTooLarge
        self._head_bytes = 0
        parser = self.parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if parser.should_upgrade() and self._is_websocket():
            self._upgrading = True
            return
        target = self._url
        # Origin-form (llhttp checked it). ``find``, not ``b"#" not in target``: bytes' ``in``
        # first tries its operand as an integer and builds a TypeError, which costs more.
        if target[:1] == b"/" and target.find(b"#") < 0:
            raw_path, _, query = target.partition(b"?")
        else:
            url = httptools.parse_url(target)
            raw_path, query = url.path, url.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http", "asgi": _ASGI, "http_version": version,
            "server": self.server, "client": self.client, "scheme": self.scheme,
            "root_path": "", "headers": self._headers, "method": method, "path": path,
            "raw_path": raw_path, "query_string": query,
            "extensions": self._extensions, "state": {},
        }
        ex = Exchange(self, scope, keep_alive=version != "1.0" and parser.should_keep_alive(),
                      head_only=method == "HEAD", waiting_100=self._expect_100)
        self._parsing = ex
        if self.current is None or self.current.response_complete:
            self._start(ex)
        else:  # pipelined: answered after the current one
            self._pause_reading()
            self._pipeline.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is None or ex.response_complete:
            return
        ex.body += body
        if len(ex.body) > HIGH_WATER:
            self._pause_reading()
        ex.wake()

    def on_message_complete(self) -> None:
        ex = self._parsing
        if ex is None or ex.response_complete:
            return
        self._parsing = None
        ex.more_body = False
        ex.wake()

    # -- requests ----------------------------------------------------------------------
    def _start(self, ex: Exchange) -> None:
        """Answer ``ex`` now: on the connection's one task (a request costs no task of its
        own), made at the first request and kept while the connection is open."""
        self.current = ex
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done():
            self._idle_waiter = None
            waiter.set_result(ex)  # the task waits for the next request
            return
        worker = self._worker
        if worker is None or worker.done():
            task = self.loop.create_task(self._serve(ex))
            self._worker = task
        elif self._ready is None:
            self._ready = ex  # the task is finishing the previous request: next
            return
        else:  # not expected (one request at a time): a task of its own
            task = self.loop.create_task(self._run(ex))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, ex: Exchange | None) -> None:
        """The connection's task: its requests one after another, waiting in between; it
        ends with the connection."""
        task = asyncio.current_task()
        while ex is not None:
            await self._run(ex)
            if task is not None and task.cancelling():
                # A cancellation meant for the request (the proxy's: its client left) that
                # the handler absorbed must not reach the next one.
                while task.cancelling():
                    task.uncancel()
            ex, self._ready = self._ready, None
            if ex is None:
                if self.transport.is_closing():
                    return
                waiter = self._idle_waiter = self.loop.create_future()
                ex = await waiter

    async def _run(self, ex: Exchange) -> None:
        try:
            await self.handler(ex.scope, ex.receive, ex.send)
        except BaseException:
            log.exception("public port: request handler failed")
            if not ex.response_started and not ex.disconnected:
                body = b'{"error": "internal_error", "detail": "Internal error in the load balancer; see the agent log."}'  # noqa: E501
                ex.keep_alive = False
                await ex.send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body))]})
                await ex.send({"type": "http.response.body", "body": body})
            else:
                self.transport.close()
            return
        if not ex.response_complete and not ex.disconnected:
            # The handler returned without a complete response: the client must not wait.
            self.transport.close()

    def response_done(self, ex: Exchange) -> None:
        """``ex`` is answered: start the next pipelined request, or wait for one."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
            return
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        now = self.loop.time()
        self._idle_since = now
        if self._waiting != HEAD:
            self._arm(KEEP_ALIVE, now + KEEP_ALIVE_SECONDS)

    def _is_websocket(self) -> bool:
        if self.config.ws_protocol_class is None:
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in self._headers:
            if name == b"connection":
                connection = [t.lower().strip() for t in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return b"upgrade" in connection and upgrade == b"websocket"

    def _upgrade(self) -> None:
        """Hand the connection to uvicorn's WebSocket protocol, as uvicorn's HTTP one does."""
        self._deadline = None
        self._disarm()
        self.connections.discard(self)
        head = [self.parser.get_method(), b" ", self._url, b" HTTP/1.1\r\n"]
        for name, value in self._headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        protocol = self.config.ws_protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state)
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(b"".join(head))

    def _responding(self) -> bool:
        return self.current is not None and not self.current.response_complete


def public_protocol(handler: Handler, limits: PortLimits,
                    cap: int | None = None) -> type[PublicProtocol]:
    """A protocol class serving ``handler`` under ``limits`` (``cap`` overrides
    ``limits.max_connections``)."""
    return type("PublicProtocol", (PublicProtocol,), {
        "limits": limits, "cap": limits.max_connections if cap is None else cap,
        "handler": staticmethod(handler),
    })
