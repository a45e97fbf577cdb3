"""Locations through the real engine (Pulumi CLI and Kubernetes provider in render mode): a
fleet spread over two zones renders one StatefulSet per zone with its node affinity, and a
replica whose launch failed (it never registered: its pod stayed Unschedulable) moves to
another location through the agent's targeted ``up``, which touches only the groups the
move changes: nothing is replaced, and only the emptied group is deleted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pulumi.automation as auto
import pytest
from engine_support import AGENT_TOKEN, EngineProject, objects_by_kind, rendered_objects

from lb_agent.control.fleet import Site, group_name

pytestmark = pytest.mark.engine

STACK = "kubernetes-example"
RENDER_DIR = "rendered"
ZONE_KEY = "topology.kubernetes.io/zone"


def _zone_of(statefulset: dict[str, Any]) -> list[str] | None:
    affinity = statefulset["spec"]["template"]["spec"].get("affinity")
    if not affinity:
        return None
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    [expr] = terms[0]["matchExpressions"]
    assert expr["key"] == ZONE_KEY and expr["operator"] == "In"
    return list(expr["values"])


def _touched(events: list[auto.EngineEvent]) -> set[tuple[Any, str]]:
    return {(e.resource_pre_event.metadata.op, e.resource_pre_event.metadata.urn
             .rsplit("::", 1)[-1]) for e in events if e.resource_pre_event is not None
            and e.resource_pre_event.metadata.op not in (auto.OpType.SAME, auto.OpType.READ)}


async def test_a_fleet_over_two_zones_renders_and_a_failed_launch_moves_alone(
        tmp_path: Any) -> None:
    from lb_agent.control.deployers.pulumi import PulumiDeployer
    from lb_agent.control.registry import Registry
    from lb_agent.control.store import StateStore

    project = EngineProject.create(tmp_path)
    project.cli("stack", "init", STACK)
    project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
    project.cli("config", "set", "skyform:renderYamlToDirectory", RENDER_DIR)
    project.cli("config", "set", "skyform:backendUrl", project.env["PULUMI_BACKEND_URL"])
    project.cli("config", "set", "--path", "skyform:zones[0]", "zone-a")
    project.cli("config", "set", "--path", "skyform:zones[1]", "zone-b")
    rendered = project.dir / RENDER_DIR
    stack = project.stack(STACK)
    assert stack.up().summary.result == "succeeded"

    maps = objects_by_kind(rendered_objects(rendered), "ConfigMap")
    agent = json.loads(maps["hello-controller-files"]["data"]["agent.json"])["deployer"]
    sites = {loc["zone"]: Site.from_json(loc) for loc in agent["locations"]
             if not loc["spot"] and loc["zone"]}
    assert set(sites) == {"zone-a", "zone-b"}
    # What the agent writes after placing one replica in each zone.
    digest = stack.outputs()["fleet"].value["generations"][0]["digest"]
    project.cli("config", "set", "skyform:fleet", json.dumps({"version": 1, "generations": [{
        "generation": 1, "digest": digest, "spot": 0, "ondemand": 0,
        "groups": [{"market": "ondemand", "count": 1, "location": sites[z].to_json()}
                   for z in ("zone-a", "zone-b")]}]}))
    assert stack.up().summary.result == "succeeded"
    names = {z: f"hello-{group_name('ondemand', 1, s.key)}" for z, s in sites.items()}
    sets = objects_by_kind(rendered_objects(rendered), "StatefulSet")
    assert {n: s["spec"]["replicas"] for n, s in sets.items() if n != "hello-controller"} == {
        "hello-ondemand": 0, names["zone-a"]: 1, names["zone-b"]: 1}
    assert _zone_of(sets[names["zone-a"]]) == ["zone-a"]
    assert _zone_of(sets[names["zone-b"]]) == ["zone-b"]
    assert _zone_of(sets["hello-ondemand"]) is None
    role = objects_by_kind(rendered_objects(rendered), "Role")["hello-controller"]
    named = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    assert set(names.values()) <= named

    # The agent: zone-a's replica registers, zone-b's never does (Unschedulable).
    events: list[auto.EngineEvent] = []

    class Recording:
        """The real stack, its `up` events kept for the summary check."""

        def __init__(self) -> None:
            self.inner = project.stack(STACK)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def up(self, **kwargs: Any) -> Any:
            return self.inner.up(on_event=events.append, **kwargs)

    now = [1000.0]
    registry = Registry(StateStore(":memory:"))
    deployer = PulumiDeployer(
        registry, stack_factory=Recording, stack_name=STACK,
        generation=1, digest=agent["digest"], retry_initial_seconds=0.1,
        cloud="kubernetes", locations=agent["locations"], home=agent["home"],
        placer="spothedge", unschedulable_seconds=600, clock=lambda: now[0])
    await deployer.start()
    stuck_group = group_name("ondemand", 1, sites["zone-b"].key)
    ok_group = group_name("ondemand", 1, sites["zone-a"].key)
    assert deployer.desired == {"spot": 0, "ondemand": 0, stuck_group: 1, ok_group: 1}
    registry.register(f"{ok_group}-0", "http://10.0.0.9:8080")
    try:
        now[0] += 601
        deployer.poll()
        assert deployer.moved == 1
        done = deployer.updates_ok + 1
        while deployer.updates_ok < done:
            assert deployer.failures == 0, deployer.last_error
            await asyncio.sleep(0.05)
    finally:
        await deployer.close()

    sets = objects_by_kind(rendered_objects(rendered), "StatefulSet")
    counts = {n: s["spec"]["replicas"] for n, s in sets.items() if n != "hello-controller"}
    assert names["zone-b"] not in counts, "the emptied group is gone"
    assert sum(counts.values()) == 2 and counts[names["zone-a"]] >= 1
    moved_to = next(n for n, c in counts.items()
                    if c and (n != names["zone-a"] or c == 2))
    assert _zone_of(sets[moved_to]) != ["zone-b"]
    touched = _touched(events)
    ops = {op for op, _ in touched}
    assert auto.OpType.REPLACE not in ops and auto.OpType.CREATE_REPLACEMENT not in ops, touched
    stuck = f"service-{stuck_group}"
    deleted = {n for op, n in touched if op == auto.OpType.DELETE}
    assert f"{stuck}-set" in deleted, touched
    assert deleted <= {stuck, f"{stuck}-set", f"{stuck}-files", f"{stuck}-headless"}, touched
    updated = {n for op, n in touched if op == auto.OpType.UPDATE}
    assert updated == {f"service-{moved_to.removeprefix('hello-')}-set"}, touched
    assert not [n for op, n in touched if op == auto.OpType.CREATE], touched
    book = {e["location"]["zone"]: e for e in deployer.status()["locations"]}
    assert book["zone-b"]["last_failure_kind"] == "unschedulable"
