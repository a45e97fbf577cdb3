"""Autoscaler behaviour beyond the reference traces: persistence, instance-aware, guards."""

from __future__ import annotations

import array
import json

from lb_agent.control.autoscaler import (
    Decision,
    InstanceAwareRequestRateAutoscaler,
    PolicyParams,
    ReplicaView,
    Tuning,
    build_autoscaler,
    select_scale_down,
)
from lb_agent.control.states import ReplicaState as S


def ready(n: int, **kw: object) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", i, S.READY, **kw) for i in range(1, n + 1)]  # type: ignore[arg-type]


def test_state_round_trips_through_json_without_churn() -> None:
    pol = PolicyParams.from_policy(
        {"min_replicas": 1, "max_replicas": 5, "target_qps_per_replica": 1,
         "upscale_delay_seconds": 60, "downscale_delay_seconds": 60}
    )
    a = build_autoscaler(pol)
    # 3 qps for a while: target goes to 3 after 3 ticks.
    for k in range(5):
        t = 20.0 * k
        a.collect([t - 20 + i / 3 for i in range(60)], t)
        a.generate_decisions(ready(a.final_target), t)
    assert a.target == 3
    a.state.downscale_counter = 2
    a.state.latest_version = 4
    blob = json.loads(json.dumps(a.dump_state()))
    b = build_autoscaler(pol)
    assert b.load_state(blob)
    assert (b.target, b.state.downscale_counter, b.state.latest_version) == (3, 2, 4)
    assert abs(b.qps() - a.qps()) < 1e-9
    # The restored autoscaler keeps the version-4 replicas: no scale-up or scale-down.
    live = [ReplicaView(f"r{i}", i, S.READY, version=4) for i in range(1, 4)]
    b.collect([], 80.0)
    assert b.generate_decisions(live, 80.0) == []
    # A fresh one (SkyServe #8562) would see version-4 replicas as outdated and churn.
    c = build_autoscaler(pol)
    assert c.generate_decisions(live, 80.0) != []


def test_restore_with_changed_policy_reclips_target() -> None:
    pol = PolicyParams.from_policy({"min_replicas": 1, "max_replicas": 5,
                                    "target_qps_per_replica": 1})
    a = build_autoscaler(pol)
    a.state.target = 5
    new = PolicyParams.from_policy({"min_replicas": 1, "max_replicas": 2,
                                    "target_qps_per_replica": 1})
    b = build_autoscaler(new)
    assert b.load_state(a.dump_state())
    assert b.target == 1  # recomputed from QPS (0) like an update, clipped to the new bounds
    assert not b.load_state({"format": 99})


def test_collect_skips_already_seen_and_prunes_window() -> None:
    a = build_autoscaler(PolicyParams.from_policy({"target_qps_per_replica": 1}),
                         Tuning(qps_window_seconds=10))
    a.collect([1.0, 2.0, 3.0], 3.0)
    a.collect([1.0, 2.0, 3.0, 4.0], 4.0)  # the window overlaps the previous read
    assert list(a.state.request_timestamps) == [1.0, 2.0, 3.0, 4.0]
    a.collect([], 12.5)
    assert list(a.state.request_timestamps) == [3.0, 4.0]


def test_never_exceeds_max_even_when_target_is_corrupt() -> None:
    a = build_autoscaler(PolicyParams.from_policy({"min_replicas": 1, "max_replicas": 3}))
    a.state.target = 10  # e.g. a bad restore
    assert a.generate_decisions([], 0.0) == [Decision.up()] * 3


def test_fixed_size_service_stays_at_min() -> None:
    a = build_autoscaler(PolicyParams.from_policy({"min_replicas": 2}))
    a.collect([float(i) / 100 for i in range(6000)], 60.0)
    assert a.generate_decisions(ready(2), 60.0) == []
    assert a.target == 2


def test_fail_fast_guard_until_ever_ready() -> None:
    a = build_autoscaler(PolicyParams.from_policy({"min_replicas": 2}))
    failed = [ReplicaView("1", 1, S.FAILED), ReplicaView("2", 2, S.STARTING)]
    assert a.generate_decisions(failed, 0.0) == []
    ok = [ReplicaView("1", 1, S.FAILED), ReplicaView("2", 2, S.READY)]
    assert a.generate_decisions(ok, 1.0) == [Decision.up()]
    # Once the version was READY, a later failure is replaced rather than freezing scaling.
    again = [ReplicaView("1", 1, S.FAILED), ReplicaView("2", 2, S.FAILED_PROBING)]
    assert a.generate_decisions(again, 2.0) == [Decision.up()] * 2


def test_scale_down_order_status_version_newest() -> None:
    views = [
        ReplicaView("a", 1, S.READY), ReplicaView("b", 2, S.READY),
        ReplicaView("c", 3, S.STARTING), ReplicaView("d", 4, S.READY, version=0),
        ReplicaView("e", 5, S.PENDING),
    ]
    assert select_scale_down(5, views) == ["e", "c", "d", "b", "a"]


def test_instance_aware_capacity_and_downscale_preference() -> None:
    pol = PolicyParams.from_policy({
        "min_replicas": 1, "max_replicas": 10,
        "target_qps_per_replica": {"A100:1": 10, "L4": 2},
        "upscale_delay_seconds": 0, "downscale_delay_seconds": 0,
    })
    a = build_autoscaler(pol, Tuning(qps_window_seconds=10))
    assert isinstance(a, InstanceAwareRequestRateAutoscaler)
    assert a.capacity_of("A100") == 10 and a.capacity_of("L4") == 2
    assert a.capacity_of("T4") == 2  # unknown: the minimum
    reps = [ReplicaView("1", 1, S.READY, accelerator="A100"),
            ReplicaView("2", 2, S.READY, accelerator="L4")]
    # 25 qps > capacity 12: 2 replicas + ceil(13 / 10) = 4
    a.collect([i / 25 for i in range(250)], 10.0)
    assert a.raw_target(reps) == 4
    # 9 qps < 12: the A100 alone (10 > 9) suffices -> 1; scale-down picks the L4 one.
    a.state.request_timestamps = array.array("d", [i / 9 for i in range(90)])
    a.state.target = 2
    assert a.raw_target(reps) == 1
    assert a.generate_decisions(reps, 10.0) == [Decision.down("2")]


def test_fail_fast_remembers_ready_between_decisions() -> None:
    a = build_autoscaler(PolicyParams.from_policy({"min_replicas": 1}))
    # Ready once (between two decisions), then crashed: a replacement is launched.
    crashed = [ReplicaView("1", 1, S.FAILED, ready_once=True)]
    assert a.generate_decisions(crashed, 0.0) == [Decision.up()]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_STATES = [S.PENDING, S.PROVISIONING, S.STARTING, S.READY, S.NOT_READY, S.SHUTTING_DOWN,
           S.PREEMPTED, S.FAILED_PROBING]


@settings(max_examples=200, deadline=None)
@given(
    min_r=st.integers(0, 3), extra=st.integers(0, 4), over=st.integers(0, 2),
    base=st.integers(0, 2), dynamic=st.booleans(), target_qps=st.floats(0.5, 5),
    loads=st.lists(st.integers(0, 400), min_size=1, max_size=30),
    fleet=st.lists(st.tuples(st.sampled_from(_STATES), st.booleans()), max_size=12),
)
def test_never_exceeds_cap_and_target_stays_clipped(
    min_r: int, extra: int, over: int, base: int, dynamic: bool, target_qps: float,
    loads: list[int], fleet: list[tuple[S, bool]],
) -> None:
    max_r = min_r + extra
    pol = PolicyParams.from_policy({
        "min_replicas": min_r, "max_replicas": max_r, "target_qps_per_replica": target_qps,
        "num_overprovision": over, "base_ondemand_fallback_replicas": min(base, max_r),
        "dynamic_ondemand_fallback": dynamic, "upscale_delay_seconds": 20,
        "downscale_delay_seconds": 40,
    })
    a = build_autoscaler(pol)
    views = [ReplicaView(str(i), i, s, spot=sp) for i, (s, sp) in enumerate(fleet, 1)]
    for k, n in enumerate(loads):
        t = 20.0 * k
        a.collect([t - 20 + (i + 0.5) * 20 / n for i in range(n)], t)
        decisions = a.generate_decisions(views, t)
        assert min_r <= a.target <= max_r
        live = [v for v in views if not v.is_terminal]
        downs = {d.replica_id for d in decisions if d.operator.value == "scale_down"}
        assert downs <= {v.replica_id for v in live}, "only live replicas are scaled down"
        ups = [d for d in decisions if d.operator.value == "scale_up"]
        after = len(live) - len(downs) + len(ups)
        if not a.params.use_ondemand_fallback:
            assert len(ups) == 0 or after <= max_r + over
        else:
            spot_after = sum(1 for v in live if v.spot and v.replica_id not in downs) + sum(
                1 for d in ups if d.spot)
            od_ups = sum(1 for d in ups if d.spot is False)
            assert len(ups) == 0 or spot_after <= max_r + over
            assert od_ups == 0 or od_ups + sum(
                1 for v in live if not v.spot and v.replica_id not in downs) <= max(
                a.target, pol.base_ondemand_fallback_replicas)
