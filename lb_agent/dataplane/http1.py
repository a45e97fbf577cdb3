"""Where one upstream HTTP/1.1 response ends: an incremental response parser (RFC 9112).

Owns the framing rules of the pooled upstream client (``lb_agent.dataplane.upstream``), and nothing
else: it never touches sockets. ``ResponseParser.feed`` takes bytes as they arrive and
stops at the exact end of the response (section 6.3):

* no body after a response to HEAD, after 204 and 304, and after interim 1xx responses
  (which are skipped; a 101 is an error since the proxy never asks for an upgrade);
* ``Transfer-Encoding: chunked`` (exactly that one coding, as nginx requires; anything else
  such as ``gzip, chunked`` or ``xchunked`` is refused) is decoded; trailer fields are read
  and dropped;
* otherwise ``Content-Length`` (every value identical digits); with both fields, refused;
* otherwise the body runs until the replica closes (``eof()``), and the connection is not
  reusable.

Bytes after the end of the response are never parsed as part of it: they are counted in
``extra`` and make the connection unusable. Heads (status line, fields, trailers) are limited
to ``max_head`` bytes; obs-fold, bare CR/LF/NUL in fields and bad field names are refused.

A response head in the common shape (a final status, a plain Content-Length or
``Transfer-Encoding: chunked``, ``Connection: close`` or ``keep-alive``) is parsed by a small
C helper when it was built (lb_agent/dataplane/_http1_native.c, ``parse_head``): the same
results, fewer instructions. It declines anything else, which this module's Python parser
then decides (tests/test_http1_native.py compares the two on generated heads).
"""

from __future__ import annotations

import operator
import re
from collections import deque
from collections.abc import Callable
from typing import Any

try:
    from lb_agent.dataplane import _http1_native
except ImportError:  # pragma: no cover - built by ``pip install -e .`` where a compiler is
    _http1_native = None  # type: ignore[assignment]

#: The C helper's ``parse_head``, or None (the Python parser runs alone).
native_head: Callable[[bytes, int, int], Any] | None = (
    getattr(_http1_native, "parse_head", None) if _http1_native is not None else None)

_FIELD = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00\r\n]*"
_FIELD_LINE = re.compile(_FIELD)
_FIELD_BLOCK = re.compile(b"(?:" + _FIELD + rb"\r\n)*")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\x00\r\n]*)?\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")
_MAX_INTERIM = 16
_FRAMING_FIELDS = frozenset({b"transfer-encoding", b"content-length", b"connection"})
_split_field = operator.methodcaller("partition", b":")
_MAX_CHUNK_LINE = 4096

# Body framing kinds.
NONE, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)
# Chunked decoder states.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ProtocolError(Exception):
    """The replica's response is not valid HTTP/1.1 (or breaks a limit)."""


class ResponseParser:
    """Parse one response (``head_only``: to a HEAD request); body chunks go to ``body``."""

    __slots__ = ("body", "buf", "chunk_state", "content_length", "done", "extra", "framing",
                 "head_done", "head_only", "headers", "interim", "keep_alive", "max_head",
                 "received", "remaining", "status", "trailer_bytes")

    def __init__(self, body: deque[bytes], *, head_only: bool, max_head: int) -> None:
        self.body = body
        self.head_only = head_only
        self.max_head = max_head
        self.buf = b""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.framing = NONE
        self.content_length = -1  # the validated Content-Length, -1 when there is none
        self.remaining = 0  # LENGTH: body bytes left; CHUNKED: bytes left in this chunk
        self.chunk_state = _SIZE
        self.trailer_bytes = 0
        self.interim = 0
        self.received = 0  # body bytes delivered
        self.extra = 0  # bytes received after the end of the response

    # -- input -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Consume ``data``; raises ProtocolError on a malformed response."""
        if self.done:
            self.extra += len(data)
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        while data and not self.done:
            if not self.head_done:
                data = self._head(data)
            elif self.framing == LENGTH:
                data = self._length(data)
            elif self.framing == CHUNKED:
                data = self._chunked(data)
            else:  # UNTIL_CLOSE
                self.received += len(data)
                self.body.append(data)
                data = b""
        if data:
            self.extra += len(data)

    def eof(self) -> bool:
        """The replica closed: True when that ends the response correctly."""
        if not self.done and self.head_done and self.framing == UNTIL_CLOSE:
            self.done = True
        return self.done

    # -- head ----------------------------------------------------------------------------
    def _head(self, data: bytes) -> bytes:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > self.max_head:
                raise ProtocolError(f"response head larger than {self.max_head} bytes")
            self.buf = data
            return b""
        if end + 4 > self.max_head:
            raise ProtocolError(f"response head larger than {self.max_head} bytes")
        rest = data[end + 4:]
        line_end = data.find(b"\r\n")
        if native_head is not None:
            common = native_head(data, line_end, end)
            if common is not None:
                self.status, self.headers, chunked, length, close = common
                self._frame(chunked, length, close)
                self.head_done = True
                return rest
        m = _STATUS_LINE.match(data, 0, line_end)
        if m is None:
            raise ProtocolError(f"bad status line {data[:min(line_end, 60)]!r}")
        minor, status = m.group(1), int(m.group(2))
        headers = _fields(data[line_end + 2:end + 2]) if line_end < end else []
        if status < 200:
            if status == 101:
                raise ProtocolError("101 Switching Protocols without an upgrade request")
            self.interim += 1
            if self.interim > _MAX_INTERIM:
                raise ProtocolError("too many interim (1xx) responses")
            return rest
        self.status = status
        self.headers = headers
        self._framing(headers, minor == b"1")
        self.head_done = True
        return rest

    def _framing(self, headers: list[tuple[bytes, bytes]], http11: bool) -> None:
        te: list[bytes] = []
        lengths: list[bytes] = []
        close = not http11
        # ``value.find(b",") < 0``, not ``b"," not in value``: bytes' ``in`` first tries its
        # operand as an integer and builds a TypeError, several times the cost of the search.
        for name, value in headers:
            if name not in _FRAMING_FIELDS:
                continue
            if name == b"transfer-encoding":
                te.extend(t.strip().lower() for t in value.split(b","))
            elif name == b"content-length":
                if value.find(b",") >= 0:
                    lengths.extend(v.strip() for v in value.split(b","))
                else:
                    lengths.append(value.strip())
            elif name == b"connection":
                tokens = ({value.strip().lower()} if value.find(b",") < 0
                          else {t.strip().lower() for t in value.split(b",")})
                if b"close" in tokens:
                    close = True
                elif not http11 and b"keep-alive" in tokens:
                    close = False
        if te and lengths:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if te and (te != [b"chunked"] or not http11):
            raise ProtocolError(f"unsupported Transfer-Encoding {b', '.join(te)[:60]!r}")
        length = -1
        if lengths:
            if len(lengths) == 1:
                if _DIGITS.match(lengths[0]) is None:
                    raise ProtocolError("invalid Content-Length")
            elif any(_DIGITS.match(v) is None for v in lengths) or len(set(lengths)) != 1:
                raise ProtocolError("invalid Content-Length")
            length = int(lengths[0])
        self._frame(bool(te), length, close)

    def _frame(self, chunked: bool, length: int, close: bool) -> None:
        """Set the body's framing from the head's facts (validated)."""
        self.content_length = length
        self.keep_alive = not close
        if self.head_only or self.status in (204, 304):
            self.framing = NONE
            self.done = True
        elif chunked:
            self.framing = CHUNKED
        elif length >= 0:
            self.framing = LENGTH
            self.remaining = length
            if length == 0:
                self.done = True
        else:
            self.framing = UNTIL_CLOSE
            self.keep_alive = False

    # -- bodies --------------------------------------------------------------------------
    def _length(self, data: bytes) -> bytes:
        n = self.remaining
        if len(data) <= n:
            piece, data = data, b""
        else:
            piece, data = data[:n], data[n:]
        self.remaining -= len(piece)
        self.received += len(piece)
        self.body.append(piece)
        if self.remaining == 0:
            self.done = True
        return data

    def _chunked(self, data: bytes) -> bytes:
        state = self.chunk_state
        if state == _DATA:
            n = self.remaining
            piece = data if len(data) <= n else data[:n]
            self.remaining -= len(piece)
            self.received += len(piece)
            self.body.append(piece)
            if self.remaining == 0:
                self.chunk_state = _DATA_END
            return data[len(piece):]
        if state == _DATA_END:
            if len(data) < 2:
                if data != b"\r":
                    raise ProtocolError("chunk data not followed by CRLF")
                self.buf = data
                return b""
            if data[:2] != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            self.chunk_state = _SIZE
            return data[2:]
        end = data.find(b"\r\n")
        if end < 0:
            limit = _MAX_CHUNK_LINE if state == _SIZE else self.max_head - self.trailer_bytes
            if len(data) > limit:
                raise ProtocolError("chunk-size line or trailer section too long")
            self.buf = data
            return b""
        line, data = data[:end], data[end + 2:]
        if state == _SIZE:
            size = line.split(b";", 1)[0].strip(b" \t")
            if end > _MAX_CHUNK_LINE or _HEX.match(size) is None:
                raise ProtocolError(f"bad chunk size {line[:40]!r}")
            n = int(size, 16)
            if n:
                self.remaining = n
                self.chunk_state = _DATA
            else:
                self.chunk_state = _TRAILER
            return data
        # A trailer field (dropped: never turned into a header) or the final empty line.
        if not line:
            self.done = True
            return data
        self.trailer_bytes += end + 2
        if self.trailer_bytes > self.max_head:
            raise ProtocolError(f"trailer section larger than {self.max_head} bytes")
        _fields(line + b"\r\n")
        return data


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """Validated (lower-case name, value) pairs of ``block``: field lines, each ending CRLF.

    One regular expression checks the whole block (field names are tokens; values hold no
    NUL, CR or LF; a line starting with white space, obs-fold, is refused as RFC 9112 5.2
    lets a proxy do, and as nginx does).
    """
    if _FIELD_BLOCK.fullmatch(block) is None:
        for line in block.split(b"\r\n"):
            if line and _FIELD_LINE.fullmatch(line) is None:
                raise ProtocolError(f"bad header line {line[:60]!r}")
        raise ProtocolError("bad header block")
    return [(name.lower(), value.strip(b" \t"))
            for name, _, value in map(_split_field, block[:-2].split(b"\r\n"))]
