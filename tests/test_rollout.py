"""Versions and rollouts: what is a change, in-place reuse, active versions, which old
replicas go (rolling / blue-green), the total cap across versions, failed rollouts, and the
version book surviving a restart."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from prometheus_client import generate_latest
from test_deployer_pulumi import StackDouble, until
from test_scaler import Clock, RecordingDeployer, make

from lb_agent.config import AgentConfig
from lb_agent.control.autoscaler import Operator, PolicyParams, ReplicaView, build_autoscaler
from lb_agent.control.deployers.pulumi import PulumiDeployer
from lb_agent.control.rollout import (
    BLUE_GREEN,
    ROLLING,
    VersionBook,
    VersionedReplica,
    active_versions,
    can_reuse,
    same_service,
)
from lb_agent.control.scaler import VERSIONS_KEY, Scaler
from lb_agent.control.states import ReplicaState as S
from lb_agent.control.store import StateStore
from lb_agent.runtime import AgentRuntime

SPEC: dict[str, Any] = {
    "source": "a.yaml", "name": None,
    "service_spec": {"readiness_probe": {"path": "/"},
                     "replica_policy": {"min_replicas": 1, "max_replicas": 3,
                                        "target_qps_per_replica": 1}},
    "service_port": 8080, "load_balancing_policy": "least_load",
    "use_ondemand_fallback": False, "resources_container": "set",
    "resources": [{"cpus": "1+"}, {"accelerators": {"A100": 1}}],
    "num_nodes": 1, "envs": {}, "secrets": {}, "setup": "", "run": "serve",
    "workdir": None, "file_mounts": None,
}


def spec(**changes: Any) -> dict[str, Any]:
    return {**SPEC, **changes}


def test_service_section_changes_reuse_and_any_of_is_a_set() -> None:
    probe = spec(service_spec={**SPEC["service_spec"], "readiness_probe": {"path": "/health"}},
                 load_balancing_policy="round_robin", source="b.yaml")
    assert can_reuse(SPEC, probe)
    assert not same_service(SPEC, probe)
    assert same_service(SPEC, spec(source="elsewhere.yaml"))
    assert can_reuse(SPEC, spec(resources=list(reversed(SPEC["resources"]))))
    ordered = spec(resources_container="list")
    assert not can_reuse(ordered, spec(resources_container="list",
                                       resources=list(reversed(SPEC["resources"]))))


def test_replica_changes_and_file_mounts_need_new_replicas() -> None:
    assert not can_reuse(SPEC, spec(run="serve --v2"))
    assert not can_reuse(SPEC, spec(envs={"MODEL": "b"}))
    assert not can_reuse(SPEC, spec(resources=[{"cpus": "2+"}]))
    # SkyServe: any file mounts (a workdir is one) force new replicas, even unchanged.
    mounts = spec(file_mounts={"/data": "./data"})
    assert not can_reuse(mounts, mounts)
    assert not can_reuse(spec(workdir="."), spec(workdir="."))


def test_active_versions_rolling_and_blue_green() -> None:
    reps = [VersionedReplica(1, S.READY), VersionedReplica(1, S.READY),
            VersionedReplica(2, S.READY), VersionedReplica(2, S.STARTING)]
    assert active_versions(ROLLING, reps, {1: 1, 2: 2}) == [1, 2]
    # v2 has 1 READY of min 2: stay on v1; then v2 reaches 2.
    assert active_versions(BLUE_GREEN, reps, {1: 1, 2: 2}) == [1]
    reps[3] = VersionedReplica(2, S.READY)
    assert active_versions(BLUE_GREEN, reps, {1: 1, 2: 2}) == [2]
    # min_replicas 0 still needs one READY replica to take the traffic.
    assert active_versions(BLUE_GREEN, [VersionedReplica(1, S.READY),
                                        VersionedReplica(2, S.STARTING)], {1: 1, 2: 0}) == [1]
    assert active_versions(BLUE_GREEN, [], {1: 1}) == []


class VersionedDeployer(RecordingDeployer):
    """Launches replicas of a given version (like the local deployer)."""

    runs_versions = True

    def set_version(self, version: int, service: Mapping[str, Any]) -> None:
        self.calls.append(("set_version", version))


def make_versioned(policy: dict[str, Any], clock: Clock, store: StateStore | None = None
                   ) -> tuple[Scaler, VersionedDeployer, AgentRuntime]:
    sc, _, rt = make(policy, clock, store)
    dep = VersionedDeployer()
    dep.runtime = rt
    sc.deployer = dep
    return sc, dep, rt


def views(*reps: tuple[str, int, S]) -> list[ReplicaView]:
    return [ReplicaView(rid, int(rid.split("-")[1]), st, v) for rid, v, st in reps]


def updated(mode: str, policy: dict[str, Any], **kw: Any) -> Any:
    a = build_autoscaler(PolicyParams.from_policy(policy))
    a.update_policy(PolicyParams.from_policy(policy), 2, mode)
    return a


def test_rolling_keeps_final_target_minus_latest_ready_not_ready_first() -> None:
    a = updated(ROLLING, {"min_replicas": 3, "max_replicas": 6, "target_qps_per_replica": 1})
    reps = views(("r-1", 1, S.READY), ("r-2", 1, S.STARTING), ("r-3", 1, S.READY),
                 ("r-4", 2, S.READY), ("r-5", 2, S.STARTING), ("r-6", 2, S.STARTING))
    d = a.generate_decisions(reps)
    # final_target 3, 1 new READY: keep 2 old; the STARTING one goes first.
    assert [(x.operator, x.replica_id) for x in d] == [(Operator.SCALE_DOWN, "r-2")]
    reps = views(("r-1", 1, S.READY), ("r-3", 1, S.READY),
                 ("r-4", 2, S.READY), ("r-5", 2, S.READY), ("r-6", 2, S.READY))
    assert sorted(x.replica_id or "" for x in a.generate_decisions(reps)) == ["r-1", "r-3"]


def test_blue_green_keeps_every_old_replica_until_the_switch() -> None:
    a = updated(BLUE_GREEN, {"min_replicas": 2, "max_replicas": 6, "target_qps_per_replica": 1})
    reps = views(("r-1", 1, S.READY), ("r-2", 1, S.READY),
                 ("r-3", 2, S.READY), ("r-4", 2, S.STARTING))
    assert a.generate_decisions(reps) == []
    reps = views(("r-1", 1, S.READY), ("r-2", 1, S.READY),
                 ("r-3", 2, S.READY), ("r-4", 2, S.READY))
    assert sorted(x.replica_id or "" for x in a.generate_decisions(reps)) == ["r-1", "r-2"]


def test_total_cap_across_versions_and_one_at_a_time_at_full_size() -> None:
    # Fixed 2 replicas: max + overprovision = 2, so v2 never adds a third replica.
    a = updated(ROLLING, {"min_replicas": 2})
    old2 = views(("r-1", 1, S.READY), ("r-2", 1, S.READY))
    d = a.generate_decisions(old2)
    # No room and nothing new in progress: retire one old (newest first) to make room.
    assert [(x.operator, x.replica_id) for x in d] == [(Operator.SCALE_DOWN, "r-2")]
    d = a.generate_decisions(views(("r-1", 1, S.READY), ("r-2", 1, S.SHUTTING_DOWN)))
    assert [x.operator for x in d] == [Operator.SCALE_UP]
    # A new replica in progress: wait for it, launch nothing, retire nothing.
    assert a.generate_decisions(views(("r-1", 1, S.READY), ("r-3", 2, S.STARTING))) == []
    # Fixed 1: retiring the only READY replica would be downtime; wait and say why.
    c = updated(ROLLING, {"min_replicas": 1})
    assert c.generate_decisions(views(("r-1", 1, S.READY))) == []
    assert c.blocked is not None and "raise max_replicas" in c.blocked
    # Headroom (max 4, 2 old): new replicas up to the cap only.
    b = updated(ROLLING, {"min_replicas": 3, "max_replicas": 4, "target_qps_per_replica": 1})
    d = b.generate_decisions(views(("r-1", 1, S.READY), ("r-2", 1, S.READY),
                                   ("r-3", 1, S.READY)))
    assert [x.operator for x in d] == [Operator.SCALE_UP]


def test_failing_new_version_makes_no_decision() -> None:
    a = updated(ROLLING, {"min_replicas": 2, "max_replicas": 4, "target_qps_per_replica": 1})
    reps = views(("r-1", 1, S.READY), ("r-2", 1, S.READY), ("r-3", 2, S.FAILED))
    assert a.failing(reps) and a.generate_decisions(reps) == []


async def test_scaler_update_relabels_service_only_changes_and_persists() -> None:
    clock = Clock()
    store = StateStore(":memory:")
    policy = {"min_replicas": 1, "max_replicas": 3, "target_qps_per_replica": 1}
    sc, _dep, rt = make_versioned(policy, clock, store)
    await sc.tick()
    rt.registry.register("local-1", "http://127.0.0.1:1", state=S.READY)
    base = dict(rt.config.service or {})
    assert sc.book.latest == 1
    svc = {**base, "service_spec": {"replica_policy": {**policy, "max_replicas": 4}},
           "load_balancing_policy": "round_robin"}
    out = sc.apply_update(svc, mode=BLUE_GREEN)
    assert out == {"changed": True, "version": 2, "mode": BLUE_GREEN, "reused": ["local-1"]}
    rec = rt.registry.get("local-1")
    assert rec is not None and rec.version == 2
    assert sc.autoscaler.params.max_replicas == 4 and sc.autoscaler.state.latest_version == 2
    assert rt.config.policy == "round_robin" and type(rt.policy).__name__ != "LeastLoadPolicy"
    assert sc.apply_update(svc)["changed"] is False
    await sc.tick()
    assert sc.book.rollout is not None and sc.book.rollout["status"] == "done"
    saved = VersionBook.from_json(store.get_json(VERSIONS_KEY))
    assert saved is not None and (saved.latest, saved.mode) == (2, BLUE_GREEN)
    # A restart with the same config as v2 keeps version 2 (SkyServe #8562) ...
    rt2 = AgentRuntime(rt.config.replace(service=svc), store=store, clock=clock)
    sc2 = Scaler(rt2, build_autoscaler(PolicyParams.from_service(svc)), RecordingDeployer(),
                 clock=clock)
    assert (sc2.book.latest, sc2.autoscaler.state.latest_version) == (2, 2)
    # ... and one with a changed spec (a `pulumi up` while it was down) is version 3.
    sc3, _, _rt3 = make(policy, clock, store)
    assert sc3.book.latest == 3 and sc3.book.rollout is not None
    assert sc3.book.rollout["from"] == 2


async def test_scaler_reports_a_failed_rollout_in_status_and_metrics() -> None:
    clock = Clock()
    policy = {"min_replicas": 1, "max_replicas": 2, "target_qps_per_replica": 5}
    sc, dep, rt = make_versioned(policy, clock)
    await sc.tick()
    rt.registry.register("local-1", "http://127.0.0.1:1", state=S.READY)
    svc = {**(rt.config.service or {}), "run": "v2"}
    out = sc.apply_update(svc)
    assert out["reused"] == [] and out["version"] == 2
    clock.t += 20
    launched = len(dep.launched)
    await sc.tick()
    v2 = dep.launched[launched:]
    assert len(v2) == 1, "one v2 replica next to the old one (room under max_replicas 2)"
    for rid in v2:
        rt.registry.register(rid, f"http://127.0.0.1:{rid[-1]}9", version=2, state=S.FAILED)
    clock.t += 20
    assert await sc.tick() == []
    status = rt.autoscaler_status or {}
    assert status["rollout"]["status"] == "failed"
    assert "FAILED" in status["rollout"]["reason"]
    metrics = generate_latest(rt.metrics_registry).decode()
    assert 'skyform_rollout{from_version="1",mode="rolling"' in metrics
    assert 'status="failed"' in metrics
    assert "skyform_service_version 2.0" in metrics
    rec = rt.registry.get("local-1")
    assert rec is not None and rec.state is S.READY and rt.routable, "v1 keeps serving"


async def test_pulumi_deployer_rolls_a_new_generation_beside_the_old_one() -> None:
    """The agent restarted with generation 2 in its config (the program saw a changed replica
    spec): the old replicas stay in generation 1's group, new ones go to generation 2's, the
    fleet written to the stack has both, and the total never exceeds the cap."""
    clock = Clock()
    policy = {"min_replicas": 2}
    sc, _, rt = make(policy, clock)
    double = StackDouble()
    dep = PulumiDeployer(rt.registry, stack_factory=lambda: double, service_port=8080,
                         generation=2, digest="new",
                         initial_counts={"ondemand": 2}, retry_initial_seconds=0.01)
    dep._digests[1] = "old"
    sc.deployer = dep
    await dep.start()
    for i in (0, 1):
        rt.registry.register(f"ondemand-{i}", f"http://10.0.0.{i}:8080", state=S.READY,
                             group="ondemand", index=i)
    out = sc.apply_update({**(rt.config.service or {}), "run": "serve --v2"})
    assert out["reused"] == [] and out["version"] == 2
    for _ in range(6):
        clock.t += 20
        await sc.tick()
        await sc.wait_removals()
        live = [r for r in rt.registry.list() if not r.state.is_terminal]
        assert len(live) + len([p for p in dep.pending()
                                if rt.registry.get(p.replica_id) is None]) <= 2
        for p in dep.pending():  # the new replicas come up and register (version 2)
            rt.registry.register(p.replica_id, f"http://10.0.2.{p.index}:8080",
                                 state=S.READY, group=p.group, index=p.index)
    await until(lambda: not dep.busy and dep.updates_ok >= 1)
    await dep.close()
    by_id = {r.replica_id: r for r in rt.registry.list()}
    assert sorted(by_id) == ["ondemand-g2-0", "ondemand-g2-1"]
    assert {r.version for r in by_id.values()} == {2}, "a new replica gets its generation's"
    assert dep.desired == {"spot-g2": 0, "ondemand-g2": 2, "ondemand": 0}
    written = json.loads(double.configs()[-1][1])
    assert written == {"version": 2, "generations": [
        {"generation": 2, "digest": "new", "spot": 0, "ondemand": 2}]}
    # On the way, one fleet had both generations, the old one with its own digest.
    both = [json.loads(v)["generations"] for k, v in double.configs()
            if len(json.loads(v)["generations"]) == 2]
    assert both and both[0][0]["digest"] == "old" and both[0][1]["digest"] == "new"


async def test_a_controller_without_state_starts_from_the_fleets_version() -> None:
    """The Pulumi deployer reads the version the agent recorded in the stack's fleet; a
    controller whose state was lost starts from it and labels its replicas with it."""
    import asyncio

    clock = Clock()
    sc, _, rt = make({"min_replicas": 1}, clock)
    double = StackDouble({"replicaGroupUrns": [], "fleet": {"version": 5, "generations": [
        {"generation": 1, "digest": "d", "spot": 0, "ondemand": 1}]}})
    dep = PulumiDeployer(rt.registry, stack_factory=lambda: double, service_port=8080,
                         digest="d", retry_initial_seconds=0.01)
    sc.deployer = dep
    assert sc.book.latest == 1
    task = asyncio.create_task(sc.run())
    await until(lambda: sc.book.latest == 5)
    rt.registry.register("ondemand-0", "http://10.0.0.1:8080", group="ondemand", index=0)
    await until(lambda: rt.registry.get("ondemand-0").version == 5)  # type: ignore[union-attr]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sc.autoscaler.state.latest_version == 5 and dep.desired["ondemand"] == 1
    assert double.ups() == [], "the recorded version is already in the stack: no up"


async def test_an_agent_without_state_starts_from_the_recorded_version() -> None:
    clock = Clock()
    rt = AgentRuntime(AgentConfig.from_dict({
        "token": "t" * 16, "state_file": ":memory:",
        "service": SPEC, "autoscaler": {"version": 5, "update_mode": "blue_green"},
    }), store=StateStore(":memory:"), clock=clock)
    dep = RecordingDeployer()
    dep.runtime = rt
    sc = Scaler(rt, build_autoscaler(PolicyParams.from_service(SPEC)), dep, clock=clock)
    assert (sc.book.latest, sc.book.mode, sc.autoscaler.state.latest_version) == (
        5, BLUE_GREEN, 5)
    assert sc.apply_update({**SPEC, "run": "v2"})["version"] == 6
