"""Replica generations: the fleet record (lb_agent.control.fleet) and how the program renders it.

The agent owns the per-group counts (``skyform:fleet``, and the stack's ``fleet`` output that an
``up`` outside the controller reads back); the program owns which generation the stack's YAML
runs as. These tests pin both sides under the mock runtime; tests/test_engine_kubernetes.py
shows the same with the real engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.synth import SynthResult, k8s_manifests, stack_config, synthesize
from lb_agent.control.fleet import (
    Fleet,
    FleetError,
    Generation,
    current_generation,
    fleet_json,
    generation_of,
    group_name,
    parse_fleet,
    parse_group,
    parse_replica,
    replica_digest,
    replica_number,
)

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.yaml"


# -- the record ----------------------------------------------------------------------------
def test_group_and_replica_names_round_trip() -> None:
    assert group_name("spot", 1) == "spot" and group_name("ondemand", 3) == "ondemand-g3"
    assert parse_group("ondemand-g3") == ("ondemand", 3) and parse_group("spot") == ("spot", 1)
    assert parse_group("spot-g0") is None and parse_group("local") is None
    assert parse_replica("spot-g2-7") == ("spot-g2", 7)
    assert parse_replica("ondemand-0") == ("ondemand", 0)
    assert parse_replica("local-1") is None and parse_replica("spot-x-1") is None
    assert generation_of("spot-g2-7") == 2 and generation_of("ondemand-0") == 1
    assert generation_of("local-1") is None


def test_replica_numbers_never_collide_and_grow_with_generations() -> None:
    numbers = [replica_number(group_name(k, g), i)
               for g in (1, 2, 3) for k in ("spot", "ondemand") for i in range(0, 999, 97)]
    assert len(numbers) == len(set(numbers))
    assert replica_number("spot", 0) == 1 and replica_number("ondemand", 0) == 1001
    assert replica_number("spot-g2", 0) > replica_number("ondemand", 998)


def test_fleet_parses_what_it_writes_and_names_what_is_wrong() -> None:
    fleet = Fleet((Generation(2, "b", 1, 0), Generation(1, "a", 0, 3)), version=4)
    parsed = parse_fleet(fleet_json(fleet))
    assert parsed is not None and parsed.version == 4
    assert [g.generation for g in parsed.generations] == [1, 2]
    assert parse_fleet(parsed.to_json()) == parsed  # the stack output form
    assert parse_fleet("") is None and parse_fleet(None) is None
    # A stack output read back through the engine carries every number as a float.
    floats = parse_fleet({"version": 4.0, "generations": [
        {"generation": 1.0, "digest": "a", "spot": 0.0, "ondemand": 3.0}]})
    assert floats == Fleet((Generation(1, "a", 0, 3),), 4)
    for bad, words in [("{", "not JSON"), ("[]", r"expected \{"),
                       ('{"generations": [{"generation": 0}]}', "generation must be >= 1"),
                       ('{"generations": [{"spot": 1}]}', r"generations\[0\]: expected integer"),
                       ('{"version": "x", "generations": []}', "version"),
                       ('{"generations": [{"generation": 1, "spot": 1.5}]}', "expected integer"),
                       ('{"generations": [{"generation": true}]}', "expected integer")]:
        with pytest.raises(FleetError, match=words):
            parse_fleet(bad)


def test_current_generation_reuses_a_matching_one_else_adds_one() -> None:
    gens = (Generation(1, "a", 0, 2), Generation(2, "b", 0, 1))
    assert current_generation(gens, "b") == (2, False)
    assert current_generation(gens, "a") == (1, False), "a revert makes generation 1 current"
    assert current_generation(gens, "c") == (3, True)
    assert current_generation((), "a") == (1, True)


def _spec(**over: Any) -> dict[str, Any]:
    spec = {"run": "serve", "setup": "pip install x", "envs": {"A": "1"},
            "resources": [{"cpus": 2}], "service_spec": {"readiness_probe": {"path": "/"}},
            "service_port": 8080, "load_balancing_policy": "least_load", "source": "a.yaml"}
    spec.update(over)
    return spec


def test_digest_follows_skyserves_in_place_reuse_rule() -> None:
    base = replica_digest(_spec())
    # The service section (and the file's location) only: the same generation.
    assert replica_digest(_spec(service_spec={"readiness_probe": {"path": "/h"}},
                                load_balancing_policy="round_robin", source="b.yaml")) == base
    for change in ({"run": "serve --v2"}, {"envs": {"A": "2"}}, {"setup": "true"},
                   {"resources": [{"cpus": 4}]}):
        assert replica_digest(_spec(**change)) != base, change
    # With a workdir nothing is reused: a service-only change or edited files is new.
    with_dir = replica_digest(_spec(workdir="."), "files-1")
    assert replica_digest(_spec(workdir=".", service_port=9000), "files-1") != with_dir
    assert replica_digest(_spec(workdir="."), "files-2") != with_dir
    assert replica_digest(_spec(workdir=".", source="elsewhere.yaml"), "files-1") == with_dir


# -- the program -------------------------------------------------------------------------
def _synth(service: Path = HELLO, **extra: Any) -> SynthResult:
    config, secrets = stack_config(service, "kubernetes", extra=extra)
    return synthesize(config, secrets)


def _sets(result: SynthResult) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_manifests(result) if o["kind"] == "StatefulSet"
            and o["metadata"]["name"] != "hello-controller"}


def _agent(result: SynthResult) -> dict[str, Any]:
    data = result.named("service-controller-files").raw_inputs["data"]["agent.json"]
    return json.loads(data)


def _digest(result: SynthResult) -> str:
    return str(_agent(result)["deployer"]["digest"])


@pytest.fixture(scope="module")
def first() -> SynthResult:
    return _synth(backendUrl="file:///state")


def test_first_deploy_is_generation_one_and_exports_its_fleet(first: SynthResult) -> None:
    assert first.outputs["fleet"] == {"version": None, "generations": [
        {"generation": 1, "digest": _digest(first), "spot": 0, "ondemand": 1}]}
    assert _agent(first)["deployer"]["generation"] == 1
    assert list(_sets(first)) == ["hello-ondemand"]
    # The fleet is read back from the stack's own last output (a StackReference to itself).
    refs = first.of_type("pulumi:pulumi:StackReference")
    assert [r.inputs["name"] for r in refs] == ["organization/skyform/synth"]


def test_the_agents_counts_win_over_min_replicas(first: SynthResult) -> None:
    fleet = {"version": 2, "generations": [
        {"generation": 1, "digest": _digest(first), "spot": 0, "ondemand": 3}]}
    result = _synth(fleet=fleet_json(parse_fleet(fleet) or Fleet()), replicas=1)
    assert _sets(result)["hello-ondemand"]["spec"]["replicas"] == 3
    assert result.outputs["fleet"] == fleet
    # With the fleet in config (the controller's own up) there is no StackReference.
    assert result.of_type("pulumi:pulumi:StackReference") == []


def test_a_changed_replica_spec_is_a_new_empty_generation_beside_a_frozen_one(
        first: SynthResult, tmp_path: Path) -> None:
    v2 = tmp_path / "hello.yaml"
    v2.write_text(HELLO.read_text().replace("Hello from replica", "Hello v2 from replica"))
    fleet = {"version": 1, "generations": [
        {"generation": 1, "digest": _digest(first), "spot": 0, "ondemand": 2}]}
    result = _synth(v2, fleet=json.dumps(fleet), backendUrl="file:///state")
    sets = _sets(result)
    assert sets["hello-ondemand"]["spec"]["replicas"] == 2
    assert sets["hello-ondemand-g2"]["spec"]["replicas"] == 0, "the agent launches them"
    assert _agent(result)["deployer"]["generation"] == 2
    assert result.outputs["fleet"]["generations"][1] == {
        "generation": 2, "digest": _digest(result), "spot": 0, "ondemand": 0}
    old = result.named("service-ondemand-set").options["ignoreChanges"]
    assert sorted(old) == ["spec.template", "spec.volumeClaimTemplates"]
    assert result.named("service-ondemand-files").options["ignoreChanges"] == ["data"]
    assert result.named("service-ondemand-g2-set").options["ignoreChanges"] == []
    # The frozen set still renders (its template is ignored by the engine, not dropped), and
    # the controller's Role names both generations' objects.
    role = next(o for o in k8s_manifests(result) if o["kind"] == "Role")
    named = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    assert {"hello-ondemand", "hello-ondemand-g2"} <= named
    # SKYPILOT_SERVE_REPLICA_ID of generation 2 does not collide with generation 1's.
    def id_line(name: str) -> str:
        script = result.named(name).raw_inputs["data"]["replica.sh"]
        return next(x for x in script.splitlines() if "SKYPILOT_SERVE_REPLICA_ID=" in x)

    assert id_line("service-ondemand-files").endswith("(INDEX + 1))")
    assert id_line("service-ondemand-g2-files").endswith("(INDEX + 2001))")


def test_a_revert_makes_the_old_generation_current_again(first: SynthResult) -> None:
    fleet = {"version": 3, "generations": [
        {"generation": 1, "digest": _digest(first), "spot": 0, "ondemand": 1},
        {"generation": 2, "digest": "something-else", "spot": 0, "ondemand": 2}]}
    result = _synth(fleet=json.dumps(fleet), backendUrl="file:///state")
    assert _agent(result)["deployer"]["generation"] == 1
    assert result.named("service-ondemand-set").options["ignoreChanges"] == []
    assert sorted(result.named("service-ondemand-g2-set").options["ignoreChanges"]) == [
        "spec.template", "spec.volumeClaimTemplates"]
    # A generation the agent emptied is gone from the plan (its groups are deleted).
    fleet["generations"][1]["ondemand"] = 0
    result = _synth(fleet=json.dumps(fleet))
    assert list(_sets(result)) == ["hello-ondemand"]


def test_a_bad_fleet_value_is_a_clear_error() -> None:
    with pytest.raises(pulumi.RunError, match=r"skyform:fleet: not JSON"):
        _synth(fleet="{nope")


@pytest.mark.parametrize("cloud,token,kept", [
    ("aws", "aws:ec2/instance:Instance", "instanceType"),
    ("gcp", "gcp:compute/instance:Instance", "machineType"),
])
def test_vm_groups_of_an_old_generation_keep_their_launch_spec(
        cloud: str, token: str, kept: str, first: SynthResult) -> None:
    config, secrets = stack_config(HELLO, cloud)
    digest = _digest(first)
    config["skyform:fleet"] = json.dumps({"version": 1, "generations": [
        {"generation": 1, "digest": "old", "spot": 0, "ondemand": 1},
        {"generation": 2, "digest": digest, "spot": 0, "ondemand": 1}]})
    result = synthesize(config, secrets)
    by_name = {r.name: r for r in result.of_type(token) if "controller" not in r.name}
    assert set(by_name) == {"service-ondemand-0", "service-ondemand-g2-0"}
    assert kept in by_name["service-ondemand-0"].options["ignoreChanges"]
    assert kept not in by_name["service-ondemand-g2-0"].options["ignoreChanges"]
    entries = {(r["group"], r["index"]) for r in result.outputs["replicas"]}
    assert entries == {("ondemand", 0), ("ondemand-g2", 0)}


def test_each_generation_mounts_its_own_files_on_kubernetes() -> None:
    """A workdir service: generation 2 gets its own files ConfigMap, and generation 1's is
    frozen, so a restarted old pod still unpacks the files it was started with."""
    service = ROOT / "examples" / "hello-workdir" / "service.yaml"
    fleet = {"version": 1, "generations": [
        {"generation": 1, "digest": "old", "spot": 0, "ondemand": 1}]}
    result = _synth(service, fleet=json.dumps(fleet))
    maps = {r.name: r for r in result.of_type("kubernetes:core/v1:ConfigMap")
            if r.name.endswith("-archives")}
    assert sorted(maps) == ["service-files-archives", "service-files-g2-archives"]
    assert maps["service-files-archives"].options["ignoreChanges"] == ["binaryData", "data"]
    assert maps["service-files-g2-archives"].options["ignoreChanges"] == []
    names = {r.name: r.inputs["metadata"]["name"] for r in maps.values()}
    sets = _sets(result)

    def mounted(set_name: str) -> str:
        volumes = sets[set_name]["spec"]["template"]["spec"]["volumes"]
        return next(v["configMap"]["name"] for v in volumes if v["name"] == "uploads")

    old, new = sorted(sets)
    assert mounted(old) == names["service-files-archives"]
    assert mounted(new) == names["service-files-g2-archives"] != mounted(old)


# -- locations -----------------------------------------------------------------------------
def test_placed_group_names_parse_and_never_read_as_a_generation() -> None:
    from lb_agent.control.fleet import Site, parse_group_key

    site = Site("aws", "us-east-1", "us-east-1b", 1, "A10G", "g5.xlarge", 0.38)
    key = site.key
    assert key.startswith("us-east-1b-") and len(key) == len("us-east-1b-") + 4
    assert Site("aws", "us-east-1", "us-east-1b", 1, "A10G", "g5.xlarge", 0.5).key == key, \
        "a new price is the same place"
    assert Site("aws", "us-east-1", "us-east-1b", 0).key != key
    for generation in (1, 2):
        name = group_name("spot", generation, key)
        assert parse_group_key(name) == ("spot", generation, key)
        assert parse_group(name) == ("spot", generation)
        assert parse_replica(f"{name}-12") == (name, 12)
        assert generation_of(f"{name}-12") == generation
    # A zone that looks like a generation still parses as a key (the hash keeps a dash).
    odd = Site("kubernetes", "", "g2", 0).key
    assert parse_group_key(f"spot-{odd}") == ("spot", 1, odd)
    assert parse_group_key("spot-g2") == ("spot", 2, None)


def test_an_old_fleet_json_parses_to_the_same_groups_and_writes_back_unchanged() -> None:
    old = ('{"generations":[{"digest":"a","generation":1,"ondemand":1,"spot":2},'
           '{"digest":"b","generation":2,"ondemand":0,"spot":1}],"version":5}')
    fleet = parse_fleet(old)
    assert fleet is not None
    assert [g.group_counts() for g in fleet.generations] == [
        {"spot": 2, "ondemand": 1}, {"spot-g2": 1, "ondemand-g2": 0}]
    assert fleet_json(fleet) == old, "a single-location fleet keeps its exact schema"


def test_a_fleet_with_placed_groups_and_skips_round_trips_and_bad_ones_are_named() -> None:
    from lb_agent.control.fleet import PlacedGroup, Site

    site = Site("gcp", "us-east1", "us-east1-c", 0, "L4", "g2-standard-4", 0.28)
    gen = Generation(1, "a", 1, 0, (PlacedGroup("spot", site, 3),),
                     ((group_name("spot", 1, site.key), 1),))
    fleet = Fleet((gen,), 2)
    parsed = parse_fleet(fleet_json(fleet))
    assert parsed == fleet and parse_fleet(fleet.to_json()) == fleet
    assert parsed.generations[0].total("spot") == 4
    assert parsed.generations[0].skipped(group_name("spot", 1, site.key)) == {1}
    base = '{"generations": [{"generation": 1, "spot": 0, %s}]}'
    for bad, words in [
        ('"groups": {}', r"generations\[0\]\.groups: expected a list"),
        ('"groups": [{"market": "cheap", "count": 1, "location": {"cloud": "aws"}}]',
         r"groups\[0\]: expected"),
        ('"groups": [{"market": "spot", "count": -1, "location": {"cloud": "aws"}}]',
         r"groups\[0\]"),
        ('"skip": {"spot": ["x"]}', r"generations\[0\]\.skip: expected"),
        ('"skip": {"nonsense": [1]}', r"skip: expected"),
    ]:
        with pytest.raises(FleetError, match=words):
            parse_fleet(base % bad)
