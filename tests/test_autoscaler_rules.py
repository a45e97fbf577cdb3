"""SkyServe autoscaler rules not pinned by the reference traces (worked out from SkyPilot's
``sky/serve/autoscalers.py``), each with the exact decisions SkyServe's code makes."""

from __future__ import annotations

import pytest

from lb_agent.control.autoscaler import (
    Decision,
    PolicyParams,
    ReplicaView,
    build_autoscaler,
)
from lb_agent.control.states import ReplicaState as S


def policy(**kw: object) -> PolicyParams:
    return PolicyParams.from_policy(kw)


def test_update_with_stale_version_changes_nothing() -> None:
    # SkyServe's update_version: `version <= latest_version` is logged and ignored.
    a = build_autoscaler(policy(min_replicas=1, max_replicas=5, target_qps_per_replica=1))
    a.update_policy(policy(min_replicas=2, max_replicas=5, target_qps_per_replica=1), 2)
    assert (a.state.latest_version, a.target, a.params.min_replicas) == (2, 2, 2)
    a.state.upscale_counter = 3
    a.update_policy(policy(min_replicas=4, max_replicas=6, target_qps_per_replica=1), 2)
    a.update_policy(policy(min_replicas=4, max_replicas=6, target_qps_per_replica=1), 1)
    assert (a.state.latest_version, a.target, a.params.min_replicas) == (2, 2, 2)
    assert a.state.upscale_counter == 3
    # Version-2 replicas are kept: no decision.
    live = [ReplicaView(str(i), i, S.READY, version=2) for i in (1, 2)]
    assert a.generate_decisions(live, 0.0) == []
    # A newer version is adopted: new bounds, target recomputed at once, counters reset.
    a.update_policy(policy(min_replicas=4, max_replicas=6, target_qps_per_replica=1), 3)
    assert (a.state.latest_version, a.target, a.state.upscale_counter) == (3, 4, 0)
    assert a.generate_decisions(live, 0.0) == [Decision.up()] * 4


def test_fallback_with_accelerator_mapping_is_refused_up_front() -> None:
    # SkyServe picks FallbackRequestRateAutoscaler, whose target computation raises on a
    # mapping at every tick, so nothing is ever launched. Say so once, at start.
    with pytest.raises(ValueError, match=r"on-demand fallback .* cannot be combined"):
        build_autoscaler(policy(min_replicas=1, max_replicas=3, dynamic_ondemand_fallback=True,
                                target_qps_per_replica={"A100": 5}))
    plain = build_autoscaler(policy(min_replicas=1, max_replicas=3, target_qps_per_replica=2))
    with pytest.raises(ValueError, match="does not support dict target_qps_per_replica"):
        plain.update_policy(policy(min_replicas=1, max_replicas=3,
                                   target_qps_per_replica={"A100": 5}), 2)
    assert plain.state.latest_version == 1 and plain.params.target_qps_per_replica == 2
    aware = build_autoscaler(policy(min_replicas=1, max_replicas=3,
                                    target_qps_per_replica={"A100": 5}))
    with pytest.raises(ValueError, match="needs target_qps_per_replica as a mapping"):
        aware.update_policy(policy(min_replicas=1, max_replicas=3, target_qps_per_replica=2))


def test_fixed_size_service_runs_the_hysteresis_with_raw_min() -> None:
    # SkyServe runs _set_target_num_replicas_with_hysteresis for fixed services too, with
    # raw = min_replicas: counters reset every tick, and a target of 0 adopts min at once.
    a = build_autoscaler(policy(min_replicas=2))
    a.state.upscale_counter, a.state.downscale_counter = 4, 0
    assert a.generate_decisions([ReplicaView(str(i), i, S.READY) for i in (1, 2)], 0.0) == []
    assert (a.state.upscale_counter, a.state.downscale_counter) == (0, 0)
    a.state.target = 0  # e.g. restored from a state written under another policy
    assert a.generate_decisions([], 20.0) == [Decision.up()] * 2
    assert a.target == 2
    b = build_autoscaler(policy(min_replicas=1, max_replicas=1, downscale_delay_seconds=40))
    b.state.target = 3
    b.generate_decisions([], 0.0)
    assert (b.target, b.state.downscale_counter) == (3, 1)
    b.generate_decisions([], 20.0)
    assert (b.target, b.state.downscale_counter) == (1, 0)


def test_fallback_base_above_final_target_keeps_spot_at_zero() -> None:
    # Deliberate (docs/differences.md#autoscaler-fallback-base): SkyServe's spot scale-down
    # asserts when spot_wanted = final - base < 0, so that tick makes no decision at all.
    a = build_autoscaler(policy(min_replicas=1, max_replicas=3, target_qps_per_replica=1,
                                base_ondemand_fallback_replicas=2))
    assert a.target == 1
    assert a.generate_decisions([], 0.0) == [Decision.up({"use_spot": False})]
    fleet = [ReplicaView("1", 1, S.READY, spot=True), ReplicaView("2", 2, S.READY)]
    assert a.generate_decisions(fleet, 20.0) == [Decision.down("1")]


def test_instance_aware_scale_down_ranks_status_before_capacity() -> None:
    # Deliberate (docs/differences.md#autoscaler-instance-aware-order): SkyServe's sort key
    # holds the whole status-order list, so it would remove the READY L4 (lowest capacity)
    # and keep the A100 that is still provisioning.
    a = build_autoscaler(policy(min_replicas=1, max_replicas=3,
                                target_qps_per_replica={"A100": 10, "L4": 2}))
    a.state.target = 2
    a.collect([i / 11 for i in range(660)], 60.0)  # 11 qps: the READY A100 + L4 (12) fit it
    fleet = [ReplicaView("1", 1, S.READY, accelerator="A100"),
             ReplicaView("2", 2, S.READY, accelerator="L4"),
             ReplicaView("3", 3, S.PROVISIONING, accelerator="A100")]
    assert a.generate_decisions(fleet, 60.0) == [Decision.down("3")]
    assert a.target == 2


def test_update_that_needs_another_class_is_refused() -> None:
    # SkyServe swaps in a new autoscaler object when the class changes; one object cannot.
    a = build_autoscaler(policy(min_replicas=1, max_replicas=3, target_qps_per_replica=2))
    with pytest.raises(ValueError, match="needs FallbackRequestRateAutoscaler"):
        a.update_policy(policy(min_replicas=1, max_replicas=3, target_qps_per_replica=2,
                               dynamic_ondemand_fallback=True), 2)
    assert a.state.latest_version == 1 and not a.params.use_ondemand_fallback
