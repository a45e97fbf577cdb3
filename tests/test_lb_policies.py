"""Load-balancing policies: least_load, round_robin, instance-aware, power of two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lb_agent.dataplane.policies import Policy, build_policy, policy_names
from lb_agent.dataplane.policies.instance_aware import capacity_for
from lb_agent.dataplane.target import Target


def _targets(*loads: int, accs: Sequence[str | None] = ()) -> list[Target]:
    out = []
    for i, load in enumerate(loads):
        t = Target(f"r{i}", f"http://10.0.0.{i}:8080", accs[i] if accs else None)
        t.in_flight = load
        out.append(t)
    return out


def test_builtin_policies_register_by_name() -> None:
    assert {"least_load", "round_robin", "instance_aware_least_load", "power_of_two"} <= set(
        policy_names())


def test_a_new_policy_is_one_class() -> None:
    class Last(Policy):
        name = "test_last"

        def select(self, candidates: Sequence[Target]) -> Target | None:
            return candidates[-1] if candidates else None

    ts = _targets(0, 0)
    assert build_policy("test_last").select(ts) is ts[1]


def test_least_load_picks_minimum_and_breaks_ties_without_bias() -> None:
    p = build_policy("least_load")
    ts = _targets(3, 1, 2)
    assert all(p.select(ts) is ts[1] for _ in range(50))
    ts = _targets(1, 0, 0, 0)
    picks = Counter(p.select(ts).replica_id for _ in range(3000))  # type: ignore[union-attr]
    assert set(picks) == {"r1", "r2", "r3"}
    assert min(picks.values()) > 800  # ~1000 each; SkyServe would always pick r1
    assert p.select([]) is None


def test_round_robin_cycles_and_reshuffles_on_change() -> None:
    p = build_policy("round_robin")
    ts = _targets(0, 0, 0)
    p.on_targets_changed(ts)
    first = [p.select(ts).replica_id for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(first[:3]) == ["r0", "r1", "r2"] and first[:3] == first[3:]
    # An excluded replica (retry) is skipped, not waited for.
    assert p.select(ts[:1]) is ts[0]
    ts4 = _targets(0, 0, 0, 0)
    p.on_targets_changed(ts4)
    assert sorted(p.select(ts4).replica_id for _ in range(4)) == ["r0", "r1", "r2", "r3"]  # type: ignore[union-attr]


def test_power_of_two_prefers_less_loaded() -> None:
    p = build_policy("power_of_two")
    ts = _targets(5, 0)
    assert all(p.select(ts) is ts[1] for _ in range(50))
    ts = _targets(9, 9, 0, 9)
    picks = Counter(p.select(ts).replica_id for _ in range(2000))  # type: ignore[union-attr]
    # r2 wins whenever it is sampled: P = 1 - C(3,2)/C(4,2) = 0.5
    assert 850 < picks["r2"] < 1150


def test_instance_aware_capacity_lookup() -> None:
    table = {"A100": 4.0, "L4:1": 1.0, "H100": 0.0}
    assert capacity_for("A100", table) == 4.0  # exact
    assert capacity_for("a100:8", table) == 4.0  # base name
    assert capacity_for("L4", table) == 1.0  # base name of the key
    assert capacity_for("T4", table) == 1.0  # fallback, as SkyServe's balancer
    assert capacity_for("H100", table) == 1.0  # non-positive counts as 1
    assert capacity_for(None, 3.0) == 3.0


def test_instance_aware_weights_in_flight_by_capacity() -> None:
    p = build_policy("instance_aware_least_load",
                     target_qps_per_replica={"A100": 4.0, "L4": 1.0})
    ts = _targets(3, 1, accs=["A100", "L4"])  # 3/4 < 1/1
    assert p.select(ts) is ts[0]
    ts = _targets(5, 1, accs=["A100", "L4"])  # 5/4 > 1/1
    assert p.select(ts) is ts[1]
