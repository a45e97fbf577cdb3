"""The ``skyform`` placement policy (the default, a skyform extension; docs/placement.md):
where each spot replica goes by the fleet's loss risk, what it learns from preemptions and
failed launches, and how many spot and on-demand replicas the fallback autoscaler holds.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from lb_agent.control.placement.locations import Location, LocationBook, LocationState
from lb_agent.control.placement.policy import SKYFORM, BasePlacer


class SkyformPlacer(BasePlacer):
    """The default policy (a skyform extension, docs/placement.md).

    *Hazard.* Capacity that has held tends to keep holding: a location's chance of losing its
    capacity within one replacement window is ``window_seconds / (age + young_seconds)``,
    the age counted from its last preemption or failed launch, or from the last time a
    sibling location of its region lost capacity (``sibling_offset_seconds``; None: not).

    *Choice.* Among spot locations that are not blocked: the lowest ``loss_risk`` of the
    fleet with the new replica there (locations whose loss alone leaves fewer than the
    target of the planned spot replicas, pairs whose joint loss does), then the fewest live
    replicas in the zone, then ``price * (1 + hazard)``, then the learnt cost ``price * (1 +
    rate * risk_hours)``, then the fewest in the region. When the service is short of READY
    spot replicas, a replacement goes to a *known-up* location if there is one (as many as the
    shortfall that no live spot replica, READY or on its way, replaces yet).

    *Learning.* Per location, a preemption rate: preemptions (and half a preemption per
    failed launch) over the replica-hours held there, forgotten with ``half_life_seconds``,
    from a prior of one preemption per ``prior_hours``. Over all locations, whether losses
    are whole (a batch of preemptions at one location at one instant took every replica
    held there, two or more) or partial: the ratio of the two decayed counts decides, so a
    calm spell does not make it unknown again.

    *Blocks.* A failed launch is a strike against its location and blocks it for
    ``block_base_seconds``, doubling with each strike up to ``block_max_seconds``; a
    preemption is a strike too (``preemption_block_seconds``). A READY replica there lifts
    the block but forgives only one strike. While every spot location is blocked no new spot
    replica is launched (``fallback_counts``).

    *Spares.* A spare (``num_overprovision``) is held only where it can protect: not while
    every spot replica is in one zone and the others are blocked, and, once losses are known
    to be whole (and, with ``spare_prior_whole``, until a loss shows which they are), not
    while no zone other than its own is small enough for it to cover.

    *Backup while unstable.* For ``backup_seconds`` after any spot preemption, when losses
    are whole and a spot location outside the zone holding the most replicas is open, it
    holds that zone's count (at most the target) of extra spot replicas, which the loss-risk
    choice puts in another zone: losing either zone then leaves the target READY. When the
    market calms the count drops back and the autoscaler scales the extra replicas down.
    No copy is held while every spot zone of the menu is in the fleet's region (zones of one
    region tend to go together), unless replacements take long enough that a loss saved by a
    copy in a sibling zone is worth it: ``sibling_copy_seconds``, against the median of the
    launch-to-READY times seen (``replacement_seconds``).

    *Spares as the copy* (``spare_copy_seconds``). Spares enough for a whole second copy
    of the fleet (``num_overprovision`` at least the target, at a target of two or more), while
    zone losses are whole or nothing shows yet which, are held only as the backup copy: for
    ``spare_copy_seconds`` (not ``backup_seconds``) after any spot preemption, and not through
    calm spells, where SkyServe holds them all the time. None: SkyServe's spares.

    *A pair or on-demand* (``pair_or_ondemand``, with on-demand fallback, at a target of
    one with spares asked for). One replica can only be protected by a READY spare in
    another zone; until one is there, one on-demand replica covers the target. Once it is
    READY, a lone spot replica is kept only while a second zone may pair with it, else
    released and its zone parked for ``park_seconds`` (on-demand alone costs less than
    on-demand insuring a replica nothing protects), and launches probe the other zones
    ignoring their blocks (a failed launch costs nothing while on-demand serves).

    *On-demand.* Covers the shortfall of READY spot replicas below the target (never the
    spares) and is released as soon as spot is READY again; spot replicas STARTING (their
    launch went through) count against it, so on-demand not yet READY is released once they
    cover the shortfall (READY on-demand stays until spot is READY). With ``hedge_value``
    > 0 it also covers, for a location holding READY spot whose loss would leave ``m`` of
    the ``n`` target short, those ``m`` while ``hazard * hedge_value >= m / n`` (a zone
    whose capacity just came back).

    *No spares, no insurance* (``lean_without_spares``). A service that asks for no spares
    (SkyServe's spot count is the target) gets no backup copy and no young-zone cover, and
    while on-demand serves its whole target and every spot location is blocked, spot is
    probed again at once, ignoring the blocks (not at a location whose launch failed under
    ``probe_seconds`` ago); a failed probe is dropped, not placed again.
    """

    name = SKYFORM

    def __init__(self, candidates: Sequence[Location], rng: random.Random,
                 book: LocationBook | None = None, *,
                 half_life_seconds: float = 24 * 3600.0,
                 prior_hours: float = 4.0,
                 risk_hours: float = 2.0,
                 block_base_seconds: float = 300.0,
                 block_max_seconds: float = 2400.0,
                 preemption_block_seconds: float = 300.0,
                 young_seconds: float = 1800.0,
                 window_seconds: float = 300.0,
                 unknown_age_seconds: float = 4 * 3600.0,
                 hedge_value: float = 5.0,
                 sibling_offset_seconds: float | None = 0.0,
                 backup_seconds: float = 9000.0,
                 spare_prior_whole: bool = True,
                 pair_or_ondemand: bool = True,
                 park_seconds: float = 3600.0,
                 probe_seconds: float = 180.0,
                 sibling_copy_seconds: float | None = 450.0,
                 lean_without_spares: bool = True,
                 spare_copy_seconds: float | None = 54000.0) -> None:
        super().__init__(candidates, rng, book or LocationBook(
            candidates, block_base_seconds=block_base_seconds,
            block_max_seconds=block_max_seconds))
        self.half_life_seconds = half_life_seconds
        self.prior_hours = prior_hours
        self.risk_hours = risk_hours
        self.preemption_block_seconds = preemption_block_seconds
        self.young_seconds = young_seconds
        self.window_seconds = window_seconds
        self.unknown_age_seconds = unknown_age_seconds
        self.hedge_value = hedge_value
        self.sibling_offset_seconds = sibling_offset_seconds
        self.backup_seconds = backup_seconds
        self.spare_prior_whole = spare_prior_whole
        self.pair_or_ondemand = pair_or_ondemand
        self.park_seconds = park_seconds
        self.probe_seconds = probe_seconds
        self.sibling_copy_seconds = sibling_copy_seconds
        self.lean_without_spares = lean_without_spares
        self.spare_copy_seconds = spare_copy_seconds
        #: Whether the spares asked for are held as the backup copy (``spare_copy_seconds``),
        #: from the last count decision.
        self._copy_spares = False
        #: Whether spot launches now are probes under full on-demand cover of a service
        #: that asked for no spares (``lean_without_spares``): blocks are ignored.
        self._lean_probe = False
        #: Zones whose lone spot replica was released for on-demand (target of one, nothing
        #: to pair it with), and when.
        self._parked: dict[tuple[str, str, str | None], float] = {}
        self._probing = False
        #: When a spot replica was last preempted anywhere (the market is unstable for
        #: ``backup_seconds`` after it).
        self._disturbed: float | None = None
        self._start: float | None = None
        #: Spot replicas the last count decision asked for, and the READY count it needs.
        self._planned = 0
        self._need = 0
        #: READY replicas per location (from the events, trimmed to the live count).
        self._ready: dict[Location, int] = {}
        #: Decayed evidence per location: [preemptions, held seconds].
        self._evidence: dict[Location, list[float]] = {c: [0.0, 0.0] for c in self.candidates}
        self._live: dict[Location, int] = {}
        self._clock: float | None = None
        #: Locations whose replica became READY with nothing wrong there since.
        self._up: set[Location] = set()
        #: READY-spot shortfall below the target, from the last count decision; each urgent
        #: placement uses one.
        self._short = 0
        #: The preemptions of the current instant per location: [time, lost, held before].
        self._batch: dict[Location, list[float]] = {}
        #: Decayed counts of preemption batches that took every replica held at the location
        #: (whole) or left some (partial), over batches where two or more were held.
        self._whole = 0.0
        self._partial = 0.0
        #: When each location's capacity was last seen leaving: a preemption, or the first
        #: failed launch after a replica there had been READY.
        self._left: dict[Location, float] = {}
        #: The last launch-to-READY times seen (seconds), for ``replacement_seconds``.
        self._to_ready: deque[float] = deque(maxlen=15)

    # -- learning ---------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Forget old evidence and add the replica time held since the last event."""
        if self._clock is None:
            self._clock = now
            return
        dt = now - self._clock
        if dt <= 0:
            return
        keep = 0.5 ** (dt / self.half_life_seconds)
        self._whole *= keep
        self._partial *= keep
        for loc in [c for c, b in self._batch.items() if b[0] < now]:
            _, lost, before = self._batch.pop(loc)
            if before >= 2:
                if lost >= before:
                    self._whole += 1.0
                else:
                    self._partial += 1.0
        for loc, ev in self._evidence.items():
            ev[0] *= keep
            ev[1] = ev[1] * keep + self._live.get(loc, 0) * dt
        self._clock = now

    def rate(self, loc: Location, now: float) -> float:
        """Learnt preemptions per replica-hour at ``loc``."""
        self._advance(now)
        pre, held = self._evidence.setdefault(loc, [0.0, 0.0])
        return (pre + 1.0) / (held / 3600.0 + self.prior_hours)

    def held(self, loc: Location) -> int:
        """Live replicas (launching or running) the placer counts at ``loc``."""
        return self._live.get(loc, 0)

    def known_up(self, loc: Location) -> bool:
        """A replica at ``loc`` became READY and nothing went wrong there since."""
        return loc in self._up

    def launched(self, loc: Location, now: float) -> None:
        self._advance(now)
        self.book.launched(loc, now)
        self._live[loc] = self._live.get(loc, 0) + 1

    def ready(self, loc: Location, now: float, launched_at: float | None = None) -> None:
        self._advance(now)
        if launched_at is not None and launched_at <= now:
            self._to_ready.append(now - launched_at)
        strikes = self.book.record(loc).strikes
        self.book.ready(loc, now)  # lifts the block ...
        self.book.record(loc).strikes = max(0, strikes - 1)  # ... and forgives one strike
        self._up.add(loc)
        self._ready[loc] = self._ready.get(loc, 0) + 1
        self._parked.pop(loc.zone_id, None)

    def _gone(self, loc: Location) -> None:
        self._live[loc] = max(0, self._live.get(loc, 0) - 1)
        self._up.discard(loc)

    def launch_failed(self, loc: Location, now: float, kind: str) -> None:
        self._advance(now)
        rec = self.book.record(loc)
        if rec.last_ready is not None and rec.last_ready > max(
                (t for t in (rec.last_failure, rec.last_preemption) if t is not None),
                default=float("-inf")):
            self._left[loc] = now  # it held a READY replica, and now it has no capacity
        self.book.launch_failed(loc, now, kind)
        self._evidence.setdefault(loc, [0.0, 0.0])[0] += 0.5
        self._gone(loc)

    def preempted(self, loc: Location, now: float) -> None:
        self._advance(now)
        batch = self._batch.get(loc)
        if batch is not None and batch[0] == now:
            batch[1] += 1
        else:
            self._batch[loc] = [now, 1, self._live.get(loc, 0)]
        self.book.preempted(loc, now)
        if loc.spot:
            self._disturbed = now
        self._left[loc] = now
        self._ready[loc] = max(0, self._ready.get(loc, 0) - 1)
        self._evidence.setdefault(loc, [0.0, 0.0])[0] += 1.0
        self._gone(loc)
        self.book.strike(loc, now, self.preemption_block_seconds)

    def released(self, loc: Location, now: float) -> None:
        self._advance(now)
        self._live[loc] = max(0, self._live.get(loc, 0) - 1)
        self._ready[loc] = min(self._ready.get(loc, 0), self._live[loc])

    def losses_whole(self) -> bool:
        """Whether preemptions have been taking every replica of a location at once (a zone
        that loses its capacity loses all of it) rather than some of them."""
        return self._whole > 0.0 and self._partial < 0.25 * self._whole

    def no_batches(self) -> bool:
        """Whether no preemption batch at a location holding two or more replicas has been
        seen yet (nothing tells whether losses are whole or partial)."""
        return self._whole == 0.0 and self._partial == 0.0

    def spare_useful(self, now: float, spares: int = 1) -> bool:
        """Whether ``spares`` spare spot replicas could protect against a zone loss.

        A spare covers the loss of a zone holding at most ``spares`` replicas. When losses
        are known to be whole (``losses_whole``), a spare is useless while no zone other than
        its own holds so few: every other zone's loss takes more than the spares can cover
        (four replicas stacked in one zone go down together, a fifth beside them or
        elsewhere saves nothing). Until a batch shows which (``no_batches``), the same test
        holds with ``spare_prior_whole`` (the default): a spare is held at first only where it
        would cover a whole zone's loss (always at a target of one). Once losses are known to
        be partial it is useful as soon as the live spot replicas span two or more zones, or
        another spot zone is open to hold it."""
        zones = self._spot_per_zone()
        if len(zones) == 1 and not any(
                c.zone_id not in zones and not self.book.is_blocked(c, now)
                for c in self._of(True)):
            return False
        if not self.losses_whole() and not (self.spare_prior_whole and self.no_batches()):
            return True
        small = sum(1 for n in zones.values() if n <= spares)
        held = sum(zones.values())
        return small >= (2 if held > self._need else 1)

    def _spot_per_zone(self) -> dict[tuple[str, str, str | None], int]:
        """Live spot replicas (launching or running) per zone."""
        zones: dict[tuple[str, str, str | None], int] = {}
        for c, n in self._live.items():
            if c.spot and n > 0:
                zones[c.zone_id] = zones.get(c.zone_id, 0) + n
        return zones

    def unstable(self, now: float) -> bool:
        """Whether a spot replica was preempted anywhere in the last ``backup_seconds`` (the
        last ``spare_copy_seconds`` while the spares asked for are held as the copy)."""
        window = self.backup_seconds
        if self._copy_spares and self.spare_copy_seconds is not None:
            window = self.spare_copy_seconds
        return self._disturbed is not None and now - self._disturbed < window

    def replacement_seconds(self) -> float | None:
        """How long a replacement takes: the median of the last launch-to-READY times seen
        (None before the first)."""
        return statistics.median(self._to_ready) if self._to_ready else None

    def _sibling_copy(self) -> bool:
        """Whether a backup copy may go to a sibling zone of the fleet's region: only while
        replacements are seen to take ``sibling_copy_seconds`` or more. Zones of one region
        tend to lose capacity together, so such a copy saves fewer losses than one in another
        region; it pays only when each loss it saves is long."""
        took = self.replacement_seconds()
        return (self.sibling_copy_seconds is not None and took is not None
                and took >= self.sibling_copy_seconds)

    def backup(self, now: float) -> int:
        """Spot replicas to hold beyond the target so that losing the zone holding the most
        of them still leaves the target: that zone's count (at most the target), while the
        market is unstable (``unstable``), losses take whole zones (``losses_whole``) and a
        spot location outside that zone is open to hold them (or replicas elsewhere already
        do), and some spot zone of the menu is in another region (or replacements take long
        enough for a copy in a sibling zone, ``_sibling_copy``); else 0."""
        if not self.unstable(now) or not self.losses_whole():
            return 0
        zones = self._spot_per_zone()
        if not zones:
            return 0
        big = max(zones, key=lambda z: zones[z])
        if not self._sibling_copy() and not any(
                c.zone_id[:2] != big[:2] for c in self._of(True)):
            return 0  # every spot zone is in the fleet's region: they go together
        if sum(zones.values()) == zones[big] and not any(
                c.zone_id != big and not self.book.is_blocked(c, now)
                for c in self._of(True)):
            return 0  # nowhere else to put it (a backup already held elsewhere stays)
        return min(self._need, zones[big])

    def status(self, now: float) -> list[dict[str, Any]]:
        """The book's entries; a spot location whose zone is parked (``_pair_or_ondemand``)
        shows state ``parked`` and ``parked_until`` (before then a launch goes there only as
        the partner of a replica elsewhere; a READY replica there ends the park)."""
        out = self.book.status(now)
        for entry, loc in zip(out, self.book.locations, strict=True):
            t = self._parked.get(loc.zone_id)
            if loc.spot and t is not None and now - t < self.park_seconds \
                    and entry["state"] == LocationState.ACTIVE.value:
                entry["state"] = LocationState.PARKED.value
                entry["parked_until"] = t + self.park_seconds
        return out

    def place_again(self, loc: Location, now: float) -> bool:
        """A failed probe (for a pair, ``_pair_or_ondemand``, or back to spot under full
        on-demand cover, ``lean_without_spares``) is dropped, not placed again: on-demand
        covers the target, and the next count decision sees the zone blocked."""
        del loc, now
        return not self._probing and not self._lean_probe

    def _eligible(self, c: Location, now: float) -> bool:
        """Whether a spot launch may go to ``c``: its zone is not parked, or was parked
        long ago, or a live spot replica in another unparked zone could pair with it."""
        t = self._parked.get(c.zone_id)
        if t is None or now - t >= self.park_seconds:
            return True
        return any(n > 0 and d.spot and d.zone_id != c.zone_id
                   and d.zone_id not in self._parked for d, n in self._live.items())

    def _probe_ok(self, c: Location, now: float) -> bool:
        """Whether a probe for a pair may go to ``c``: it is eligible (``_eligible``), and its
        last failed launch, if any, is ``probe_seconds`` old (a block does not stop a probe,
        but a zone is not tried again at once)."""
        last = self.book.record(c).last_failure
        return self._eligible(c, now) and (last is None or now - last >= self.probe_seconds)

    def _pair_or_ondemand(self, now: float, requested: int, cover_ready: int) -> int | None:
        """Spot replicas to hold at a target of one while no two READY spot replicas sit
        in two zones (None once they do: the usual counts apply). One on-demand replica
        covers the target meanwhile, and spot launches probe for a pair. Once the on-demand
        replica is READY, a lone spot replica is held only while a second zone may pair with
        it (a launch there is on its way, or a zone is open); else it is released and its
        zone parked for ``park_seconds``: on-demand alone is cheaper than on-demand insuring
        a replica that nothing can pair."""
        ready_zones = {c.zone_id for c, n in self._ready.items() if c.spot and n > 0}
        if len(ready_zones) >= 2:
            self._parked.clear()
            self._probing = False
            return None
        self._probing = True
        per_zone = self._spot_per_zone()
        live_zones, live = set(per_zone), sum(per_zone.values())
        probes = any(c.zone_id not in live_zones and self._probe_ok(c, now)
                     for c in self._of(True))
        if cover_ready < 1:
            # Keep what runs; a spare only where it could make a pair.
            return requested if probes or len(live_zones) >= 2 else min(requested, max(1, live))
        if not ready_zones:
            return min(requested, max(1, live)) if live or probes else 0
        lone = next(iter(ready_zones))
        if len(live_zones) >= 2 or any(
                c.zone_id != lone and self._eligible(c, now)
                and not self.book.is_blocked(c, now) for c in self._of(True)):
            return requested
        self._parked[lone] = now
        return 0

    def spot_open(self, now: float) -> bool:
        """Whether some spot location is not blocked."""
        return any(not self.book.is_blocked(c, now) for c in self._of(True))

    def age(self, loc: Location, now: float) -> float:
        """Seconds the location's capacity has been there at most: since its last preemption
        or failed launch, or (with ``sibling_offset_seconds`` not None) since capacity was
        last seen leaving another location of its region, plus that offset; a location with
        no such event is taken as ``unknown_age_seconds`` older than what was watched."""
        rec = self.book.record(loc)
        bad = max((t for t in (rec.last_preemption, rec.last_failure) if t is not None),
                  default=None)
        if self.sibling_offset_seconds is not None:
            for c in self._of(True):
                if c.cloud == loc.cloud and c.region == loc.region and c != loc:
                    t = self._left.get(c)
                    if t is not None:
                        t = min(now, t + self.sibling_offset_seconds)
                        bad = t if bad is None else max(bad, t)
        if bad is not None:
            return max(0.0, now - bad)
        start = self._start if self._start is not None else now
        return now - start + self.unknown_age_seconds

    def hazard(self, loc: Location, now: float) -> float:
        """Chance the location loses its capacity within one replacement window: capacity
        that has held long tends to keep holding, so it falls with the age, ``window /
        (age + young)``."""
        return min(1.0, self.window_seconds / (self.age(loc, now) + self.young_seconds))

    def loss_risk(self, counts: Mapping[Location, int], total: int, need: int,
                  now: float) -> float:
        """Chance within a window that losing locations drops the fleet below ``need``: one
        location whose loss alone leaves fewer than ``need`` of ``total``, plus pairs whose
        joint loss does."""
        held = [(c, n, self.hazard(c, now)) for c, n in counts.items() if n > 0]
        risk = 0.0
        single = set()
        for c, n, h in held:
            if total - n < need:
                risk += h
                single.add(c)
        for i, (c, n, h) in enumerate(held):
            if c in single:
                continue
            for d, m, g in held[i + 1:]:
                if d not in single and total - n - m < need:
                    risk += h * g
        return risk

    # -- choosing ---------------------------------------------------------------------------
    def choose(self, spot: bool, current: Sequence[Location], now: float) -> Location | None:
        self._advance(now)
        live: dict[Location, int] = {}
        for c in current:
            live[c] = live.get(c, 0) + 1
        self._live = live
        self._up &= set(live)
        self._ready = {c: min(n, live[c]) for c, n in self._ready.items() if c in live}
        if not spot:
            od = self._of(False)
            if not od:
                return None
            return self._cheapest([c for c in od if not self.book.is_blocked(c, now)] or od)
        spots = self._of(True)
        if not spots:
            return None
        if self._probing:
            # On-demand covers the target: a failed probe costs nothing, so blocks are
            # ignored; a zone is only skipped while parked or already holding a replica.
            used = {c.zone_id for c, n in live.items() if c.spot and n > 0}
            probe = [c for c in spots if c.zone_id not in used and self._probe_ok(c, now)]
            if probe:
                return min(probe, key=lambda c: (self.book.is_blocked(c, now),
                                                  self.book.record(c).blocked_until, c.price))
        pool = [c for c in spots if not self.book.is_blocked(c, now)]
        if self._lean_probe:
            # On-demand covers the whole target: blocks are ignored, but a location is not
            # tried again within ``probe_seconds`` of its last failed launch.
            pool = [c for c in spots if self._probe_ok(c, now)] or pool
        if not pool:
            # Everything blocked: the one whose block ends first.
            return min(spots, key=lambda c: (self.book.record(c).blocked_until, c.price))
        zones: dict[tuple[str, str, str | None], int] = {}
        regions: dict[tuple[str, str], int] = {}
        for c in current:
            zones[c.zone_id] = zones.get(c.zone_id, 0) + 1
            regions[(c.cloud, c.region)] = regions.get((c.cloud, c.region), 0) + 1
        if self._short > 0:
            self._short -= 1
            up = [c for c in pool if c in self._up]
            if up:
                pool = up
        counts = {c: n for c, n in live.items() if c.spot}
        total = max(self._planned, sum(counts.values()) + 1)

        def risk_key(c: Location) -> tuple[float, int, float, float, int]:
            after = dict(counts)
            after[c] = after.get(c, 0) + 1
            return (round(self.loss_risk(after, total, self._need, now), 6),
                    zones.get(c.zone_id, 0),
                    c.price * (1.0 + self.hazard(c, now)),
                    c.price * (1.0 + self.rate(c, now) * self.risk_hours),
                    regions.get((c.cloud, c.region), 0))

        return min(pool, key=risk_key)

    def fallback_counts(
        self, *, target: int, spot_wanted: int, ondemand_wanted: int, ready_spot: int,
        live_spot: int, dynamic: bool, base: int, now: float, starting_spot: int = 0,
        ready_ondemand: int = 0, ondemand_ahead: int = 0,
    ) -> tuple[int, int]:
        self._advance(now)
        requested = spot_wanted
        self._probing = False
        self._lean_probe = False
        # No spares asked for (num_overprovision 0): the service asked for nothing beyond
        # its target, so none is held (no backup copy, no young-zone insurance), and spot is
        # probed again under full on-demand cover instead of waiting out the blocks.
        lean = self.lean_without_spares and requested <= target - base
        # Urgent: the shortfall that no live spot replica (READY or on its way) replaces yet;
        # further launches (a spare, the backup copy) are placed by the loss risk.
        self._short = max(0, target - base - live_spot)
        if self._start is None:
            self._start = now
        if not self.spot_open(now):
            if lean and dynamic and ready_ondemand >= target and any(
                    self._probe_ok(c, now) for c in self._of(True)):
                self._lean_probe = True  # a failed probe costs nothing: on-demand serves
            else:
                # Every spot location is blocked: no new spot launch until a block ends.
                spot_wanted = min(spot_wanted, live_spot)
        self._need = max(0, target - base)
        # Spares enough for a second copy of the fleet: while zone losses are whole (or
        # nothing shows yet which), they are held as the backup copy after a preemption
        # (``spare_copy_seconds``), not through calm spells.
        self._copy_spares = (
            self.spare_copy_seconds is not None and self._need >= 2
            and requested - self._need >= self._need
            and (self.losses_whole() or self.no_batches()))
        if self._copy_spares:
            spot_wanted = min(spot_wanted, self._need)
        if spot_wanted > target - base and not self.spare_useful(now, spot_wanted - target + base):
            spot_wanted = max(0, target - base)
        backup = 0 if lean else self.backup(now)
        if backup:
            # The market is unstable: a second copy of the largest zone's share elsewhere
            # (more than SkyServe's count; the autoscaler clips it to the spot cap).
            spot_wanted = max(spot_wanted, self._need + backup)
        self._planned = spot_wanted
        if not dynamic:
            return spot_wanted, ondemand_wanted
        if self.pair_or_ondemand and self._need == 1 and requested > 1 \
                and len({c.zone_id for c in self._of(True)}) >= 2:
            paired = self._pair_or_ondemand(now, requested, ready_ondemand - base)
            if paired is not None:
                self._planned = paired
                return paired, base + 1
        # Cover only the shortfall below the target, not the overprovisioned spares ...
        need_spot = target - base
        short = need_spot - ready_spot
        full = short
        # ... less what spot replicas whose launch went through (STARTING: their machines
        # run) will close: they are READY no later than an on-demand replica launched now ...
        short -= starting_spot
        if self.hedge_value > 0 and need_spot > 0 and not lean:
            # ... and, where a location is risky enough that its loss is worth insuring, what
            # that loss would leave short (bought while hazard * value >= the cover's cost).
            for c, n in self._ready.items():
                if not c.spot or n <= 0:
                    continue
                m = need_spot - (ready_spot - min(n, ready_spot))
                if m > 0 and self.hazard(c, now) * self.hedge_value >= m / need_spot:
                    short = max(short, m)
        od = base + max(0, short)
        # ... and never release, while spot is short of the target, on-demand replicas that
        # are READY or will be READY before the STARTING spot replicas that would replace
        # them (launched before the newest of those).
        od = max(od, min(base + max(0, full), ready_ondemand + ondemand_ahead))
        return spot_wanted, min(od, target)
