"""Who the client is, and the X-Forwarded-* headers the agent adds to its request (HTTP and
WebSocket).

``client_address`` is the one answer to "the client's address" (key-less rate limits use it):
the TCP peer, unless the peer is a trusted proxy (``admission.trusted_proxies`` CIDRs, such as
a cloud load balancer in front of the agent); then ``X-Forwarded-For`` is read from the right,
skipping trusted hops, and the first address not trusted is the client. A client cannot
choose its bucket by sending its own ``X-Forwarded-For``: entries left of an untrusted hop
are never read. The PROXY protocol is not read (see docs/routing.md, "Admission").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def trusted_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``cidrs`` (already validated by the config)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address(text: str) -> Address | None:
    """An address from an X-Forwarded-For entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``,
    ``::1``), or None when it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: Address, networks: Sequence[Network]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


def client_address(scope: MutableMapping[str, Any], trusted: Sequence[Network] = ()) -> str:
    """The client's address: the peer's, or (when the peer is a trusted proxy) the nearest
    untrusted address of ``X-Forwarded-For``; ``"?"`` when the server gives no peer."""
    client = scope.get("client")
    peer = str(client[0]) if client else "?"
    if not trusted:
        return peer
    current = _address(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    hops: list[str] = []
    for k, v in scope["headers"]:
        if k == b"x-forwarded-for":
            hops.extend(v.decode("latin-1").split(","))
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            break  # a garbled entry: trust nothing left of it
        current = addr
        if not _trusted(addr, trusted):
            break
    return str(current)
