"""Locations in the program (mock runtime): the candidate locations it lists and hands the
agent, each fleet group created at its zone and machine, skipped indices, and a fleet of the
schema before locations mapping to the very same resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from components.commands.synth import synth as synth_command
from components.synth import SynthResult, k8s_manifests, stack_config, synthesize
from lb_agent.control.fleet import Site, group_name

ROOT = Path(__file__).resolve().parent.parent
SPOT_SET = ROOT / "tests" / "fixtures" / "program" / "spot_set.yaml"
HELLO = ROOT / "examples" / "hello.yaml"


def run(service: Path, cloud: str, **extra: Any) -> SynthResult:
    config, secrets = stack_config(service, cloud, extra=extra)
    return synthesize(config, secrets)


def digest_of(result: SynthResult) -> str:
    return str(result.outputs["fleet"]["generations"][0]["digest"])


def placed(kind: str, location: dict[str, Any], count: int) -> dict[str, Any]:
    return {"market": kind, "count": count, "location": location}


def test_candidate_locations_are_every_zone_and_candidate_sorted_and_priced() -> None:
    result = run(SPOT_SET, "aws")
    locs = result.outputs["locations"]
    spot = [loc for loc in locs if loc["spot"]]
    ondemand = [loc for loc in locs if not loc["spot"]]
    assert locs == spot + ondemand, "spot locations first"
    # The home location first (the zone AWS picks in the stack's region), then by price.
    assert spot[0]["first"] and spot[0]["zone"] is None and spot[0]["region"] == "us-east-1"
    prices = [loc["price"] for loc in spot[1:]]
    assert prices == sorted(prices) and all(p > 0 for p in prices)
    assert {loc["zone"] for loc in spot[1:]} == {
        "us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"}
    assert {loc["accelerator"] for loc in spot} == {"L4", "A10G"}  # no AWS A100:1 machine
    assert all(loc["price"] > next(s["price"] for s in spot if s["key"] == loc["key"])
               for loc in ondemand), "on-demand costs more than spot at the same place"
    # A zone pin narrows the menu to that zone.
    pinned = run(SPOT_SET, "aws", zone="us-east-1c").outputs["locations"]
    assert {loc["zone"] for loc in pinned} == {"us-east-1c"}


def test_gcp_and_aws_place_across_the_regions_the_stack_allows() -> None:
    result = run(SPOT_SET, "gcp", regions=["us-east1"])
    regions = {loc["region"] for loc in result.outputs["locations"]}
    assert regions == {"us-central1", "us-east1"}
    # AWS: each other region gets a network of its own (tests/test_program_regions.py).
    aws = run(SPOT_SET, "aws", regions=["us-west-2"])
    assert {loc["region"] for loc in aws.outputs["locations"]} == {"us-east-1", "us-west-2"}


def test_the_agent_config_carries_the_menu_the_home_and_the_placer() -> None:
    result = run(SPOT_SET, "kubernetes", zones=["zone-a", "zone-b"], backendUrl="file:///s")
    agent = json.loads(result.named("service-controller-files").raw_inputs["data"]["agent.json"])
    deployer = agent["deployer"]
    assert deployer["cloud"] == "kubernetes" and deployer["placer"] == "skyform"
    zones = {(loc["zone"], loc["accelerator"], loc["spot"]) for loc in deployer["locations"]}
    assert ("zone-a", "L4", True) in zones and ("zone-b", "A100", False) in zones
    assert deployer["home"]["zone"] is None and deployer["home"]["accelerator"] == "L4"
    assert [loc for loc in deployer["locations"] if loc["key"] == Site.from_json(
        deployer["home"]).key], "the home location is on the menu"


def test_an_old_fleet_maps_to_the_same_resources_with_the_same_zone() -> None:
    """A stack deployed before locations: its fleet (the old schema) renders the same names,
    and its instances keep the zone input they had (none: AWS's choice)."""
    first = run(HELLO, "aws")
    old = json.dumps({"version": 3, "generations": [
        {"generation": 1, "digest": digest_of(first), "spot": 0, "ondemand": 2}]})
    result = run(HELLO, "aws", fleet=old)
    instances = {r.name: r for r in result.of_type("aws:ec2/instance:Instance")
                 if "controller" not in r.name}
    assert sorted(instances) == ["service-ondemand-0", "service-ondemand-1"]
    assert all(r.inputs.get("availabilityZone") is None for r in instances.values())
    groups = {r.name for r in result.of_type("skyform:aws:ReplicaGroup")}
    assert groups == {"service-ondemand"}
    assert result.outputs["fleet"] == json.loads(old), "written back exactly as read"


def test_vm_groups_are_created_at_their_zone_and_machine() -> None:
    first = run(SPOT_SET, "aws")
    a10g = Site("aws", "us-east-1", "us-east-1c", 1, "A10G", "g5.xlarge", 0.38)
    fleet = {"version": 1, "generations": [{
        "generation": 1, "digest": digest_of(first), "spot": 1, "ondemand": 0,
        "groups": [placed("spot", a10g.to_json(), 2)], "skip": {group_name("spot", 1,
                                                                          a10g.key): [0]}}]}
    result = run(SPOT_SET, "aws", fleet=json.dumps(fleet))
    by_name = {r.name: r for r in result.of_type("aws:ec2/instance:Instance")}
    away = f"service-spot-{a10g.key}"
    assert f"{away}-0" not in by_name, "a skipped index is declared nowhere"
    vm = by_name[f"{away}-1"]
    assert vm.inputs["availabilityZone"] == "us-east-1c"
    assert vm.inputs["instanceType"] == "g5.xlarge"
    assert vm.inputs["instanceMarketOptions"]["marketType"] == "spot"
    home = by_name["service-spot-0"]
    assert home.inputs["instanceType"] == "g6.xlarge" and "availabilityZone" not in home.inputs
    entries = {(r["group"], r["index"]): r for r in result.outputs["replicas"]}
    assert entries[(f"spot-{a10g.key}", 1)]["zone"] == "us-east-1c"
    assert entries[(f"spot-{a10g.key}", 1)]["accelerator"] == "A10G"
    assert result.outputs["replicaCount"] == 2


def test_gcp_groups_go_to_their_zone_and_the_grant_covers_every_zone() -> None:
    first = run(SPOT_SET, "gcp")
    east = Site("gcp", "us-east1", "us-east1-c", 0, "L4", "g2-standard-4", 0.28)
    fleet = {"version": 1, "generations": [{
        "generation": 1, "digest": digest_of(first), "spot": 1, "ondemand": 0,
        "groups": [placed("spot", east.to_json(), 1)]}]}
    result = run(SPOT_SET, "gcp", fleet=json.dumps(fleet), regions=["us-east1"])
    vms = {r.name: r for r in result.of_type("gcp:compute/instance:Instance")}
    vm = vms[f"service-spot-{east.key}-0"]
    assert vm.inputs["zone"] == "us-east1-c"
    assert len(vm.inputs["name"]) <= 63 and vm.inputs["name"].endswith(
        f"-spot-{east.key.rsplit('-', 1)[1]}-0")
    assert vms["service-spot-0"].inputs["zone"] == "us-central1-a"
    grant = next(r for r in result.of_type("gcp:projects/iAMMember:IAMMember")
                 if r.name.endswith("-instances"))
    expression = grant.inputs["condition"]["expression"]
    for zone in ("us-central1-a", "us-central1-f", "us-east1-c", "us-east1-d"):
        assert f"/zones/{zone}/instances/" in expression


def test_kubernetes_groups_get_zone_affinity_and_the_role_names_every_placeable_group(
        ) -> None:
    first = run(HELLO, "kubernetes", zones=["zone-a", "zone-b"], backendUrl="file:///s")
    agent = json.loads(first.named("service-controller-files").raw_inputs["data"]["agent.json"])
    menu = agent["deployer"]["locations"]
    zone_b = Site.from_json(next(loc for loc in menu if loc["zone"] == "zone-b"))
    fleet = {"version": 1, "generations": [{
        "generation": 1, "digest": digest_of(first), "spot": 0, "ondemand": 1,
        "groups": [placed("ondemand", zone_b.to_json(), 2)]}]}
    result = run(HELLO, "kubernetes", zones=["zone-a", "zone-b"], fleet=json.dumps(fleet))
    objects = k8s_manifests(result)
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    away = sets[f"hello-ondemand-{zone_b.key}"]
    assert away["spec"]["replicas"] == 2
    terms = away["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}]}]
    assert "affinity" not in sets["hello-ondemand"]["spec"]["template"]["spec"]
    role = next(o for o in objects if o["kind"] == "Role")
    named = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    zone_a = Site.from_json(next(loc for loc in menu if loc["zone"] == "zone-a"))
    # The agent's targeted up may create a group at any menu location: all are named.
    assert {f"hello-ondemand-{zone_a.key}", f"hello-ondemand-{zone_b.key}",
            "hello-ondemand"} <= named


def test_synth_lists_the_candidate_locations_and_the_first_placement() -> None:
    out = CliRunner().invoke(synth_command, [str(SPOT_SET), "--cloud", "aws"],
                             terminal_width=200)
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "Candidate locations" in text
    rows = [line for line in text.splitlines() if "us-east-1d" in line]
    assert any("g5.xlarge" in r and "spot" in r and "0.3823" in r for r in rows), rows
    first = [line for line in text.splitlines() if "│ first" in line]
    assert len(first) == 2 and all("g6.xlarge" in line for line in first)
    doc = json.loads(CliRunner().invoke(synth_command, [str(SPOT_SET), "--cloud", "aws",
                                                       "--json"]).stdout)
    assert doc["outputs"]["locations"][0]["first"] is True
