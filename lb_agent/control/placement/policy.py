"""The ``Placer`` protocol every placement policy implements, the policy names, and the
plumbing the policies share (``BasePlacer``: the candidates, the book, the event methods).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from lb_agent.control.placement.locations import Location, LocationBook

#: Names accepted by ``build_placer``; ``skyform`` is the default.
SPOTHEDGE = "spothedge"
SINGLE_ZONE = "single-zone"
SKYFORM = "skyform"
PLACERS = (SKYFORM, SPOTHEDGE, SINGLE_ZONE)
DEFAULT_PLACER = SKYFORM


class Placer(Protocol):
    """A placement policy: where the next replica goes, and the events it learns from."""

    name: str
    book: LocationBook

    def choose(self, spot: bool, current: Sequence[Location], now: float) -> Location | None:
        """The location for the next replica of the given market, given the locations of the
        live replicas (launching or running, both markets). None: no candidate location of
        that market exists."""
        ...

    def launched(self, loc: Location, now: float) -> None: ...

    def ready(self, loc: Location, now: float, launched_at: float | None = None) -> None:
        """A replica at ``loc`` became READY (``launched_at``: when it was launched, if
        known)."""
        ...

    def launch_failed(self, loc: Location, now: float, kind: str) -> None: ...

    def preempted(self, loc: Location, now: float) -> None: ...

    def released(self, loc: Location, now: float) -> None:
        """A replica at ``loc`` was scaled down (not a failure of the location)."""
        ...

    def status(self, now: float) -> list[dict[str, Any]]: ...

    def place_again(self, loc: Location, now: float) -> bool:
        """Whether the deployer places a replica whose launch at ``loc`` just failed again
        elsewhere at once (True), or drops it for the autoscaler to decide again (False)."""
        ...

    def fallback_counts(
        self, *, target: int, spot_wanted: int, ondemand_wanted: int, ready_spot: int,
        live_spot: int, dynamic: bool, base: int, now: float, starting_spot: int = 0,
        ready_ondemand: int = 0, ondemand_ahead: int = 0,
    ) -> tuple[int, int]:
        """(spot, on-demand) replica counts for the fallback autoscaler, given SkyServe's
        own counts (``FallbackRequestRateAutoscaler.counts_hook``; the autoscaler holds more
        spot than SkyServe's count only up to the spot cap, ``PolicyParams.group_caps``).
        ``starting_spot``: spot replicas whose launch went through (STARTING), not READY
        yet; ``ready_ondemand``: on-demand replicas READY; ``ondemand_ahead``: on-demand
        replicas not READY yet that were launched before the newest STARTING spot replica
        (so READY before it). SpotHedge and single-zone return
        SkyServe's counts unchanged."""
        ...


class BasePlacer:
    """Shared plumbing: the candidates, the book, and the event methods."""

    name = ""

    def __init__(self, candidates: Sequence[Location], rng: random.Random,
                 book: LocationBook | None = None) -> None:
        if not candidates:
            raise ValueError("placement: no candidate locations")
        self.candidates = tuple(dict.fromkeys(candidates))
        self.rng = rng
        self.book = book or LocationBook(self.candidates)

    def _of(self, spot: bool) -> list[Location]:
        return [c for c in self.candidates if c.spot == spot]

    def launched(self, loc: Location, now: float) -> None:
        self.book.launched(loc, now)

    def ready(self, loc: Location, now: float, launched_at: float | None = None) -> None:
        del launched_at
        self.book.ready(loc, now)

    def launch_failed(self, loc: Location, now: float, kind: str) -> None:
        self.book.launch_failed(loc, now, kind)

    def preempted(self, loc: Location, now: float) -> None:
        self.book.preempted(loc, now)

    def released(self, loc: Location, now: float) -> None:
        del loc, now

    def status(self, now: float) -> list[dict[str, Any]]:
        return self.book.status(now)

    def place_again(self, loc: Location, now: float) -> bool:
        del loc, now
        return True

    def fallback_counts(
        self, *, target: int, spot_wanted: int, ondemand_wanted: int, ready_spot: int,
        live_spot: int, dynamic: bool, base: int, now: float, starting_spot: int = 0,
        ready_ondemand: int = 0, ondemand_ahead: int = 0,
    ) -> tuple[int, int]:
        del target, ready_spot, live_spot, dynamic, base, now, starting_spot, ready_ondemand
        del ondemand_ahead
        return spot_wanted, ondemand_wanted

    @staticmethod
    def _cheapest(locs: Sequence[Location]) -> Location:
        """The cheapest; ties go to the earliest in candidate order (``min`` is stable)."""
        return min(locs, key=lambda loc: loc.price)
