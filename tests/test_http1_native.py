"""The upstream response-head parser's C helper (lb_agent/dataplane/_http1_native.c) against
the pure-Python parser of lb_agent/dataplane/http1.py.

The helper is an optional build (setup.py): where it is missing, ResponseParser runs its Python
path alone. It must never change an outcome: on every head, a parser using it ends in the
same state (status, fields, framing, keep-alive, body, bytes after the end) or fails with
the same error as one without it. The first test says plainly when it was not built here.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb_agent.dataplane import http1
from lb_agent.dataplane.http1 import ProtocolError, ResponseParser

native = http1.native_head


def test_the_c_helper_is_built_here() -> None:
    assert native is not None, (
        "lb_agent.dataplane._http1_native was not built: `pip install -e .` needs gcc and the "
        "Python headers (scripts/bootstrap.sh --tests installs them); http1 then parses "
        "response heads in pure Python")


def _outcome(data: list[bytes], *, head_only: bool, use_native: bool) -> tuple[Any, ...]:
    saved = http1.native_head
    http1.native_head = saved if use_native else None
    try:
        body: deque[bytes] = deque()
        p = ResponseParser(body, head_only=head_only, max_head=4096)
        try:
            for piece in data:
                p.feed(piece)
        except ProtocolError as exc:
            return ("error", str(exc))
        return (p.status, p.headers, p.head_done, p.done, p.framing, p.content_length,
                p.keep_alive, p.remaining, p.interim, b"".join(body), p.extra, p.buf)
    finally:
        http1.native_head = saved


def _same(data: list[bytes], head_only: bool = False) -> tuple[Any, ...]:
    python = _outcome(data, head_only=head_only, use_native=False)
    assert _outcome(data, head_only=head_only, use_native=True) == python, data
    return python


COMMON = [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 14:40:49 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 204 No Content\r\nConnection: Keep-Alive\r\n\r\n",
    b"HTTP/1.1 404\r\ncontent-length:0\r\nconnection: close\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: \t spaced \t \r\nContent-Length: 007\r\n\r\n1234567",
]


@pytest.mark.parametrize("head", COMMON)
def test_common_heads_take_the_c_path_and_agree(head: bytes) -> None:
    if native is None:
        pytest.fail("the C helper is not built (see test_the_c_helper_is_built_here)")
    end = head.find(b"\r\n\r\n")
    assert native(head, head.find(b"\r\n"), end) is not None  # taken, not declined
    for head_only in (False, True):
        _same([head], head_only)
        _same([head[:7], head[7:]], head_only)


UNUSUAL = [
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\x0b\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\nb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 200OK\r\n\r\n",
    b"HTTP/1.1 20\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    b"HTTP/1.1 200 O\rK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
]


@pytest.mark.parametrize("head", UNUSUAL)
def test_unusual_heads_are_left_to_python_with_the_same_outcome(head: bytes) -> None:
    for head_only in (False, True):
        _same([head], head_only)


_NAMES = [b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
          b"CONNECTION", b"X-A", b"Server", b"Date", b"bad name", b" folded", b"", b"a:b"]
_VALUES = [b"0", b"2", b"02", b" 2 ", b"2,2", b"-1", b"x", b"chunked", b"Chunked", b" chunked",
           b"gzip, chunked", b"close", b"Keep-Alive", b"keep-alive, close", b"upgrade", b"",
           b" \t ", b"a\x00b", b"a\rb", b"a\nb", b"\x0b2", b"\xff\xfe", b"1" * 19]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1"]),
    status=st.sampled_from([b"200", b"204", b"304", b"404", b"502", b"100", b"101", b"099",
                            b"2000", b"20x"]),
    reason=st.sampled_from([b" OK", b"", b" ", b"OK", b" a\x00", b" \xff"]),
    fields=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from([b":", b": ", b":\t"]),
                              st.sampled_from(_VALUES)), max_size=6),
    tail=st.sampled_from([b"", b"ok", b"2\r\nok\r\n0\r\n\r\n", b"0\r\n\r\nX"]),
    head_only=st.booleans(),
    split=st.integers(min_value=0, max_value=200),
)
def test_generated_heads_have_the_same_outcome_either_way(
        version: bytes, status: bytes, reason: bytes, fields: list[tuple[bytes, bytes, bytes]],
        tail: bytes, head_only: bool, split: int) -> None:
    head = version + b" " + status + reason + b"\r\n"
    head += b"".join(n + sep + v + b"\r\n" for n, sep, v in fields)
    data = head + b"\r\n" + tail
    _same([data], head_only)
    _same([data[:split], data[split:]], head_only)
