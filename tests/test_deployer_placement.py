"""Placement through the real PulumiDeployer: each scale-up is placed, an ``up`` that fails
with a provider's capacity/quota error moves the replicas it added there to another location
(the other groups' counts untouched, no backoff wait), a preempted spot replica's index is
skipped and its replacement placed elsewhere, and a Kubernetes replica that never registers
counts as a failed launch.

The stack double (tests/test_deployer_pulumi.py) raises CommandErrors built the way the
Automation API builds them, with the engine output the providers produce.
"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pulumi.automation as auto
import pytest
from agent_helpers import Replica, agent_config, auth, running_agent
from pulumi.automation.errors import create_command_error
from test_deployer_pulumi import StackDouble, until

from lb_agent.config import AgentConfig
from lb_agent.control.deployers import pulumi as pulumi_deployer
from lb_agent.control.deployers.pulumi import PulumiDeployer
from lb_agent.control.fleet import Site, parse_fleet
from lb_agent.control.placement.skyform import SkyformPlacer
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState
from lb_agent.control.store import StateStore

PREFIX = "urn:pulumi:dev::skyform::skyform:index:SkyService$skyform:aws:ReplicaGroup::service-"
URNS = [f"{PREFIX}spot", f"{PREFIX}ondemand"]


def site(zone: str, cloud: str = "aws", price: float = 0.4) -> Site:
    region = "" if cloud == "kubernetes" else zone[:-1].rstrip("-")
    return Site(cloud, region, zone, 0, "A10G", "g5.xlarge", price)


def menu(cloud: str, zones: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The agent config's ``locations`` (spot in every zone, cheapest first, and on-demand)
    and ``home`` (the first zone), as components/locations.py writes them."""
    entries = []
    for spot, price in ((True, 0.4), (False, 1.0)):
        for i, zone in enumerate(zones):
            s = site(zone, cloud, price + i / 100)
            entries.append({**s.to_json(), "spot": spot, "key": s.key})
    return entries, site(zones[0], cloud, 0.4).to_json()


def make(double: StackDouble, cloud: str = "aws", zones: list[str] | None = None,
         **kw: Any) -> tuple[PulumiDeployer, Registry]:
    zones = zones or ["us-east-1a", "us-east-1b", "us-east-1c"]
    locations, home = menu(cloud, zones)
    reg = Registry(StateStore(":memory:"))
    kw.setdefault("initial_counts", {"spot": 0, "ondemand": 0})
    dep = PulumiDeployer(
        reg, stack_factory=lambda: double, stack_name="dev", service_port=8080,
        spot_default=True, rng=random.Random(1), cloud=cloud, locations=locations,
        home=home, **kw)
    return dep, reg


def engine_failure(resource: str, message: str, token: str = "aws:ec2:Instance"
                   ) -> auto.CommandError:
    """A failed `pulumi up` as the CLI reports it: the resource, then the provider's error."""
    stdout = (f"Updating (dev):\n +  {token} {resource} creating (0s) \n"
              f" +  {token} {resource} creating failed error: {message}\n"
              f"Diagnostics:\n  {token} ({resource}):\n    error: {message}\n\n"
              "Resources:\n    + 1 created\n    1 errored\n")
    return create_command_error(auto.CommandResult(
        stdout=stdout, code=255, stderr="error: update failed\n"))


AWS_CAPACITY = (
    "1 error occurred:\n\t* creating EC2 Instance: operation error EC2: RunInstances, https "
    "response error StatusCode: 500, RequestID: 5c4a1a3e-8f0e-4c1b-9a53-1f1f0f1d2c3b, api error "
    "InsufficientInstanceCapacity: We currently do not have sufficient g5.xlarge capacity in "
    "the Availability Zone you requested ({zone}). Our system will be working on provisioning "
    "additional capacity. You can currently get g5.xlarge capacity by not specifying an "
    "Availability Zone in your request or choosing us-east-1a, us-east-1c.")
AWS_SPOT_QUOTA = (
    "1 error occurred:\n\t* creating EC2 Instance: operation error EC2: RunInstances, https "
    "response error StatusCode: 400, RequestID: 0e8d3c7a-2b1f-4f6e-8c9d-7a6b5c4d3e2f, api error "
    "MaxSpotInstanceCountExceeded: Max spot instance count exceeded")
GCP_EXHAUSTED = (
    "Error waiting for instance to create: The zone 'projects/demo/zones/{zone}' does not "
    "have enough resources available to fulfill the request.  '(resource type:compute)'.; "
    "code: ZONE_RESOURCE_POOL_EXHAUSTED")


def fleets(double: StackDouble) -> list[dict[str, Any]]:
    return [json.loads(value) for key, value in double.configs() if key == "skyform:fleet"]


def groups_of(fleet: dict[str, Any]) -> dict[str, int]:
    """{zone or 'home': count} of the spot groups of generation 1."""
    gen = fleet["generations"][0]
    out = {"home": gen["spot"]} if gen["spot"] else {}
    for g in gen.get("groups", []):
        if g["market"] == "spot" and g["count"]:
            out[g["location"]["zone"]] = out.get(g["location"]["zone"], 0) + g["count"]
    return out


async def test_scale_ups_spread_over_zones_and_the_fleet_records_them() -> None:
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, _ = make(double, placer="spothedge")
    await dep.start()
    ids = [await dep.scale_up(True) for _ in range(3)]
    await until(lambda: dep.updates_ok == 1)
    # The first replica goes to the cheapest zone, which is the home one: group `spot`.
    assert ids[0] == "spot-0"
    zones = groups_of(fleets(double)[-1])
    assert zones == {"home": 1, "us-east-1b": 1, "us-east-1c": 1}
    fleet = parse_fleet(fleets(double)[-1])
    assert fleet is not None
    placed = {p.site.zone: p.name(1) for p in fleet.generations[0].placed}
    assert sorted(ids[1:]) == sorted(f"{placed[z]}-0" for z in ("us-east-1b", "us-east-1c"))
    # The targeted up names the new groups too (a targeted up creates only what it targets).
    target = double.ups()[-1][1]
    assert {f"{PREFIX}{placed[z]}" for z in placed} <= set(target)
    status = dep.status()
    assert status["placer"] == "spothedge"
    assert status["groups"][placed["us-east-1b"]]["zone"] == "us-east-1b"
    assert dep.replica_location(ids[1])["market"] == "spot"  # type: ignore[index]


@pytest.mark.parametrize("cloud,message,token", [
    ("aws", AWS_CAPACITY, "aws:ec2:Instance"),
    ("aws", AWS_SPOT_QUOTA, "aws:ec2:Instance"),
    ("gcp", GCP_EXHAUSTED, "gcp:compute:Instance"),
])
async def test_a_capacity_error_moves_the_replica_and_blocks_only_that_zone(
        cloud: str, message: str, token: str) -> None:
    zones = (["us-east-1a", "us-east-1b", "us-east-1c"] if cloud == "aws"
             else ["us-central1-a", "us-central1-b", "us-central1-c"])
    double = StackDouble({"replicaGroupUrns": URNS})
    # A backoff of a minute: the test would time out if the failover waited for it.
    dep, _ = make(double, cloud, zones, retry_initial_seconds=60.0)
    await dep.start()
    first = await dep.scale_up(True)
    await until(lambda: dep.updates_ok == 1)
    assert first == "spot-0"
    # The second spot replica goes to another zone; its launch fails there.
    second = await dep.scale_up(True)
    group = second.rsplit("-", 1)[0]
    failed_zone = dep.status()["groups"][group]["zone"]
    assert failed_zone != zones[0]
    double.script = [engine_failure(f"service-{second}", message.format(zone=failed_zone),
                                    token)]
    ondemand = await dep.scale_up(False)
    await until(lambda: dep.updates_ok == 2)
    assert dep.failures == 1 and dep.moved == 1
    before, after = fleets(double)[-2], fleets(double)[-1]
    assert groups_of(before) == {"home": 1, failed_zone: 1}
    moved_to = set(groups_of(after)) - {"home"}
    assert groups_of(after)["home"] == 1, "the group that did not fail keeps its count"
    assert len(moved_to) == 1 and failed_zone not in moved_to
    # The on-demand replica asked for in the same update is in the retried up as before.
    assert after["generations"][0]["ondemand"] == before["generations"][0]["ondemand"] == 1
    assert ondemand == "ondemand-0"
    state = {e["location"]["zone"]: e for e in dep.status()["locations"]
             if e["location"]["spot"]}
    assert state[failed_zone]["state"] == "blocked"
    assert state[failed_zone]["counts"]["failures"] == 1
    assert all(state[z]["state"] == "active" for z in zones if z != failed_zone)
    assert second not in {p.replica_id for p in dep.pending()}
    assert len([p for p in dep.pending() if p.spot]) == 2


async def test_an_error_that_is_not_a_locations_backs_off_and_moves_nothing() -> None:
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, _ = make(double, retry_initial_seconds=0.02)
    await dep.start()
    double.script = [create_command_error(auto.CommandResult(
        stdout="", code=255, stderr="error: update failed: AccessDenied: not authorized\n"))]
    await dep.scale_up(True)
    await until(lambda: dep.updates_ok == 1)
    assert dep.failures == 1 and dep.moved == 0
    assert fleets(double)[0] == fleets(double)[1]
    assert all(e["state"] == "active" for e in dep.status()["locations"])


async def test_a_preempted_spot_replica_is_skipped_and_replaced_elsewhere() -> None:
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, reg = make(double, placer="spothedge")
    await dep.start()
    ids = [await dep.scale_up(True) for _ in range(3)]
    await until(lambda: dep.updates_ok == 1)
    for i, rid in enumerate(ids):
        reg.register(rid, f"http://10.0.0.{i + 1}:8080", spot=True, state=ReplicaState.READY)
    dep.poll()
    home = ids[0]
    assert home == "spot-0"
    # The agent heard the interruption notice (DELETE ...?reason=preempted keeps it PREEMPTED).
    reg.set_state(home, ReplicaState.PREEMPTED)
    await dep.replace(home, "PREEMPTED")
    await until(lambda: dep.updates_ok == 2)
    gen = fleets(double)[-1]["generations"][0]
    # The only home replica was the top index: the group shrank, nothing was recreated there.
    assert gen["spot"] == 0 and "skip" not in gen
    assert reg.get(home) is None
    book = {e["location"]["zone"]: e for e in dep.status()["locations"]
            if e["location"]["spot"]}
    assert book["us-east-1a"]["state"] == "preempted"
    assert book["us-east-1a"]["counts"]["preemptions"] == 1
    # The autoscaler's replacement goes to another zone.
    replacement = await dep.scale_up(True)
    assert not replacement.startswith("spot-0") and replacement != "spot-0"
    assert dep.replica_location(replacement)["zone"] != "us-east-1a"  # type: ignore[index]


async def test_a_preempted_replica_below_the_top_index_is_skipped() -> None:
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, reg = make(double, initial_counts={"spot": 2, "ondemand": 0})
    await dep.start()
    reg.register("spot-0", "http://10.0.0.1:8080", spot=True, state=ReplicaState.READY)
    reg.register("spot-1", "http://10.0.0.2:8080", spot=True, state=ReplicaState.READY)
    await dep.replace("spot-0", "deregistered")  # it vanished: counts as preempted
    await until(lambda: dep.updates_ok == 1)
    gen = fleets(double)[-1]["generations"][0]
    assert gen["spot"] == 2 and gen["skip"] == {"spot": [0]}
    assert [p.replica_id for p in dep.pending()] == []
    assert dep.choose_removal("spot-1") == "spot-1"
    # No refresh: nothing brings spot-0 back in place.
    assert [c for c in double.calls if c[0] == "refresh"] == []


async def test_kubernetes_unregistered_replica_is_a_failed_launch() -> None:
    now = [1000.0]
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, reg = make(double, "kubernetes", ["zone-a", "zone-b", "zone-c"],
                    unschedulable_seconds=300,
                    clock=lambda: now[0], placer="spothedge")
    await dep.start()
    first = await dep.scale_up(True)
    second = await dep.scale_up(True)
    await until(lambda: dep.updates_ok == 1)
    reg.register(first, "http://10.0.0.1:8080", spot=True)
    now[0] += 299
    dep.poll()
    assert dep.moved == 0, "not yet past the timeout"
    now[0] += 2
    dep.poll()
    assert dep.moved == 1
    await until(lambda: dep.updates_ok == 2)
    stuck_zone = dep.status()["groups"][second.rsplit("-", 1)[0]]["zone"]
    zones = groups_of(fleets(double)[-1])
    assert stuck_zone not in zones and zones["home"] == 1 and sum(zones.values()) == 2
    assert dep.desired[second.rsplit("-", 1)[0]] == 0
    book = {e["location"]["zone"]: e for e in dep.status()["locations"]
            if e["location"]["spot"]}
    assert book[stuck_zone]["last_failure_kind"] == "unschedulable"
    assert book[stuck_zone]["state"] != "active"


def spot_agent_config(tmp_path: Any, placer: str, locations: list[dict[str, Any]],
                      home: dict[str, Any], **replica_policy: Any) -> AgentConfig:
    """An agent config for a spot service on AWS through the Pulumi deployer, its own
    autoscaler deciding every 0.2 s (a minute's backoff: failover must not wait for it)."""
    return agent_config(
        tmp_path, [],
        service={"service_spec": {"readiness_probe": {"path": "/health"},
                                  "replica_policy": replica_policy},
                 "service_port": 8080, "resources": [{"use_spot": True}],
                 "load_balancing_policy": "least_load"},
        autoscaler={"enabled": True, "decision_interval_seconds": 0.2},
        deployer={"kind": "pulumi", "stack": "dev", "cloud": "aws", "placer": placer,
                  "locations": locations, "home": home, "retry_initial_seconds": 60})


async def register(admin: httpx.AsyncClient, rid: str, url: str, spot: bool) -> None:
    """Register replica ``rid`` (``<group>-<index>``) as its start script would."""
    group, index = rid.rsplit("-", 1)
    r = await admin.post("/replicas", json={
        "replica_id": rid, "url": url, "spot": spot, "group": group, "index": int(index)})
    assert r.status_code == 200, r.text


async def test_preemption_through_the_real_agent_moves_the_replacement(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's own loop: the autoscaler's two spot replicas are placed in two zones, one
    replica deregisters with reason ``preempted`` (its interruption notice), and the
    replacement the autoscaler asks for goes to a third zone; /status and /metrics say so."""
    double = StackDouble({"replicaGroupUrns": URNS})
    monkeypatch.setattr(pulumi_deployer, "local_stack_factory",
                        lambda *args, **kwargs: (lambda: double))
    locations, home = menu("aws", ["us-east-1a", "us-east-1b", "us-east-1c"])
    replicas = [await Replica(name).start() for name in ("a", "b", "c")]
    try:
        config = spot_agent_config(tmp_path, "spothedge", locations, home, min_replicas=2)
        async with (running_agent(config) as agent,
                    httpx.AsyncClient(base_url=agent.admin_url, headers=auth()) as admin):
            await until(lambda: double.ups() != [], timeout=15)
            await until(lambda: sum(groups_of(fleets(double)[-1]).values()) == 2, timeout=15)
            first = groups_of(fleets(double)[-1])
            assert first == {"home": 1, "us-east-1b": 1}
            status = (await admin.get("/status")).json()
            ids = sorted(status["autoscaler"]["deployer"]["replica_locations"])
            for rid, rep in zip(ids, replicas, strict=False):
                await register(admin, rid, rep.url, spot=True)
            await agent.wait_ready(2)
            away = next(rid for rid in ids if rid != "spot-0")
            r = await admin.delete(f"/replicas/{away}", params={"reason": "preempted"})
            assert r.status_code == 200 and r.json()["removed"]["state"] == "PREEMPTED"
            bad = await admin.delete("/replicas/spot-0", params={"reason": "bored"})
            assert bad.status_code == 422 and "preempted" in bad.json()["detail"]
            await until(lambda: groups_of(fleets(double)[-1]) == {"home": 1, "us-east-1c": 1},
                        timeout=15)
            status = (await admin.get("/status")).json()
            book = {e["location"]["zone"]: e for e in status["locations"]
                    if e["location"]["spot"]}
            assert book["us-east-1b"]["state"] == "preempted"
            assert book["us-east-1b"]["counts"]["preemptions"] == 1
            assert status["placer"] == "spothedge"
            home_row = next(r for r in status["replicas"] if r["replica_id"] == "spot-0")
            assert home_row["location"]["zone"] == "us-east-1a"
            assert home_row["location"]["market"] == "spot"
            text = (await admin.get("/metrics")).text
            key = book["us-east-1b"]["key"]
            assert f'skyform_preemptions_total{{location="{key}"}} 1.0' in text
            assert f'skyform_location_state{{location="{key}",state="preempted"}} 1.0' in text
    finally:
        for rep in replicas:
            await rep.stop()


async def test_a_scale_down_reaches_the_placer() -> None:
    """The skyform placer decides whether a spare protects anything from where the live
    replicas are: a replica the autoscaler removed is no longer counted at its location."""
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, _ = make(double, placer="skyform")
    await dep.start()
    ids = [await dep.scale_up(True) for _ in range(2)]
    await until(lambda: dep.updates_ok == 1)
    placer = dep.placer
    assert isinstance(placer, SkyformPlacer)
    parsed = pulumi_deployer.parse_replica(ids[1])
    assert parsed is not None
    loc = dep.menu.location_for(parsed[0], dep._sites)
    assert loc is not None
    before = placer.held(loc)
    await dep.remove(ids[1])
    assert placer.held(loc) == before - 1


async def test_the_placer_learns_how_long_a_replica_takes_to_be_ready() -> None:
    """The skyform placer is told, with each READY replica, when the ``up`` that launched it
    succeeded: the launch-to-READY time it weighs a copy in a sibling zone against."""
    now = [1000.0]
    double = StackDouble({"replicaGroupUrns": URNS})
    dep, reg = make(double, placer="skyform", clock=lambda: now[0])
    await dep.start()
    rid = await dep.scale_up(True)
    await until(lambda: dep.updates_ok == 1)
    placer = dep.placer
    assert isinstance(placer, SkyformPlacer)
    launched = dep.launch_time(rid)
    assert launched is not None and launched <= now[0]
    now[0] += 120
    reg.register(rid, "http://10.0.0.1:8080", spot=True)  # STARTING: not yet
    dep.poll()
    assert placer.replacement_seconds() is None
    assert dep.launch_time(rid) == launched  # the autoscaler orders launches by it
    now[0] += 480
    reg.set_state(rid, ReplicaState.READY)
    dep.poll()
    assert placer.replacement_seconds() == now[0] - launched
    assert dep.launch_time(rid) is None
    dep.poll()  # told once
    assert list(placer._to_ready) == [600]


class NoCapacityIn(StackDouble):
    """A stack whose ``up`` fails, as AWS reports it, whenever the fleet holds a spot group
    in ``zone`` (the zone has no capacity)."""

    def __init__(self, zone: str) -> None:
        super().__init__({"replicaGroupUrns": URNS})
        self.zone = zone
        self.failed = 0

    def up(self, **kwargs: Any) -> Any:
        if self.zone in groups_of(fleets(self)[-1]):
            self.failed += 1
            self.script.insert(0, engine_failure("service-spot-x-0",
                                                 AWS_CAPACITY.format(zone=self.zone)))
        return super().up(**kwargs)


async def test_a_target_of_one_holds_on_demand_alone_when_nothing_can_pair(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's own loop with the skyform placer: one replica and a spare, on-demand
    fallback, two zones, and no capacity in the second. The spare's launch there fails and
    is dropped, not placed again (on-demand covers the target), and that zone is not
    probed again for ``probe_seconds``. With the replica at home and the on-demand cover
    READY and nothing to pair with, the autoscaler scales the lone spot replica down (its
    zone parked, shown in /status); the on-demand replica stays."""
    double = NoCapacityIn("us-east-1b")
    monkeypatch.setattr(pulumi_deployer, "local_stack_factory",
                        lambda *args, **kwargs: (lambda: double))
    locations, home = menu("aws", ["us-east-1a", "us-east-1b"])
    replicas = [await Replica(name).start() for name in ("a", "od")]
    try:
        config = spot_agent_config(tmp_path, "skyform", locations, home, min_replicas=1,
                                   num_overprovision=1, dynamic_ondemand_fallback=True)
        async with (running_agent(config) as agent,
                    httpx.AsyncClient(base_url=agent.admin_url, headers=auth()) as admin):
            # The up that asked for the spare in us-east-1b failed; the retry, at once, holds
            # the replica at home and the on-demand cover.
            await until(lambda: double.failed == 1 and groups_of(fleets(double)[-1])
                        == {"home": 1}, timeout=15)
            assert fleets(double)[-1]["generations"][0]["ondemand"] == 1
            await register(admin, "spot-0", replicas[0].url, spot=True)
            await register(admin, "ondemand-0", replicas[1].url, spot=False)
            # Once both are READY the lone spot replica goes; the on-demand replica stays.
            await until(lambda: groups_of(fleets(double)[-1]) == {}, timeout=15)
            assert fleets(double)[-1]["generations"][0]["ondemand"] == 1
            status = (await admin.get("/status")).json()
            book = {e["location"]["zone"]: e for e in status["locations"]
                    if e["location"]["spot"]}
            assert book["us-east-1a"]["state"] == "parked"
            assert book["us-east-1a"]["parked_until"] is not None
            assert book["us-east-1b"]["state"] == "blocked"
            assert book["us-east-1b"]["counts"]["failures"] == double.failed == 1
    finally:
        for rep in replicas:
            await rep.stop()
