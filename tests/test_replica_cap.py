"""The program and the agent agree on how many replicas each group may have.

The agent's autoscaler may run up to ``max_replicas + num_overprovision`` (less the on-demand
base for spot) spot replicas, and on-demand cover up to ``max_replicas``. The program used to
clip the total to ``max_replicas`` and recompute spot from it, deleting spot replicas the agent
never drained. Both now use ``PolicyParams.group_caps``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from components.parser import load_service
from components.service import plan_fleet, replica_groups, with_stack_policy
from components.stack_config import StackSettings
from lb_agent.control.autoscaler import PolicyParams, build_autoscaler
from lb_agent.control.fleet import Fleet, Generation


def _task(tmp_path: Path, policy: str, spot: bool):  # type: ignore[no-untyped-def]
    path = tmp_path / "svc.yaml"
    path.write_text(
        "service:\n  readiness_probe: /\n  replica_policy:\n"
        + "".join(f"    {line}\n" for line in policy.strip().splitlines())
        + f"resources:\n  ports: 8080\n  cpus: 2\n  use_spot: {str(spot).lower()}\n"
        + "run: python3 -m http.server 8080\n")
    return load_service(path)


#: Policies with a one-decision upscale delay, so one tick reaches the target.
POLICIES = [
    "min_replicas: 1\nmax_replicas: 2\ntarget_qps_per_replica: 1\nnum_overprovision: 1\n"
    "upscale_delay_seconds: 20",
    "min_replicas: 1\nmax_replicas: 3\ntarget_qps_per_replica: 1\n"
    "base_ondemand_fallback_replicas: 1\nnum_overprovision: 2\nupscale_delay_seconds: 20",
    "min_replicas: 2\nmax_replicas: 4\ntarget_qps_per_replica: 1\n"
    "dynamic_ondemand_fallback: true\nupscale_delay_seconds: 20",
]
#: (policy, spot): on-demand fallback needs spot (SkyServe refuses it otherwise).
CASES = [(POLICIES[0], False), *((p, True) for p in POLICIES)]


@pytest.mark.parametrize(("policy", "spot"), CASES)
def test_program_plans_every_count_the_agent_may_write(tmp_path: Path, policy: str,
                                                       spot: bool) -> None:
    task = _task(tmp_path, policy, spot)
    params = PolicyParams.from_policy(task.service.replica_policy.to_json())
    caps = params.group_caps(uses_spot=spot)
    spot_range = range(caps["spot"] + 1) if spot else range(1)
    for n_spot, n_od in itertools.product(spot_range, range(caps["ondemand"] + 1)):
        if n_spot + n_od < params.min_replicas:
            continue  # the agent never asks for fewer than min_replicas
        # The agent writes the counts as the fleet; the program renders exactly them.
        settings = StackSettings(service="svc.yaml", cloud="aws")
        written = Fleet((Generation(1, "d", n_spot, n_od),))
        fleet, current = plan_fleet(task, task.candidates[0], settings, written, "d")
        groups = {g.group: g.count for g in replica_groups(fleet, current, spot)}
        assert groups.get("spot", 0) == n_spot and groups["ondemand"] == n_od, (
            n_spot, n_od, groups)
        # So does a first deploy asked for the same counts in skyform:replicas, up to
        # SkyServe's cap (above it the setting is clipped: only the agent's own backup copy
        # of a spot zone goes beyond).
        if n_spot + n_od > params.max_replicas + params.num_overprovision:
            continue
        first = StackSettings(service="svc.yaml", cloud="aws", replicas=n_spot + n_od,
                              on_demand_replicas=n_od if spot else None)
        fleet, current = plan_fleet(task, task.candidates[0], first, None, "d")
        groups = {g.group: g.count for g in replica_groups(fleet, current, spot)}
        assert groups.get("spot", 0) == n_spot and groups["ondemand"] == n_od


@pytest.mark.parametrize("policy", POLICIES)
def test_autoscaler_never_asks_beyond_the_caps(tmp_path: Path, policy: str) -> None:
    """A huge load against an empty service: the ups the fallback autoscaler asks for stay
    within the caps the program clips to (and reach them)."""
    task = _task(tmp_path, policy, True)
    params = PolicyParams.from_policy(task.service.replica_policy.to_json())
    scaler = build_autoscaler(params)
    decisions = []
    for tick in range(3):  # the first tick leaves min_replicas, the next ones scale up
        scaler.collect([tick * 20 + i / 1000 for i in range(10_000)], now=tick * 20.0 + 10)
        decisions = scaler.generate_decisions([], now=tick * 20.0 + 10)
    # Without fallback the ups carry no override: the deployer places them on spot.
    spot_ups = sum(1 for d in decisions if d.spot is not False)
    od_ups = sum(1 for d in decisions if d.spot is False)
    caps = params.group_caps(uses_spot=True)
    # SkyServe's own count reaches its #3255 cap; the spot cap above it is room for a
    # placement policy's backup copy (test_placement covers the hook being clipped to it).
    skyserve_cap = (params.max_replicas + params.num_overprovision
                    - params.base_ondemand_fallback_replicas)
    assert spot_ups == skyserve_cap <= caps["spot"]
    assert caps["spot"] == max(skyserve_cap,
                               2 * (params.max_replicas - params.base_ondemand_fallback_replicas))
    assert od_ups <= caps["ondemand"]


def test_stack_overrides_reach_the_agent_policy(tmp_path: Path) -> None:
    task = _task(tmp_path, POLICIES[0], True)
    settings = StackSettings(service="svc.yaml", cloud="aws", min_replicas=2, max_replicas=5)
    policy = with_stack_policy(task, settings).service.replica_policy
    assert (policy.min_replicas, policy.max_replicas) == (2, 5)
    assert with_stack_policy(task, StackSettings(service="s", cloud="aws")) is task
