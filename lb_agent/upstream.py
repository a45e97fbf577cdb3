"""A pooled HTTP/1.1 client for replicas, on asyncio protocols and httptools' parser.

Chosen by measurement over aiohttp's client (see README "The agent"): the proxy path needs
no cookies, redirects, decompression or URL objects, and skipping them roughly doubles
requests/s on two cores. Per replica there is a LIFO pool of keep-alive connections; an idle
connection is closed after ``idle_timeout``. Response bodies are delivered chunk by chunk as
they arrive; when the client reads slower than the replica writes, reading from the replica
pauses (bounded memory with many open streams).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import httptools

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The replica failed before a complete response head arrived."""

    def __init__(self, message: str, *, connect: bool = False, reused: bool = False) -> None:
        super().__init__(message)
        self.connect = connect  # could not connect at all (eject the replica)
        self.reused = reused  # a pooled keep-alive connection died before any byte


class StreamBroken(Exception):
    """The replica's connection broke in the middle of a response body."""


def _fire_timeout(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("replica idle timeout"))


class Connection(asyncio.Protocol):
    """One keep-alive connection to a replica; one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.got_bytes = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.head_only = False
        self.keep_alive = False

    # -- protocol callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

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
        if self.head_done and not self.complete and exc is None and self._eof_delimited():
            # No Content-Length and not chunked: the body ends when the replica closes.
            self.complete = True
        dw = self.drain_waiter
        if dw is not None and not dw.done():
            dw.set_result(None)
        if not self.complete and self.error is None:
            self.error = exc or ConnectionResetError("replica closed the connection")
        self._wake()
        self.pool.forget(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc
            self.close()
            self._wake()

    def eof_received(self) -> bool | None:
        return None

    def _eof_delimited(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        return True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # interim response: wait for the real one
            self.headers = []
            return
        self.head_done = True
        if self.head_only:
            # httptools cannot skip a HEAD response's body; end here, never reuse.
            self.complete = True
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, timeout: float) -> None:
        fut = self.loop.create_future()
        self.waiter = fut
        handle = self.loop.call_later(timeout, _fire_timeout, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self.waiter = None

    # -- request API ------------------------------------------------------------------
    def send_head(self, head: bytes, body: bytes, *, head_only: bool) -> None:
        """Write the request head (and a buffered body)."""
        self._reset()
        self.head_only = head_only
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
        """Wait for the response status and headers."""
        while not self.head_done:
            if self.error is not None or self.closed:
                raise UpstreamError(
                    f"replica closed the connection before answering: {self.error}",
                    reused=self.used and not self.got_bytes,
                )
            await self._wait(timeout)

    async def iter_body(self, timeout: float) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk as it arrives."""
        chunks = self.chunks
        while True:
            while chunks:
                chunk = chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self.error is not None or self.closed:
                raise StreamBroken(str(self.error or "replica closed the connection"))
            await self._wait(timeout)

    def close(self) -> None:
        """Close the connection (it will not be reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        """True when the last response completed and the replica keeps the connection open."""
        return self.complete and self.keep_alive and not self.closed and self.error is None


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
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.closed = False

    async def acquire(self, *, fresh: bool = False) -> Connection:
        """A pooled idle connection (unless ``fresh``), or a new one.

        Raises UpstreamError(connect=True) when a new connection cannot be made.
        """
        idle = self.idle
        while idle and not fresh:
            conn = idle.pop()
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
                conn.idle_handle = None
            if not conn.closed:
                conn.used = True
                return conn
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
        conn.idle_handle = self.loop.call_later(self.idle_timeout, self._expire, conn)
        self.idle.append(conn)

    def _expire(self, conn: Connection) -> None:
        conn.idle_handle = None
        conn.close()

    def forget(self, conn: Connection) -> None:
        """Drop a closed connection from the idle list."""
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
