"""The policies skyform's own is measured against: SkyServe's ``spot_placer:
dynamic_fallback`` (``spothedge``, the SpotHedge policy) and ``single-zone`` (skyform before
placement existed: every replica in the first candidate's location).
"""

from __future__ import annotations

from collections.abc import Sequence

from lb_agent.control.placement.locations import Location
from lb_agent.control.placement.policy import SINGLE_ZONE, SPOTHEDGE, BasePlacer


class SingleZonePlacer(BasePlacer):
    """Every replica in the first candidate's location (of the asked market)."""

    name = SINGLE_ZONE

    def choose(self, spot: bool, current: Sequence[Location], now: float) -> Location | None:
        del current, now
        first = self.candidates[0]
        same = [c for c in self._of(spot) if (c.cloud, c.region, c.zone, c.candidate)
                == (first.cloud, first.region, first.zone, first.candidate)]
        if same:
            return same[0]
        of = self._of(spot)
        return of[0] if of else None


class SpotHedgePlacer(BasePlacer):
    """SkyServe's ``dynamic_fallback`` spot placer (SpotHedge)."""

    name = SPOTHEDGE

    def _active(self) -> list[Location]:
        return [c for c in self._of(True) if not self.book.record(c).preempted_flag]

    def choose(self, spot: bool, current: Sequence[Location], now: float) -> Location | None:
        if not spot:
            od = self._of(False)
            return self._cheapest(od) if od else None
        active = self._active()
        if not active:
            spots = self._of(True)
            return self._cheapest(spots) if spots else None
        used = set(current)
        unused = [c for c in active if c not in used]
        return self._cheapest(unused or active)

    def launched(self, loc: Location, now: float) -> None:
        self.book.launched(loc, now)

    def ready(self, loc: Location, now: float, launched_at: float | None = None) -> None:
        del launched_at
        # SkyServe marks the location active once the launch succeeded.
        self.book.ready(loc, now)
        self.book.set_active(loc)

    def _mark_preempted(self) -> None:
        if len(self._active()) < 2:
            self.book.reset_preempted()

    def launch_failed(self, loc: Location, now: float, kind: str) -> None:
        self.book.launch_failed(loc, now, kind)
        self._mark_preempted()

    def preempted(self, loc: Location, now: float) -> None:
        self.book.preempted(loc, now)
        if loc.spot:
            self._mark_preempted()
