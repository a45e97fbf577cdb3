"""Placement: locations, the location book, SpotHedge's choices and the skyform policy."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from lb_agent.control.autoscaler import (
    FallbackRequestRateAutoscaler,
    Operator,
    PolicyParams,
    ReplicaView,
    build_autoscaler,
    launched_before,
)
from lb_agent.control.placement import build_placer
from lb_agent.control.placement.baselines import SpotHedgePlacer
from lb_agent.control.placement.locations import Location, LocationBook, LocationState
from lb_agent.control.placement.skyform import SkyformPlacer
from lb_agent.control.states import ReplicaState


def spot(zone: str, price: float = 0.3, region: str | None = None) -> Location:
    return Location("aws", region or zone[:-1], zone, "A10G:1", True, price)


def od(zone: str, price: float = 1.0) -> Location:
    return Location("aws", zone[:-1], zone, "A10G:1", False, price)


# -- Location -------------------------------------------------------------------------------
def test_location_identity_ignores_price_and_round_trips() -> None:
    a = spot("us-east-1a", 0.3)
    assert a == spot("us-east-1a", 0.9)
    assert hash(a) == hash(spot("us-east-1a", 0.9))
    assert a != od("us-east-1a")
    assert Location.from_json(a.to_json()) == a
    assert Location.from_json(a.to_json()).price == 0.3
    assert sorted([spot("us-west-2b"), spot("us-east-1c"), spot("us-east-1a")])[0] == a
    no_zone = Location("gcp", "us-central1", None, "L4:1", True)
    assert sorted([no_zone, Location("gcp", "us-central1", "us-central1-a", "L4:1", True)])[0] \
        == no_zone


def test_location_key_is_short_stable_and_dns_safe() -> None:
    assert spot("us-east-1a").key == "aws-us-east-1a-a10g-1-s"
    assert od("us-east-1a").key == "aws-us-east-1a-a10g-1-od"
    assert Location("gcp", "us-central1", None, "p3.2xlarge", True).key == \
        "gcp-us-central1-p3-2xlarge-s"


def test_location_from_json_names_the_missing_field() -> None:
    with pytest.raises(ValueError, match="missing field 'candidate'"):
        Location.from_json({"cloud": "aws", "region": "us-east-1", "spot": True})


# -- LocationBook ---------------------------------------------------------------------------
def test_book_blocks_exponentially_and_ready_lifts_the_block() -> None:
    a = spot("us-east-1a")
    book = LocationBook([a], block_base_seconds=100, block_max_seconds=350)
    book.launched(a, 0)
    book.launch_failed(a, 0, "capacity")
    assert book.state(a, 99) is LocationState.BLOCKED
    assert book.state(a, 100) is LocationState.PREEMPTED
    book.launch_failed(a, 100, "capacity")  # second strike: 200 s
    assert book.is_blocked(a, 299) and not book.is_blocked(a, 300)
    book.launch_failed(a, 300, "capacity")  # third: 400 s, capped at 350
    assert book.is_blocked(a, 649) and not book.is_blocked(a, 650)
    book.ready(a, 400)
    assert book.state(a, 400) is LocationState.ACTIVE
    [entry] = book.status(400)
    assert entry["key"] == a.key
    assert entry["state"] == "active" and entry["blocked_until"] is None
    assert entry["counts"] == {"launches": 1, "ready": 1, "failures": 3, "preemptions": 0}
    assert entry["last_failure_kind"] == "capacity"


def test_book_status_reports_blocked_until() -> None:
    a, b = spot("us-east-1a"), spot("us-east-1b")
    book = LocationBook([a, b], block_base_seconds=60, block_max_seconds=60)
    book.launch_failed(a, 10, "quota")
    book.preempted(b, 10)
    by_key = {e["key"]: e for e in book.status(20)}
    assert by_key[a.key]["state"] == "blocked" and by_key[a.key]["blocked_until"] == 70
    assert by_key[b.key]["state"] == "preempted" and by_key[b.key]["counts"]["preemptions"] == 1


# -- SpotHedge (SkyServe's dynamic_fallback) ------------------------------------------------
def hedge() -> tuple[SpotHedgePlacer, Location, Location, Location]:
    a, b, c = spot("us-east-1a", 0.30), spot("us-east-1b", 0.20), spot("us-east-1c", 0.25)
    p = build_placer("spothedge", [a, b, c, od("us-east-1a"), od("us-east-1b", 0.9)])
    assert isinstance(p, SpotHedgePlacer)
    return p, a, b, c


def test_spothedge_cheapest_active_location_not_in_use() -> None:
    p, a, b, c = hedge()
    assert p.choose(True, [], 0) == b
    assert p.choose(True, [b], 0) == c
    assert p.choose(True, [b, c], 0) == a
    # Every active location in use: the cheapest active one.
    assert p.choose(True, [a, b, c], 0) == b


def test_spothedge_skips_preempted_and_failed_locations() -> None:
    p, _a, b, c = hedge()
    p.preempted(b, 0)
    assert p.choose(True, [], 1) == c
    p.ready(b, 2)  # a successful launch marks it active again
    assert p.choose(True, [], 3) == b


def test_spothedge_resets_when_fewer_than_two_locations_stay_active() -> None:
    p, _a, b, c = hedge()
    p.launch_failed(b, 0, "capacity")
    assert p.choose(True, [], 0) == c
    p.preempted(c, 1)  # only a would stay active: every location is active again
    assert p.choose(True, [], 1) == b
    assert all(e["state"] == "active" for e in p.status(1))


def test_spothedge_on_demand_goes_to_the_cheapest_on_demand_location() -> None:
    p, *_ = hedge()
    assert p.choose(False, [], 0) == od("us-east-1b")


def test_single_zone_keeps_the_first_candidate() -> None:
    a, b = spot("us-east-1a"), spot("us-east-1b", 0.1)
    p = build_placer("single-zone", [a, b, od("us-east-1a")])
    p.preempted(a, 0)
    assert p.choose(True, [a], 1) == a
    assert p.choose(False, [], 1) == od("us-east-1a")


def test_build_placer_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="valid: skyform, spothedge, single-zone"):
        build_placer("nope", [spot("us-east-1a")])


# -- skyform --------------------------------------------------------------------------------
def sky(*locs: Location, **options: float) -> SkyformPlacer:
    p = build_placer("skyform", list(locs), random.Random(0), **options)
    assert isinstance(p, SkyformPlacer)
    return p


def test_skyform_does_not_choose_a_blocked_location_until_its_block_ends() -> None:
    a, b = spot("us-east-1a", 0.2), spot("us-east-1b", 0.3)
    p = sky(a, b, block_base_seconds=300, block_max_seconds=1200)
    assert p.choose(True, [], 0) == a  # cheaper
    p.launched(a, 0)
    p.launch_failed(a, 180, "capacity")
    for t in (180, 300, 479):
        assert p.choose(True, [], t) == b
    assert p.choose(True, [], 480) == a
    p.launch_failed(a, 660, "capacity")  # second strike doubles the block
    assert p.choose(True, [], 1259) == b
    assert p.choose(True, [], 1260) == a


def test_skyform_replacement_goes_elsewhere_after_a_preemption() -> None:
    a, b, c = spot("us-east-1a", 0.2), spot("us-east-1b", 0.3), spot("us-west-2a", 0.3)
    p = sky(a, b, c)
    for loc in (a, b):
        p.launched(loc, 0)
        p.ready(loc, 300)
    p.preempted(a, 1000)
    assert p.choose(True, [b], 1000) == c
    # Later the cheap location is tried again, but it is now known to be less reliable.
    assert p.rate(a, 5000) > p.rate(c, 5000)


def test_skyform_spreads_over_zones_then_regions() -> None:
    e1a, e1b, w2a = spot("us-east-1a"), spot("us-east-1b"), spot("us-west-2a")
    p = sky(e1a, e1b, w2a)
    first = p.choose(True, [], 0)
    second = p.choose(True, [first], 0)
    third = p.choose(True, [first, second], 0)
    assert {first, second, third} == {e1a, e1b, w2a}
    assert first.region != second.region  # the second replica goes to the other region


def test_skyform_learns_which_location_holds() -> None:
    a, b = spot("us-east-1a"), spot("us-east-1b")
    p = sky(a, b)
    for loc in (a, b):
        p.launched(loc, 0)
    p.choose(True, [a, b], 0)
    for t in (3600, 7200, 10800):
        p.preempted(a, t)
        p.launched(a, t)
    assert p.rate(a, 20000) > p.rate(b, 20000)
    assert p.choose(True, [], 20000) == b  # equal price: the one that held


def test_skyform_urgent_replacement_goes_where_capacity_is_known() -> None:
    a, b, c = spot("us-east-1a"), spot("us-east-1b"), spot("us-west-2a")
    p = sky(a, b, c)
    p.launched(a, 0)
    p.ready(a, 300)
    # Short of READY spot: the replacement goes to the known-up location.
    p.fallback_counts(target=2, spot_wanted=2, ondemand_wanted=0, ready_spot=1, live_spot=1,
                      dynamic=True, base=0, now=400)
    assert p.choose(True, [a], 400) == a
    # Not short: spread.
    p.fallback_counts(target=1, spot_wanted=2, ondemand_wanted=0, ready_spot=1, live_spot=1,
                      dynamic=True, base=0, now=400)
    assert p.choose(True, [a], 400) != a


def test_skyform_launches_no_spot_while_every_spot_location_is_blocked() -> None:
    a, b = spot("us-east-1a"), spot("us-east-1b")
    p = sky(a, b, block_base_seconds=300)
    p.launch_failed(a, 0, "capacity")
    p.launch_failed(b, 0, "capacity")
    p.choose(True, [a], 0)  # the one live spot replica (a spare elsewhere would cover it)
    assert p.fallback_counts(target=2, spot_wanted=3, ondemand_wanted=3, ready_spot=0,
                             live_spot=1, dynamic=True, base=0, now=10) == (1, 2)
    assert p.fallback_counts(target=2, spot_wanted=3, ondemand_wanted=3, ready_spot=0,
                             live_spot=1, dynamic=True, base=0, now=300) == (3, 2)


def test_skyform_without_spares_holds_nothing_beyond_the_target() -> None:
    """A service that asks for no spares (num_overprovision 0) gets no backup copy (with
    on-demand fallback or without) and no young-zone cover; the same fleet with a spare asked
    for gets both."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    for spares in (0, 1):
        p = sky(a, b, c, backup_seconds=3600, hedge_value=10.0)
        whole_losses(p, c, 0)  # preemptions at 600: unstable until 4200, losses whole
        p.launch_failed(a, 600, "capacity")  # a had no capacity at 600: young at 1000
        for _ in range(2):
            p.launched(a, 700)
            p.ready(a, 1000)
        p.choose(True, [a, a], 1000)
        spot_wanted, ondemand = p.fallback_counts(
            target=2, spot_wanted=2 + spares, ondemand_wanted=0, ready_spot=2, live_spot=2,
            dynamic=True, base=0, now=1000)
        assert (spot_wanted, ondemand) == ((2, 0) if spares == 0 else (4, 2))
        # Without on-demand fallback too: no backup copy for a service with no spares.
        spot_wanted, _ = p.fallback_counts(
            target=2, spot_wanted=2 + spares, ondemand_wanted=0, ready_spot=2, live_spot=2,
            dynamic=False, base=0, now=1000)
        assert spot_wanted == (2 if spares == 0 else 4)


def test_skyform_without_spares_probes_spot_under_full_on_demand_cover() -> None:
    """Every spot location is blocked and on-demand serves the whole target: a service
    with no spares probes spot again (a failed probe costs nothing), skipping a location
    whose launch failed under ``probe_seconds`` ago, and a failed probe is dropped, not
    placed again. Before on-demand is READY, or with a spare asked for, the blocks hold."""
    a, b = spot("us-east-1a"), spot("us-west-2a")
    p = sky(a, b, block_base_seconds=1200, probe_seconds=180)
    p.launch_failed(a, 0, "capacity")
    p.launch_failed(b, 100, "capacity")  # both blocked past 1200
    p.choose(True, [], 150)
    blocked = dict(target=2, ondemand_wanted=2, ready_spot=0, live_spot=0, dynamic=True,
                   base=0)
    assert p.fallback_counts(spot_wanted=2, ready_ondemand=1, now=200, **blocked) == (0, 2)
    assert p.fallback_counts(spot_wanted=3, ready_ondemand=2, now=200, **blocked) == (0, 2)
    assert p.fallback_counts(spot_wanted=2, ready_ondemand=2, now=200, **blocked) == (2, 2)
    assert p.choose(True, [], 200) == a  # b failed 100 s ago
    assert not p.place_again(a, 200)
    assert p.fallback_counts(spot_wanted=2, ready_ondemand=2, now=280, **blocked) == (2, 2)
    assert p.choose(True, [], 280) in (a, b)  # both failed at least 180 s ago
    assert p.book.is_blocked(a, 280) and p.book.is_blocked(b, 280)
    p.launch_failed(a, 290, "capacity")
    p.launch_failed(b, 290, "capacity")
    assert p.fallback_counts(spot_wanted=2, ready_ondemand=2, now=300, **blocked) == (0, 2)


def views(spot_ready: int, spot_prov: int, od_ready: int) -> list[ReplicaView]:
    out, seq = [], 0
    for n, state, is_spot in ((spot_ready, ReplicaState.READY, True),
                              (spot_prov, ReplicaState.PROVISIONING, True),
                              (od_ready, ReplicaState.READY, False)):
        for _ in range(n):
            seq += 1
            out.append(ReplicaView(f"r{seq}", seq, state, spot=is_spot))
    return out


def test_skyform_releases_on_demand_once_target_spot_is_ready() -> None:
    """4 spot READY, the spare provisioning, 1 on-demand READY: SkyServe keeps the on-demand
    replica until the spare is READY too; skyform releases it at once."""
    params = PolicyParams(min_replicas=4, max_replicas=4, num_overprovision=1,
                          dynamic_ondemand_fallback=True)
    replicas = views(spot_ready=4, spot_prov=1, od_ready=1)
    skyserve = build_autoscaler(params)
    assert skyserve.generate_decisions(replicas) == []
    scaler = build_autoscaler(params)
    assert isinstance(scaler, FallbackRequestRateAutoscaler)
    # SkyServe's spare (the spare rules are tested below; this placer sees no fleet).
    scaler.counts_hook = sky(spot("us-east-1a"), od("us-east-1a"),
                             spare_prior_whole=False).fallback_counts
    [decision] = scaler.generate_decisions(replicas)
    assert decision.operator is Operator.SCALE_DOWN and decision.replica_id == "r6"
    # Short of the target: on-demand covers exactly the shortfall.
    ups = scaler.generate_decisions(views(spot_ready=2, spot_prov=3, od_ready=0))
    assert [d.spot for d in ups] == [False, False]


def fallback_scaler_of_four() -> FallbackRequestRateAutoscaler:
    """SkyServe's fallback autoscaler at a target of four, no spares, with the skyform
    placer's counts (one spot and one on-demand location)."""
    params = PolicyParams(min_replicas=4, max_replicas=4, num_overprovision=0,
                          dynamic_ondemand_fallback=True)
    scaler = build_autoscaler(params)
    assert isinstance(scaler, FallbackRequestRateAutoscaler)
    scaler.counts_hook = sky(spot("us-east-1a"), od("us-east-1a")).fallback_counts
    return scaler


def test_skyform_on_demand_does_not_wait_with_spot_replicas_that_are_starting() -> None:
    """Spot replicas whose launch went through (STARTING: their machines run) are READY no
    later than an on-demand replica launched now: on-demand covers only the shortfall they
    do not close, and a READY on-demand replica stays until spot is READY."""
    p = sky(spot("us-east-1a"), od("us-east-1a"))
    short = dict(target=4, spot_wanted=4, ondemand_wanted=4, ready_spot=0, live_spot=4,
                 dynamic=True, base=0, now=100.0)
    assert p.fallback_counts(**short)[1] == 4
    assert p.fallback_counts(**short, starting_spot=3)[1] == 1
    assert p.fallback_counts(**short, starting_spot=4)[1] == 0
    assert p.fallback_counts(**short, starting_spot=4, ready_ondemand=2)[1] == 2
    # Through the autoscaler: four spot STARTING, four on-demand still provisioning.
    scaler = fallback_scaler_of_four()
    replicas = [ReplicaView(f"s{i}", i, ReplicaState.STARTING, spot=True) for i in range(4)]
    replicas += [ReplicaView(f"o{i}", 4 + i, ReplicaState.PROVISIONING, spot=False)
                 for i in range(4)]
    downs = scaler.generate_decisions(replicas)
    assert sorted(d.replica_id or "" for d in downs) == ["o0", "o1", "o2", "o3"]
    assert all(d.operator is Operator.SCALE_DOWN for d in downs)
    # SkyServe's counts keep them (only READY spot counts there).
    skyserve = build_autoscaler(scaler.params)
    assert skyserve.generate_decisions(replicas) == []


def test_skyform_keeps_on_demand_that_is_ready_before_the_starting_spot() -> None:
    """On-demand launched before the STARTING spot replicas is READY before them: it is
    not released for them (a spot replica preempted before READY would leave the service
    waiting for a new on-demand launch), only on-demand launched after them is."""
    p = sky(spot("us-east-1a"), od("us-east-1a"))
    short = dict(target=4, spot_wanted=4, ondemand_wanted=4, ready_spot=0, live_spot=4,
                 dynamic=True, base=0, now=100.0, starting_spot=4)
    assert p.fallback_counts(**short)[1] == 0
    assert p.fallback_counts(**short, ondemand_ahead=3)[1] == 3
    assert p.fallback_counts(**short, ondemand_ahead=3, ready_ondemand=1)[1] == 4
    # Through the autoscaler: on-demand o0-o2 launched first (the spot zones were blocked),
    # spot s3-s6 launched after them and now STARTING; o7 launched after the spot.
    scaler = fallback_scaler_of_four()
    replicas = [ReplicaView(f"o{i}", i, ReplicaState.PROVISIONING, spot=False)
                for i in range(3)]
    replicas += [ReplicaView(f"s{i}", i, ReplicaState.STARTING, spot=True) for i in range(3, 7)]
    replicas += [ReplicaView("o7", 7, ReplicaState.PROVISIONING, spot=False)]
    downs = scaler.generate_decisions(replicas)
    assert [(d.operator, d.replica_id) for d in downs] == [(Operator.SCALE_DOWN, "o7")]
    # The Pulumi deployer numbers on-demand replicas from 1001: their launch times order them.
    timed = [ReplicaView(f"ondemand-{i}", 1001 + i, ReplicaState.PROVISIONING, spot=False,
                         launched_at=100.0) for i in range(3)]
    timed += [ReplicaView(f"spot-{i}", 1 + i, ReplicaState.STARTING, spot=True,
                          launched_at=400.0) for i in range(4)]
    timed += [ReplicaView("ondemand-3", 1004, ReplicaState.PROVISIONING, spot=False,
                          launched_at=500.0)]
    downs = fallback_scaler_of_four().generate_decisions(timed)
    assert [(d.operator, d.replica_id) for d in downs] == [(Operator.SCALE_DOWN, "ondemand-3")]
    assert launched_before(timed[:3] + timed[-1:], timed[3:7]) == 3
    # Without every launch time, seq decides (here: none of the on-demand is ahead).
    assert launched_before([*timed[:3], replace(timed[-1], launched_at=None)],
                           timed[3:7]) == 0


def test_book_strikes_stop_counting_at_the_block_cap() -> None:
    a = spot("us-east-1a")
    book = LocationBook([a], block_base_seconds=100, block_max_seconds=350)
    for t in range(10):
        book.launch_failed(a, t * 1000, "capacity")
    # 100, 200, 400 > 350: the third strike already reaches the cap.
    assert book.max_strikes == 3 and book.record(a).strikes == 3


def test_skyform_flapping_location_keeps_long_blocks() -> None:
    """A READY replica lifts the block but forgives one strike only: a location that failed
    twice, came up and was preempted at once is blocked longer than one that held."""
    flap, held = spot("us-east-1a"), spot("us-east-1b")
    p = sky(flap, held, block_base_seconds=300, block_max_seconds=2400,
            preemption_block_seconds=300)
    p.launch_failed(flap, 0, "capacity")  # strike 1: blocked until 300
    p.launch_failed(flap, 300, "capacity")  # strike 2: until 900
    for loc in (flap, held):
        p.launched(loc, 900)
        p.ready(loc, 1200)
    assert not p.book.is_blocked(flap, 1200)  # READY lifts the block
    assert p.book.record(flap).strikes == 1 and p.book.record(held).strikes == 0
    p.preempted(flap, 1300)  # strike 2 again: 600 s
    p.preempted(held, 1300)  # its first strike: 300 s
    assert not p.book.is_blocked(held, 1600)
    assert p.book.is_blocked(flap, 1899) and not p.book.is_blocked(flap, 1900)
    assert p.book.status(1700)[0]["blocked_until"] == 1900


def test_skyform_holds_no_spare_that_would_share_the_only_zone() -> None:
    """A spare guards against losing a zone it is not in. With every live spot replica in
    one zone and the other zones blocked, the spot count drops to the target (SkyServe's
    spare otherwise: no loss has shown whether losses are whole)."""
    a, b = spot("us-east-1a"), spot("us-east-1b")
    p = sky(a, b, block_base_seconds=300, spare_prior_whole=False)
    counts = dict(target=2, spot_wanted=3, ondemand_wanted=0, ready_spot=2, live_spot=3,
                  dynamic=True, base=0)
    p.choose(True, [a, a, a], 0)
    p.launch_failed(b, 0, "capacity")  # b blocked until 300
    assert p.fallback_counts(**counts, now=100) == (2, 0)
    assert p.fallback_counts(**counts, now=300) == (3, 0)  # b open again: the spare can go
    p.choose(True, [a, a, b], 400)
    p.book.launch_failed(b, 400, "capacity")  # another launch into b failed: b is blocked,
    assert p.book.is_blocked(b, 500)  # but the fleet already spans two zones
    assert p.fallback_counts(**counts, now=500) == (3, 0)
    # Only the spare is dropped: the base and the target stay.
    p.choose(True, [a, a], 600)
    assert p.fallback_counts(target=2, spot_wanted=2, ondemand_wanted=0, ready_spot=2,
                             live_spot=2, dynamic=True, base=0, now=650) == (2, 0)


# -- skyform: loss risk, spares, hedges ------------------------------------------------------
def counts(target: int, spot_wanted: int, ready_spot: int, live_spot: int,
           now: float) -> dict[str, object]:
    return dict(target=target, spot_wanted=spot_wanted, ondemand_wanted=0,
                ready_spot=ready_spot, live_spot=live_spot, dynamic=True, base=0, now=now)


def whole_losses(p: SkyformPlacer, loc: Location, t: float) -> None:
    """Two replicas at ``loc`` go READY, then both are preempted at once (a whole loss)."""
    for _ in range(2):
        p.launched(loc, t)
    for _ in range(2):
        p.ready(loc, t + 300)
    for _ in range(2):
        p.preempted(loc, t + 600)


def partial_loss(p: SkyformPlacer, loc: Location, t: float) -> None:
    """Three replicas launched at ``loc`` and one of them preempted ``t + 600`` (capacity
    shrank by one: a partial loss)."""
    for _ in range(3):
        p.launched(loc, t)
    p.preempted(loc, t + 600)


def test_skyform_learns_whether_a_zone_loss_takes_every_replica_there() -> None:
    a, b = spot("us-east-1a"), spot("us-west-2a")
    p = sky(a, b)
    assert not p.losses_whole()  # nothing seen: a spare beside the others may still help
    whole_losses(p, a, 0)
    p.fallback_counts(**counts(4, 5, 0, 0, 700))  # a later instant closes the batch
    assert p.losses_whole()
    # Three held, one lost (capacity shrank by one): losses are partial after all.
    q = sky(a, b)
    partial_loss(q, a, 0)
    q.fallback_counts(**counts(4, 5, 0, 0, 700))
    assert not q.losses_whole()


def test_skyform_drops_a_spare_that_covers_no_zone_and_takes_it_back_when_it_does() -> None:
    """Four replicas in one zone go down together: a fifth beside them or elsewhere saves
    nothing once zone losses are known to be whole, so the spare is not held. When the fleet
    spans zones again (a replica elsewhere), the spare covers that zone and is launched."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c, backup_seconds=0)  # the spare rule alone (the backup is tested below)
    whole_losses(p, c, 0)
    p.choose(True, [a, a, a, a], 5000)
    assert p.fallback_counts(**counts(4, 5, 4, 4, 5000)) == (4, 0)
    p.choose(True, [a, a, a, a, b], 5100)
    assert p.fallback_counts(**counts(4, 5, 4, 5, 5100)) == (4, 0)  # b covers only itself
    p.released(b, 5160)
    assert p.fallback_counts(**counts(4, 5, 4, 4, 5160)) == (4, 0)
    p.choose(True, [a, a, a, b], 6000)  # one of a's went; its replacement is in b
    assert p.fallback_counts(**counts(4, 5, 4, 4, 6000)) == (5, 0)  # the spare covers b
    p.choose(True, [a, a, a, b, c], 6000)
    assert p.fallback_counts(**counts(4, 5, 4, 5, 6000)) == (5, 0)
    # With evidence of partial losses, the same stacked fleet keeps its spare.
    q = sky(a, b, c, backup_seconds=0)
    partial_loss(q, b, 0)  # one of three: capacity shrank by one
    q.choose(True, [a, a, a, a], 5000)
    assert not q.losses_whole()
    assert q.fallback_counts(**counts(4, 5, 4, 4, 5000)) == (5, 0)


def test_skyform_holds_a_spare_before_any_loss_only_where_it_covers_a_whole_zone() -> None:
    """Before any loss shows whether zone losses are whole or partial, a spare is held only
    where it would cover a whole zone's loss: not beside four replicas stacked in one zone
    (SkyServe's spare there saves nothing when the zone goes), but at a target of one (the
    spare elsewhere covers the one replica's zone). The first partial loss brings the spare
    back; ``spare_prior_whole=False`` keeps SkyServe's spare from the start."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c, backup_seconds=0)
    p.choose(True, [a, a, a, a], 0)
    assert not p.losses_whole()  # nothing seen yet
    assert p.fallback_counts(**counts(4, 5, 4, 4, 0)) == (4, 0)
    one = sky(a, b, c, backup_seconds=0)
    one.choose(True, [a], 0)
    assert one.fallback_counts(**counts(1, 2, 1, 1, 0))[0] == 2  # (on-demand: the pair rule)
    # A partial loss (one of three at b): the spare beside the stack is SkyServe's again.
    partial_loss(p, b, 100)
    p.choose(True, [a, a, a, a], 800)
    assert p.fallback_counts(**counts(4, 5, 4, 4, 800)) == (5, 0)
    old = sky(a, b, c, backup_seconds=0, spare_prior_whole=False)
    old.choose(True, [a, a, a, a], 0)
    assert old.fallback_counts(**counts(4, 5, 4, 4, 0)) == (5, 0)


def test_skyform_remembers_that_losses_are_whole_through_a_calm_spell() -> None:
    """Whether a zone loss takes every replica there is a trait of the market, read from the
    ratio of whole to partial losses: a calm spell (the evidence fading with its 24 h
    half-life) does not bring back a spare that four stacked replicas cannot use. A partial
    loss seen since outweighs the old whole one."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c, backup_seconds=0)
    whole_losses(p, c, 0)
    p.fallback_counts(**counts(4, 5, 0, 0, 700))  # a later instant closes the batch
    day5 = 5 * 86400.0
    p.choose(True, [a, a, a, a], day5)
    assert p.losses_whole()
    assert p.fallback_counts(**counts(4, 5, 4, 4, day5)) == (4, 0)
    partial_loss(p, b, day5)  # one of three: capacity shrank by one
    p.choose(True, [a, a, a, a, b, b], day5 + 700)
    assert not p.losses_whole()


def test_skyform_capacity_that_held_longer_is_preferred() -> None:
    """A zone whose capacity left recently tends to leave again: with equal prices and no
    block, the next replica goes to the zone that has held longest."""
    e1a, e2a, w2a = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(e1a, e2a, w2a, block_base_seconds=60, preemption_block_seconds=60)
    p.launched(e1a, 0)
    p.preempted(e1a, 3600)
    p.launched(e2a, 0)
    p.preempted(e2a, 7200)
    assert p.hazard(e2a, 8000) > p.hazard(e1a, 8000) > p.hazard(w2a, 8000)
    assert p.choose(True, [], 8000) == w2a
    assert p.choose(True, [w2a], 8000) == e1a  # spread first, then the older of the rest


def test_skyform_a_loss_in_a_sibling_zone_makes_the_region_young() -> None:
    """Zones of one region often lose capacity together: a preemption in us-east-1a makes
    us-east-1b as young as 1a for the choice, while us-west-2a keeps its age."""
    e1a, e1b, w2a = spot("us-east-1a"), spot("us-east-1b"), spot("us-west-2a")
    p = sky(e1a, e1b, w2a, block_base_seconds=60, preemption_block_seconds=60)
    p.launched(w2a, 0)
    p.preempted(w2a, 1000)
    p.launched(e1a, 0)
    p.preempted(e1a, 5000)
    assert p.age(e1b, 6000) == p.age(e1a, 6000) == 1000 < p.age(w2a, 6000)
    assert p.choose(True, [], 6000) == w2a
    plain = sky(e1a, e1b, w2a, block_base_seconds=60, preemption_block_seconds=60,
                sibling_offset_seconds=None)
    plain.launched(e1a, 0)
    plain.preempted(e1a, 5000)
    assert plain.age(e1b, 6000) > plain.age(e1a, 6000)


def test_skyform_loss_risk_counts_zones_whose_loss_leaves_too_few() -> None:
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c)
    ha, hb, hc = (p.hazard(x, 0) for x in (a, b, c))
    # 4 needed of 5: a zone holding two is a single point of failure, pairs of ones are not
    # harmless (two zones lost at once leave three).
    assert p.loss_risk({a: 2, b: 2, c: 1}, 5, 4, 0) == pytest.approx(ha + hb)
    assert p.loss_risk({a: 3, b: 1, c: 1}, 5, 4, 0) == pytest.approx(ha + hb * hc)
    assert p.loss_risk({a: 1, b: 1, c: 1}, 3, 1, 0) == 0.0


def test_skyform_insures_a_young_zone_whose_loss_would_leave_the_service_short() -> None:
    """Both READY replicas in a zone whose capacity came back minutes ago: losing it would
    leave the service with none, and such capacity often leaves again, so on-demand covers
    the target until the zone has held for a while. An old zone gets no such cover. (The
    service asks for no spares here; with ``lean_without_spares`` it would get no cover,
    test_skyform_without_spares_holds_nothing_beyond_the_target.)"""
    a, b = spot("us-east-1a"), spot("us-west-2a")
    for value in (10.0, 0.0):
        p = sky(a, b, hedge_value=value, lean_without_spares=False)
        p.fallback_counts(**counts(2, 2, 0, 0, 0))
        for _ in range(2):
            p.launched(a, 0)
            p.ready(a, 300)
        p.choose(True, [a, a], 300)
        assert p.fallback_counts(**counts(2, 2, 2, 2, 400)) == (2, 0)  # a has no history
        p.launched(b, 0)
        p.preempted(b, 1000)  # b's capacity left at 1000 and came back
        for _ in range(2):
            p.launched(b, 1100)
            p.ready(b, 1400)
        p.choose(True, [b, b], 1400)
        assert p.fallback_counts(**counts(2, 2, 2, 2, 1500)) == (2, 2 if value else 0)
        assert p.fallback_counts(**counts(2, 2, 2, 2, 2300)) == (2, 0)  # it has held


def test_skyform_holds_a_backup_copy_elsewhere_while_spot_is_unstable() -> None:
    """Zone losses are whole and four replicas sit in one zone: for ``backup_seconds`` after
    a preemption anywhere, four more spot replicas are asked for, and they go to another
    zone, so that losing either zone leaves four READY. Once the market has been calm that
    long, the count drops back to the target."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c, backup_seconds=3600)
    whole_losses(p, c, 0)  # preemptions at 600: unstable until 4200
    p.choose(True, [a, a, a, a], 1000)
    assert p.fallback_counts(**counts(4, 5, 4, 4, 1000)) == (8, 0)
    # Where the backup goes: not beside the four in a, but together in one other zone.
    live = [a, a, a, a]
    for _ in range(4):
        loc = p.choose(True, live, 1000)
        assert loc is not None and loc != a
        p.launched(loc, 1000)
        live.append(loc)
    assert len(set(live[4:])) == 1
    assert p.fallback_counts(**counts(4, 5, 4, 8, 1100)) == (8, 0)
    # Calm again: back to the target (the spare covers no zone of four).
    assert p.fallback_counts(**counts(4, 5, 8, 8, 4200)) == (4, 0)
    # A later preemption makes it unstable again.
    p.preempted(live[-1], 5000)
    p.choose(True, live[:-1], 5000)
    assert p.fallback_counts(**counts(4, 5, 7, 7, 5000)) == (8, 0)


def test_skyform_backup_needs_whole_losses_and_an_open_zone_elsewhere() -> None:
    a, b = spot("us-east-1a"), spot("us-west-2a")
    # Partial losses (one of three taken): a spare beside the others helps, no backup.
    p = sky(a, b, backup_seconds=3600)
    partial_loss(p, a, 0)
    p.choose(True, [a, a], 700)
    assert not p.losses_whole()
    assert p.fallback_counts(**counts(2, 3, 2, 2, 700)) == (3, 0)
    # Whole losses, but the only other zone is blocked: a backup there cannot be launched.
    q = sky(a, b, backup_seconds=3600, block_base_seconds=1200, block_max_seconds=1200)
    whole_losses(q, a, 0)
    q.launched(b, 0)
    q.launch_failed(b, 650, "capacity")  # b blocked until 1850
    q.choose(True, [a, a], 700)
    assert q.fallback_counts(**counts(2, 3, 2, 2, 700)) == (2, 0)
    # The block ended and the market is still unstable: two more, for b.
    assert q.fallback_counts(**counts(2, 3, 2, 2, 1900)) == (4, 0)
    assert q.choose(True, [a, a], 1900) == b
    # Without a preemption the market is calm: capacity errors alone add no backup.
    r = sky(a, b, backup_seconds=3600)
    whole = sky(a, b, backup_seconds=3600)
    whole_losses(whole, b, -10_000)  # whole losses learnt long ago: calm now
    for x in (r, whole):
        x.launched(b, 0)
        x.launch_failed(b, 100, "capacity")
        x.choose(True, [a, a], 700)
        x.fallback_counts(**counts(2, 3, 2, 2, 700))
        assert not x.unstable(700) and x.backup(700) == 0


def test_skyform_backup_needs_a_zone_in_another_region_or_slow_replacements() -> None:
    """Zones of one region tend to lose capacity together: when every spot zone of the
    menu is in the fleet's region, no backup copy is held; one zone in another region is
    enough for it. A copy in a sibling zone comes back once replacements are seen to take
    ``sibling_copy_seconds`` or more (the median launch-to-READY time): each loss it saves
    is that long."""
    a, b, c = spot("us-east-1a"), spot("us-east-1b"), spot("us-east-1c")
    for menu, took, copy in (((a, b, c), 300, 0), ((a, b, spot("us-west-2a")), 300, 2),
                             ((a, b, c), 450, 2), ((a, b, c), None, 0)):
        p = sky(*menu, backup_seconds=3600)
        assert p.replacement_seconds() is None
        whole_losses(p, menu[2], 0)  # unstable until 4200, losses whole
        if took is not None:
            for t in (100, 200):
                p.ready(c, t + took, launched_at=t)
            p.ready(c, 1000, launched_at=1000 - 5 * took)  # one slow outlier
            assert p.replacement_seconds() == took
        p.choose(True, [a, a], 700)
        assert p.fallback_counts(**counts(2, 3, 2, 2, 700)) == (2 + copy, 0)
        assert p.backup(700) == copy
    never = sky(a, b, c, backup_seconds=3600, sibling_copy_seconds=None)
    whole_losses(never, c, 0)
    never.ready(c, 9000, launched_at=0)
    never.choose(True, [a, a], 700)
    assert never.backup(700) == 0


def test_skyform_holds_spares_enough_for_a_copy_only_after_a_preemption() -> None:
    """Two spares at a target of two could hold a second copy of the fleet. SkyServe holds
    them all the time. skyform, while zone losses are whole or nothing shows yet which, holds
    them only as the backup copy, for ``spare_copy_seconds`` after a spot preemption (the
    ordinary copy's ``backup_seconds`` at one spare). Partial losses bring SkyServe's spares
    back, and so does the option off."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c, backup_seconds=3600, spare_copy_seconds=36000)
    p.choose(True, [a, a], 0)
    assert p.fallback_counts(**counts(2, 4, 2, 2, 0)) == (2, 0)  # calm: no spares yet
    off = sky(a, b, c, backup_seconds=3600, spare_copy_seconds=None)
    off.choose(True, [a, a], 0)
    assert off.fallback_counts(**counts(2, 4, 2, 2, 0)) == (4, 0)  # SkyServe's count
    whole_losses(p, c, 0)  # preemptions at 600: whole
    p.choose(True, [a, a], 1000)
    assert p.fallback_counts(**counts(2, 4, 2, 2, 1000)) == (4, 0)  # the copy, in another zone
    assert p.choose(True, [a, a], 1000) != a
    # Past the ordinary copy's window, still held; one spare would have dropped it by now.
    assert p.fallback_counts(**counts(2, 4, 2, 4, 30_000)) == (4, 0)
    assert p.fallback_counts(**counts(2, 3, 2, 2, 30_000)) == (2, 0)
    assert p.fallback_counts(**counts(2, 4, 2, 4, 36_599)) == (4, 0)
    assert p.fallback_counts(**counts(2, 4, 4, 4, 36_600)) == (2, 0)  # calm again
    # A partial loss (one of three): SkyServe's spares protect against the next one.
    q = sky(a, b, c, backup_seconds=3600, spare_copy_seconds=36000)
    partial_loss(q, b, 0)
    q.choose(True, [a, a], 50_000)
    assert not q.losses_whole()
    assert q.fallback_counts(**counts(2, 4, 2, 2, 50_000)) == (4, 0)


def test_skyform_only_the_unreplaced_shortfall_is_urgent() -> None:
    """Short of READY spot, a replacement goes where capacity is known to be. Once live
    replicas replace the whole shortfall, further launches (here the backup copy) are not
    urgent: they are placed by the loss risk, in another zone, not beside the fleet."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c, backup_seconds=3600, lean_without_spares=False)
    whole_losses(p, c, 0)  # preemptions at 600: unstable until 4200
    p.launched(a, 700)
    p.ready(a, 1000)  # a is known to be up
    p.launched(a, 1000)  # the replacement of the second replica, provisioning
    p.choose(True, [a, a], 1000)
    spot_wanted, _ = p.fallback_counts(**counts(2, 2, 1, 2, 1000))
    assert spot_wanted == 4  # the backup copy of a's two
    loc = p.choose(True, [a, a], 1000)
    assert loc is not None and loc != a


def test_autoscaler_clips_a_backup_to_the_spot_cap() -> None:
    """The placer may ask for more spot than SkyServe's count (a backup copy): the
    autoscaler launches it up to the spot cap, never beyond; SpotHedge's counts stay
    SkyServe's."""
    params = PolicyParams(min_replicas=4, max_replicas=4, num_overprovision=1,
                          dynamic_ondemand_fallback=True)
    assert params.group_caps(uses_spot=True)["spot"] == 8
    for asked, launched in ((8, 4), (12, 4)):
        scaler = build_autoscaler(params)
        assert isinstance(scaler, FallbackRequestRateAutoscaler)

        def hook(*, asked: int = asked, **kw: object) -> tuple[int, int]:
            return asked, 0

        scaler.counts_hook = hook
        ups = scaler.generate_decisions(views(spot_ready=4, spot_prov=0, od_ready=0))
        assert [d.spot for d in ups] == [True] * launched
    hedge = build_autoscaler(params)
    assert isinstance(hedge, FallbackRequestRateAutoscaler)
    hedge.counts_hook = SpotHedgePlacer([spot("us-east-1a"), od("us-east-1a")],
                                        random.Random(0)).fallback_counts
    ups = hedge.generate_decisions(views(spot_ready=4, spot_prov=0, od_ready=0))
    # SkyServe's spare and the on-demand cover for it while it provisions, nothing more.
    assert [d.spot for d in ups] == [True, False]


def test_skyform_at_a_target_of_one_holds_a_pair_of_zones_or_on_demand_alone() -> None:
    """A target of one: a lone spot replica is covered by on-demand until a second zone
    holds a READY spare. Once the cover is READY and no other zone is open to pair with,
    the lone replica is released and its zone parked (on-demand alone is cheaper than
    on-demand insuring it); probes then ignore blocks (a failed probe costs nothing while
    on-demand serves) but not the parked zone, nor a zone that failed under 180 s ago. A
    probe that comes up makes the parked zone its partner, and once two zones hold READY
    spot the on-demand replica goes."""
    a, b, c = spot("us-east-1a"), spot("us-east-2a"), spot("us-west-2a")
    p = sky(a, b, c)

    def decide(ready_spot: int, live_spot: int, ready_ondemand: int,
               now: float) -> tuple[int, int]:
        return p.fallback_counts(target=1, spot_wanted=2, ondemand_wanted=0,
                                 ready_spot=ready_spot, live_spot=live_spot, dynamic=True,
                                 base=0, now=now, ready_ondemand=ready_ondemand)

    p.launched(a, 0)
    p.ready(a, 300)
    p.choose(True, [a], 300)
    assert decide(1, 1, 0, 300) == (2, 1)  # the spare is sought, on-demand covers
    for z in (b, c):
        p.launched(z, 300)
        p.launch_failed(z, 480, "capacity")  # no capacity in b or c: both blocked
    p.choose(True, [a], 600)
    assert p.book.is_blocked(b, 600) and p.book.is_blocked(c, 600)
    assert decide(1, 1, 1, 600) == (0, 1)  # the cover is READY: a goes, on-demand stays
    p.released(a, 600)
    shown = {e["key"]: e for e in p.status(660)}
    assert shown[a.key]["state"] == "parked" and shown[a.key]["parked_until"] == 4200
    assert shown[b.key]["state"] == "blocked" and shown[b.key]["parked_until"] is None
    assert decide(0, 0, 1, 620) == (0, 1)  # b and c failed 140 s ago: not tried again yet
    assert decide(0, 0, 1, 660) == (1, 1)  # 180 s on: one probe at a time
    probe = p.choose(True, [], 660)
    assert probe in (b, c)  # blocked zones are probed; parked a is not
    p.launched(b, 660)
    p.ready(b, 960)  # b has capacity again
    p.choose(True, [b], 960)
    assert decide(1, 1, 1, 960) == (2, 1)  # a pair is possible: the parked zone is back
    assert p.choose(True, [b], 960) == a
    assert {e["key"]: e["state"] for e in p.status(960)}[a.key] == "parked"  # but a partner
    p.launched(a, 960)
    p.ready(a, 1260)
    p.choose(True, [a, b], 1260)
    assert decide(2, 2, 1, 1260) == (2, 0)  # paired: the on-demand replica goes
    assert {e["key"]: e["state"] for e in p.status(1260)}[a.key] == "active"
    # The rule is a skyform option; without it a lone READY replica is not covered.
    q = sky(a, b, c, pair_or_ondemand=False)
    q.launched(a, 0)
    q.ready(a, 300)
    q.choose(True, [a], 300)
    assert q.fallback_counts(target=1, spot_wanted=2, ondemand_wanted=0, ready_spot=1,
                             live_spot=1, dynamic=True, base=0, now=300) == (2, 0)
    # A base on-demand replica is not the cover: with one base replica READY and a lone
    # spot replica, the cover is still on its way and the spot replica is kept.
    r = sky(a, b, c)
    r.launched(a, 0)
    r.ready(a, 300)
    r.choose(True, [a], 300)
    for z in (b, c):
        r.launched(z, 300)
        r.launch_failed(z, 480, "capacity")
    assert r.fallback_counts(target=2, spot_wanted=2, ondemand_wanted=1, ready_spot=1,
                             live_spot=1, dynamic=True, base=1, now=600,
                             ready_ondemand=1) == (1, 2)  # no spare: b, c just failed
    assert r.fallback_counts(target=2, spot_wanted=2, ondemand_wanted=1, ready_spot=1,
                             live_spot=1, dynamic=True, base=1, now=600,
                             ready_ondemand=2) == (0, 2)
