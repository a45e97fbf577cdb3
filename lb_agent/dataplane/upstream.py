"""A pooled HTTP/1.1 client for replicas, on asyncio protocols and lb_agent.dataplane.http1's
framing.

Chosen by measurement over aiohttp's client (docs/agent.md, "HTTP machinery"): the proxy path needs
no cookies, redirects, decompression or URL objects, and skipping them roughly doubles
requests/s on two cores. Per replica there is a LIFO pool of keep-alive connections; an idle
connection is closed after ``idle_timeout`` (one timer per pool, not one per request: the
idle list is ordered by the time each connection came back, so the expired ones are its
head). Response bodies are delivered chunk by chunk as they arrive; when the client reads
slower than the replica writes, reading from the replica pauses (bounded memory with many
open streams).

A connection goes back to the pool only at a message boundary with nothing unread; one that
received a byte while idle is closed, and an idle connection is checked for pending bytes or
a close (one ``poll``) before it is handed out again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
from collections.abc import AsyncIterator

from lb_agent.dataplane.http1 import ProtocolError, ResponseParser

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The replica failed before a complete response head arrived."""

    def __init__(self, message: str, *, connect: bool = False, reused: bool = False,
                 protocol: bool = False) -> None:
        super().__init__(message)
        self.connect = connect  # could not connect at all (no byte sent; eject the replica)
        self.reused = reused  # a pooled keep-alive connection died before any byte
        self.protocol = protocol  # the replica answered something that is not valid HTTP/1.1


class StreamBroken(Exception):
    """The replica's connection broke in the middle of a response body."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to a replica; one request at a time.

    Framing is ``lb_agent.dataplane.http1.ResponseParser``'s: the response ends exactly where
    HTTP/1.1
    says. The connection is reusable only at that boundary with no byte beyond it; a byte
    that arrives while no request is outstanding (idle in the pool) closes it.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self.idle_since = 0.0  # loop time the connection came back to the pool
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.parser: ResponseParser | None = None  # None: no request outstanding
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        # The wait's deadline (loop time) and one timer per connection, moved lazily: a
        # timer that fires before the deadline re-arms at it, one that finds no wait under
        # way lapses. A response that arrives in time costs no timer operation.
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.got_bytes = False
        self.poller: select.poll | None = None

    # -- protocol callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.poller = select.poll()
            self.poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        """Wait until the replica has taken the buffered request body (flow control)."""
        while self.write_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self.parser
        complete = parser is not None and (parser.done or (exc is None and parser.eof()))
        dw = self.drain_waiter
        if dw is not None and not dw.done():
            dw.set_result(None)
        if parser is not None and not complete and self.error is None:
            self.error = exc or ConnectionResetError("replica closed the connection")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()
        self.pool.forget(self)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or parser.done:
            # Unsolicited bytes: while idle, or after the end of the response. Whatever
            # they are, the next response on this connection could not be trusted.
            if parser is not None:
                parser.extra += len(data)
            self.close()
            return
        self.got_bytes = True
        before = parser.received
        try:
            parser.feed(data)
        except ProtocolError as exc:
            self.error = exc
            self.close()
            self._wake()
            return
        self.buffered += parser.received - before
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if parser.head_done or parser.done:
            self._wake()

    def eof_received(self) -> bool | None:
        return None

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wait(self, timeout: float) -> asyncio.Future[None]:
        """A future for the caller to await: done at ``_wake``, TimeoutError when ``timeout``
        seconds pass first. (A plain method: no coroutine of its own per wait; a done
        future left in ``waiter`` is never set again.)"""
        fut = self.loop.create_future()
        self.waiter = fut
        self.deadline = deadline = self.loop.time() + timeout
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._deadline_check)
        return fut

    def _deadline_check(self) -> None:
        self.timer = None
        fut = self.waiter
        if fut is None or fut.done() or self.closed:
            return  # no wait under way: the next one arms a timer again
        deadline = self.deadline
        if deadline > self.loop.time():
            self.timer = self.loop.call_at(deadline, self._deadline_check)
            return
        fut.set_exception(TimeoutError("replica idle timeout"))

    # -- request API ------------------------------------------------------------------
    def send_head(self, head: bytes, body: bytes, *, head_only: bool) -> None:
        """Write the request head (and a buffered body)."""
        self.chunks = collections.deque()
        self.buffered = 0
        self.error = None
        self.got_bytes = False
        self.parser = ResponseParser(self.chunks, head_only=head_only,
                                     max_head=self.pool.max_response_head)
        assert self.transport is not None
        if body:
            self.transport.write(head + body)
        else:
            self.transport.write(head)

    def write(self, data: bytes) -> None:
        """Write part of a streamed request body."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def read_head(self, timeout: float) -> None:
        """Wait for the response status and headers (interim 1xx responses skipped)."""
        parser = self.parser
        assert parser is not None
        while not parser.head_done:
            if self.error is not None or self.closed:
                if isinstance(self.error, ProtocolError):
                    raise UpstreamError(f"invalid response: {self.error}", protocol=True)
                raise UpstreamError(
                    f"replica closed the connection before answering: {self.error}",
                    reused=self.used and not self.got_bytes,
                )
            await self._wait(timeout)

    async def iter_body(self, timeout: float) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk as it arrives."""
        chunks = self.chunks
        parser = self.parser
        assert parser is not None
        while True:
            while chunks:
                chunk = chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                if chunk:
                    yield chunk
            if parser.done:
                return
            if self.error is not None or self.closed:
                raise StreamBroken(str(self.error or "replica closed the connection"))
            await self._wait(timeout)

    def take_body(self) -> bytes:
        """The whole body of a complete response already received (the common small case)."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        return data

    def close(self) -> None:
        """Close the connection (it will not be reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        """True at a message boundary with nothing unread, when the replica keeps it open."""
        p = self.parser
        return (p is not None and p.done and p.keep_alive and p.extra == 0
                and not self.closed and self.error is None)

    def idle_clean(self) -> bool:
        """True when nothing (data or a close) is waiting unread on the idle socket."""
        if self.closed or self.transport is None:
            return False
        return self.poller is None or not self.poller.poll(0)


class Pool:
    """Keep-alive connections to one replica (host, port)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int = 512,
        max_response_head: int = 64 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_response_head = max_response_head
        self.loop = asyncio.get_running_loop()
        #: Idle connections, oldest first (take_idle takes the newest).
        self.idle: list[Connection] = []
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None  # due when the oldest idle expires

    def take_idle(self) -> Connection | None:
        """The newest idle connection that has neither expired nor received anything (the
        others are closed on the way), or None: no coroutine when the pool can serve."""
        idle = self.idle
        if idle:
            expired = self.loop.time() - self.idle_timeout
            while idle:
                conn = idle.pop()
                if conn.idle_since > expired and conn.idle_clean():
                    conn.used = True
                    return conn
                conn.close()
        return None

    async def connect(self) -> Connection:
        """A new connection; UpstreamError(connect=True) when it cannot be made."""
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Connection(self), self.host, self.port
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}",
                connect=True,
            ) from None
        assert isinstance(proto, Connection)
        return proto

    def release(self, conn: Connection) -> None:
        """Return ``conn`` to the pool if it can be reused, else close it."""
        if self.closed or not conn.reusable() or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(conn.idle_since + self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the idle connections whose ``idle_timeout`` has passed (the list's head)
        and wait for the next one to expire."""
        self._sweeper = None
        idle = self.idle
        expired = self.loop.time() - self.idle_timeout
        n = 0
        while n < len(idle) and idle[n].idle_since <= expired:
            n += 1
        if n:
            gone = idle[:n]
            del idle[:n]
            for conn in gone:
                conn.close()
        if idle and not self.closed:
            self._sweeper = self.loop.call_at(idle[0].idle_since + self.idle_timeout,
                                              self._sweep)

    def forget(self, conn: Connection) -> None:
        """Drop a closed connection from the idle list."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self.idle:
            conn.close()
        self.idle.clear()
