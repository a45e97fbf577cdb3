"""Trace parity with SkyServe's recorded autoscaler traces, tick for tick.

Harness (the traces' synthetic load): tick k happens at t = 20 k s. Before each tick the load
balancer has recorded the arrivals of the interval (t - 20, t] at the phase's rate, spaced
evenly at the midpoints of 1/qps slots. The autoscaler collects them and decides.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lb_agent.control.autoscaler import (
    Decision,
    FallbackRequestRateAutoscaler,
    Operator,
    PolicyParams,
    ReplicaView,
    RequestRateAutoscaler,
    build_autoscaler,
)
from lb_agent.control.states import ReplicaState

TICK = 20.0


def batch(t: float, qps: float) -> list[float]:
    n = round(qps * TICK)
    return [t - TICK + (i + 0.5) * TICK / n for i in range(n)] if n else []


def run_trace(
    a: RequestRateAutoscaler, load: Callable[[float], list[float]], ticks: int
) -> list[tuple[int, int, int, int]]:
    """[(tick, t, old target, new target)] for every change, plus the decisions check."""
    changes = []
    for k in range(ticks):
        t = k * TICK
        a.collect(load(t), t)
        old = a.target
        live = [
            ReplicaView(str(i + 1), i + 1, ReplicaState.READY) for i in range(a.final_target)
        ]
        a.generate_decisions(live, t)
        if a.target != old:
            changes.append((k, int(t), old, a.target))
    return changes


def policy(**kw: object) -> PolicyParams:
    return PolicyParams.from_policy(kw)


def test_defaults_qps10_for_600s() -> None:
    a = build_autoscaler(policy(min_replicas=1, max_replicas=10, target_qps_per_replica=2))
    assert type(a) is RequestRateAutoscaler
    assert (a.scale_up_threshold, a.scale_down_threshold, a.target) == (15, 60, 1)
    assert a.decision_interval() == 20
    changes = run_trace(a, lambda t: batch(t, 10) if t < 600 else [], 120)
    assert changes == [(14, 280, 1, 5), (89, 1780, 5, 1)]


def test_delays_30_50_follow_ramp() -> None:
    a = build_autoscaler(
        policy(
            min_replicas=1,
            max_replicas=10,
            target_qps_per_replica=2,
            upscale_delay_seconds=30,
            downscale_delay_seconds=50,
        )
    )
    assert (a.scale_up_threshold, a.scale_down_threshold) == (1, 2)
    changes = run_trace(a, lambda t: batch(t, 10) if t < 200 else [], 30)
    assert changes == [(0, 0, 1, 2), (1, 20, 2, 4), (2, 40, 4, 5), (11, 220, 5, 2), (13, 260, 2, 1)]


def test_scale_from_zero() -> None:
    a = build_autoscaler(policy(min_replicas=0, max_replicas=3, target_qps_per_replica=1))
    assert a.target == 0
    assert a.decision_interval() == 5
    # Nothing running and no request: no decision, still the short interval.
    assert a.generate_decisions([], 0.0) == [] and a.decision_interval() == 5
    changes = run_trace(a, lambda t: [t] if t < 40 else [], 80)
    assert changes == [(0, 0, 0, 1), (64, 1280, 1, 0)]
    assert a.decision_interval() == 5


def test_scale_from_zero_emits_scale_up_on_first_request() -> None:
    a = build_autoscaler(policy(min_replicas=0, max_replicas=3, target_qps_per_replica=1))
    a.collect([0.0], 0.0)
    assert a.generate_decisions([], 0.0) == [Decision.up()]
    assert a.decision_interval() == 20


def test_overprovision_two() -> None:
    a = build_autoscaler(
        policy(min_replicas=1, max_replicas=5, target_qps_per_replica=2, num_overprovision=2)
    )
    assert a.final_target == 3
    # The initial final target (1 + 2) is launched at once.
    assert a.generate_decisions([], 0.0) == [Decision.up()] * 3
    a = build_autoscaler(
        policy(min_replicas=1, max_replicas=5, target_qps_per_replica=2, num_overprovision=2)
    )
    changes = run_trace(a, lambda t: batch(t, 3), 30)
    assert changes == [(16, 320, 1, 2)]
    assert a.final_target == 4


def _views(spec: str) -> list[ReplicaView]:
    out = []
    for item in spec.split():
        rid, kind, state = item.split(":")
        out.append(ReplicaView(rid, int(rid), ReplicaState[state], spot=kind == "spot"))
    return out


def _summary(decisions: list[Decision]) -> tuple[list[str], list[str]]:
    ups = ["spot" if d.spot else "od" for d in decisions if d.operator is Operator.SCALE_UP]
    downs = [str(d.replica_id) for d in decisions if d.operator is Operator.SCALE_DOWN]
    return ups, downs


FALLBACK_CASES = [
    ("dynamic, nothing running", dict(dynamic_ondemand_fallback=True), "",
     ["spot", "spot", "od", "od"], []),
    ("dynamic, all provisioning", dict(dynamic_ondemand_fallback=True),
     "1:spot:PROVISIONING 2:spot:PROVISIONING 3:od:PROVISIONING 4:od:PROVISIONING", [], []),
    ("dynamic, both spot ready", dict(dynamic_ondemand_fallback=True),
     "1:spot:READY 2:spot:READY 3:od:READY 4:od:STARTING", [], ["4", "3"]),
    ("dynamic, spot 1 preempted", dict(dynamic_ondemand_fallback=True),
     "1:spot:PREEMPTED 2:spot:READY", ["spot", "od"], []),
    ("base=1 static, nothing running", dict(base_ondemand_fallback_replicas=1), "",
     ["spot", "od"], []),
    ("base=1 + dynamic, 1 spot + 1 od ready",
     dict(base_ondemand_fallback_replicas=1, dynamic_ondemand_fallback=True),
     "1:spot:READY 2:od:READY", [], []),
    ("dynamic + overprovision 1", dict(dynamic_ondemand_fallback=True, num_overprovision=1), "",
     ["spot", "spot", "spot", "od", "od"], []),
]


@pytest.mark.parametrize(("name", "extra", "replicas", "ups", "downs"), FALLBACK_CASES,
                         ids=[c[0] for c in FALLBACK_CASES])
def test_fallback_scenarios(
    name: str, extra: dict[str, object], replicas: str, ups: list[str], downs: list[str]
) -> None:
    a = build_autoscaler(policy(min_replicas=2, max_replicas=4, target_qps_per_replica=1, **extra))
    assert isinstance(a, FallbackRequestRateAutoscaler)
    assert a.target == 2
    assert _summary(a.generate_decisions(_views(replicas), 0.0)) == (ups, downs)


# -- the expectations above are the reference file's; check they still agree with it ----------
import ast  # noqa: E402
import re  # noqa: E402

from external import AUTOSCALER_TRACES as TRACES  # noqa: E402
from external import needs_autoscaler_traces  # noqa: E402


def _reference() -> str:
    return TRACES.read_text()


@needs_autoscaler_traces
def test_expectations_match_reference_file() -> None:
    text = _reference()
    rr = text.split("## FallbackRequestRateAutoscaler")[0]
    sections = [s for s in rr.split("== ")[1:]]
    got = [
        [(int(k), int(t), int(a), int(b)) for k, t, a, b in re.findall(
            r"tick\s+(\d+) \(t=\s*(\d+)s\): target (\d+) -> (\d+)", s)]
        for s in sections
    ]
    assert got == [
        [(14, 280, 1, 5), (89, 1780, 5, 1)],
        [(0, 0, 1, 2), (1, 20, 2, 4), (2, 40, 4, 5), (11, 220, 5, 2), (13, 260, 2, 1)],
        [(0, 0, 0, 1), (64, 1280, 1, 0)],
        [(16, 320, 1, 2)],
    ]
    fb = text.split("## FallbackRequestRateAutoscaler")[1]
    results = re.findall(r"-> scale up (\[.*?\]); scale down (\[.*?\])", fb)
    parsed = [
        (ast.literal_eval(u), [str(x) for x in ast.literal_eval(d)]) for u, d in results
    ]
    assert parsed == [(c[3], c[4]) for c in FALLBACK_CASES]
