"""The connection cap both ports share (client_guard.HeadGuard._admit): at the cap a new
connection takes the slot of the one idle the longest, else it is answered 503 and closed
after a linger. The public port's cap is also tested through real sockets in
tests/test_hostile_peers.py; this drives the shared code with fake transports, for any port."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lb_agent.dataplane.client_guard import LINGER_SECONDS, HeadGuard, refusal


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.eof = False
        self.closed_event = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True
        self.closed_event.set()

    def is_closing(self) -> bool:
        return self.closed


class Conn(HeadGuard):
    """A connection of one port: its transport and whether it waits for a request."""

    def __init__(self, port: set[Any], loop: asyncio.AbstractEventLoop, cap: int,
                 idle_since: float | None) -> None:
        self.connections = port
        self.cap = cap
        self.loop = loop
        self.transport = FakeTransport()
        self._init_guard()
        self._idle_since = idle_since


FULL = refusal(503, "too_many_connections",
               "The load balancer has too many open connections; retry shortly.")


async def test_below_the_cap_a_connection_is_admitted_and_nothing_closed() -> None:
    loop = asyncio.get_running_loop()
    port: set[Any] = set()
    port.update(Conn(port, loop, 3, idle_since=1.0) for _ in range(2))
    new = Conn(port, loop, 3, idle_since=None)
    assert new._admit(new.transport)
    assert not new.transport.written and not any(c.transport.closed for c in port)


async def test_at_the_cap_the_connection_idle_longest_makes_room() -> None:
    loop = asyncio.get_running_loop()
    port: set[Any] = set()
    busy = Conn(port, loop, 3, idle_since=None)  # a request under way
    older = Conn(port, loop, 3, idle_since=5.0)
    oldest = Conn(port, loop, 3, idle_since=2.0)
    newer = Conn(port, loop, 3, idle_since=9.0)
    port.update((busy, older, newer))
    port.add(oldest)  # 4 > cap: still the oldest idle one goes, and only that one
    new = Conn(port, loop, 3, idle_since=None)
    assert new._admit(new.transport)
    assert oldest.transport.closed and oldest not in port and oldest._idle_since is None
    assert not any(c.transport.closed for c in (busy, older, newer))
    assert not oldest.transport.written  # closed without a word, as nginx does
    assert not new.transport.written


async def test_at_the_cap_with_every_connection_busy_it_is_answered_503_and_lingers() -> None:
    loop = asyncio.get_running_loop()
    port: set[Any] = set()
    port.update(Conn(port, loop, 2, idle_since=None) for _ in range(2))
    closing = Conn(port, loop, 2, idle_since=1.0)
    closing.transport.closed = True  # idle but already closing: it makes no room
    port.add(closing)
    new = Conn(port, loop, 2, idle_since=None)
    assert not new._admit(new.transport)
    assert new.transport.written == [FULL] and new.transport.eof
    assert not new.transport.closed  # the client gets the time to read the answer ...
    assert new._timer is not None
    assert new._timer.when() == pytest.approx(loop.time() + LINGER_SECONDS, abs=0.5)
    await asyncio.wait_for(new.transport.closed_event.wait(), 30)  # ... then it is closed
    assert sum(c.transport.closed for c in port) == 1  # nothing else touched
