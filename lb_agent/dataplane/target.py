"""Target: a routable replica as the proxy sees it, with its live in-flight count."""

from __future__ import annotations


class Target:
    """One replica in the routing table.

    ``in_flight`` is incremented at dispatch and decremented in a ``finally`` by the proxy,
    on the same object, so a count can never leak or go below zero even when the replica
    leaves the routing table while requests are running.
    """

    __slots__ = ("accelerator", "host", "in_flight", "owed", "port", "replica_id", "url",
                 "version")

    def __init__(
        self, replica_id: str, url: str, accelerator: str | None = None, version: int = 1
    ) -> None:
        self.replica_id = replica_id
        self.url = url
        self.accelerator = accelerator
        self.version = version
        self.in_flight = 0
        #: Prefill work routed here and not yet finished, as the routing policy estimates it
        #: (prefix_aware: uncached prompt blocks; see its ``release``); 0 for other policies.
        self.owed = 0
        rest = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            host, port = rest, ("443" if url.startswith("https://") else "80")
        self.host = host.strip("[]")
        self.port = int(port)

    def __repr__(self) -> str:
        return f"Target({self.replica_id!r}, {self.url!r}, in_flight={self.in_flight})"
