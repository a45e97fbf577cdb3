"""Locations and what happened at each: the ``Location`` of a replica (cloud, region, zone,
candidate, spot or on-demand, price) and the ``LocationBook`` that records launches, READY
replicas, failed launches and preemptions per location and derives each location's state
(active, preempted, blocked until a time) for ``/status``, metrics and ``skyform status``.

Pure: no I/O, the clock is passed in.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_SLUG = re.compile(r"[^a-z0-9]+")


@functools.total_ordering
@dataclass(frozen=True)
class Location:
    """Where one replica runs. ``price`` is hourly and takes no part in equality or hashing
    (the same place stays the same location when its price changes)."""

    cloud: str
    region: str
    zone: str | None
    #: The accelerator or instance label the replica is launched with ("A10G:1", "p3.2xlarge").
    candidate: str
    spot: bool
    price: float = field(default=0.0, compare=False)

    def _order(self) -> tuple[str, str, str, str, bool]:
        return (self.cloud, self.region, self.zone or "", self.candidate, self.spot)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Location):
            return NotImplemented
        return self._order() < other._order()

    @property
    def zone_id(self) -> tuple[str, str, str | None]:
        """The zone the location is in, ``(cloud, region, zone)``: the locations of several
        candidates (and of both markets) there share it, and lose capacity together."""
        return (self.cloud, self.region, self.zone)

    @property
    def market(self) -> str:
        """``spot`` or ``ondemand``."""
        return "spot" if self.spot else "ondemand"

    @property
    def key(self) -> str:
        """A short stable DNS-label-safe name: ``<cloud>-<zone or region>-<candidate>-<s|od>``
        (``aws-us-east-1a-a10g-1-s``). The same location always gives the same key."""
        place = self.zone or self.region
        cand = _SLUG.sub("-", self.candidate.lower()).strip("-")
        return f"{self.cloud.lower()}-{place.lower()}-{cand}-{'s' if self.spot else 'od'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud,
            "region": self.region,
            "zone": self.zone,
            "candidate": self.candidate,
            "spot": self.spot,
            "price": self.price,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Location:
        """The inverse of ``to_json``; a missing or wrong field raises ValueError naming it."""
        try:
            zone = data.get("zone")
            return cls(
                cloud=str(data["cloud"]),
                region=str(data["region"]),
                zone=None if zone in (None, "") else str(zone),
                candidate=str(data["candidate"]),
                spot=bool(data["spot"]),
                price=float(data.get("price") or 0.0),
            )
        except KeyError as exc:
            raise ValueError(f"location: missing field {exc.args[0]!r} in {dict(data)!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"location: bad value in {dict(data)!r}: {exc}") from None

    def __str__(self) -> str:
        return f"{self.cloud}/{self.zone or self.region}/{self.candidate}/{self.market}"


class LocationState(enum.StrEnum):
    """A location's state as placement sees it."""

    ACTIVE = "active"
    PREEMPTED = "preempted"
    BLOCKED = "blocked"
    #: Works, but left for on-demand for now (the skyform policy at a target of one).
    PARKED = "parked"


@dataclass
class LocationRecord:
    """What happened at one location (counts, last times, decayed evidence, block)."""

    launches: int = 0
    ready: int = 0
    failures: int = 0
    preemptions: int = 0
    last_launch: float | None = None
    last_ready: float | None = None
    last_failure: float | None = None
    last_failure_kind: str | None = None
    last_preemption: float | None = None
    #: Consecutive failed launches since the last success (drives the exponential block).
    strikes: int = 0
    blocked_until: float = float("-inf")
    #: The SpotHedge status bit: preempted (True) or active (False).
    preempted_flag: bool = False


class LocationBook:
    """Per-location records of launches, READY replicas, failed launches and preemptions.

    The book is shared bookkeeping; each policy reads it its own way. ``block_base_seconds``
    and ``block_max_seconds`` bound the block after a failed launch: ``base * 2**(strikes-1)``
    capped at ``max`` (SpotHedge's placer never blocks; the skyform placer does).
    """

    def __init__(
        self,
        locations: Iterable[Location],
        *,
        block_base_seconds: float = 0.0,
        block_max_seconds: float = 0.0,
        unsupported_block_seconds: float = 24 * 3600.0,
    ) -> None:
        self.locations: tuple[Location, ...] = tuple(dict.fromkeys(locations))
        self.records: dict[Location, LocationRecord] = {
            loc: LocationRecord() for loc in self.locations}
        self.block_base_seconds = block_base_seconds
        self.block_max_seconds = block_max_seconds
        self.unsupported_block_seconds = unsupported_block_seconds
        #: Strikes stop counting once the block has reached its cap (so that a READY replica
        #: that forgives one strike shortens the next block at once).
        self.max_strikes = 1
        if block_base_seconds > 0:
            while block_base_seconds * 2 ** (self.max_strikes - 1) < block_max_seconds:
                self.max_strikes += 1

    def record(self, loc: Location) -> LocationRecord:
        """The record of ``loc`` (a location not in the book is added)."""
        rec = self.records.get(loc)
        if rec is None:
            rec = self.records[loc] = LocationRecord()
            self.locations = (*self.locations, loc)
        return rec

    # -- events ---------------------------------------------------------------------------
    def launched(self, loc: Location, now: float) -> None:
        """A launch into ``loc`` was issued (it may still fail)."""
        rec = self.record(loc)
        rec.launches += 1
        rec.last_launch = now

    def ready(self, loc: Location, now: float) -> None:
        """A replica in ``loc`` came up: the location works; strikes are forgiven."""
        rec = self.record(loc)
        rec.ready += 1
        rec.last_ready = now
        rec.strikes = 0
        rec.preempted_flag = False
        rec.blocked_until = float("-inf")  # a READY replica proves the capacity is there

    def launch_failed(self, loc: Location, now: float, kind: str) -> None:
        """A launch into ``loc`` failed for a location reason (``kind`` from the classifier)."""
        rec = self.record(loc)
        rec.failures += 1
        rec.last_failure = now
        rec.last_failure_kind = kind
        rec.strikes = min(rec.strikes + 1, max(1, self.max_strikes))
        rec.preempted_flag = True
        if kind == "unsupported":
            block = self.unsupported_block_seconds
        elif self.block_base_seconds > 0:
            block = min(self.block_max_seconds,
                        self.block_base_seconds * 2 ** min(rec.strikes - 1, 30))
        else:
            block = 0.0
        if block > 0:
            rec.blocked_until = max(rec.blocked_until, now + block)

    def strike(self, loc: Location, now: float, base_seconds: float) -> None:
        """One more strike against ``loc`` and a block of ``base_seconds * 2**(strikes-1)``
        (at most ``block_max_seconds``)."""
        rec = self.record(loc)
        rec.strikes = min(rec.strikes + 1, max(1, self.max_strikes))
        block = min(self.block_max_seconds or base_seconds,
                    base_seconds * 2 ** min(rec.strikes - 1, 30))
        rec.blocked_until = max(rec.blocked_until, now + block)

    def preempted(self, loc: Location, now: float) -> None:
        """A replica in ``loc`` was preempted (interruption notice, or it vanished)."""
        rec = self.record(loc)
        rec.preemptions += 1
        rec.last_preemption = now
        rec.preempted_flag = True

    def set_active(self, loc: Location) -> None:
        """Clear the preempted bit (SpotHedge's ``set_active``)."""
        self.record(loc).preempted_flag = False

    def reset_preempted(self) -> None:
        """Every location active again (SpotHedge's reset when < 2 are active)."""
        for rec in self.records.values():
            rec.preempted_flag = False

    # -- reading --------------------------------------------------------------------------
    def is_blocked(self, loc: Location, now: float) -> bool:
        return self.record(loc).blocked_until > now

    def state(self, loc: Location, now: float) -> LocationState:
        rec = self.record(loc)
        if rec.blocked_until > now:
            return LocationState.BLOCKED
        if rec.preempted_flag:
            return LocationState.PREEMPTED
        return LocationState.ACTIVE

    def status(self, now: float) -> list[dict[str, Any]]:
        """One JSON-ready entry per location, for ``/status``, metrics and ``skyform status``:
        ``location`` (``Location.to_json()``), ``key``, ``state``, ``blocked_until`` (None when
        not blocked), ``parked_until`` (None here; a placer that parks locations fills it)
        and ``counts`` (launches, ready, failures, preemptions)."""
        out = []
        for loc in self.locations:
            rec = self.records[loc]
            out.append({
                "location": loc.to_json(),
                "key": loc.key,
                "state": self.state(loc, now).value,
                "blocked_until": rec.blocked_until if rec.blocked_until > now else None,
                "parked_until": None,
                "last_failure_kind": rec.last_failure_kind,
                "counts": {
                    "launches": rec.launches,
                    "ready": rec.ready,
                    "failures": rec.failures,
                    "preemptions": rec.preemptions,
                },
            })
        return out
