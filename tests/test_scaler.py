"""The scaling loop: decisions reach the deployer, scale-down drains first, preempted replicas
are replaced (with on-demand cover under dynamic fallback), and state survives a restart."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from test_deployer_pulumi import StackDouble, fleet, until

from lb_agent.config import AgentConfig
from lb_agent.control.autoscaler import PolicyParams, Tuning, build_autoscaler
from lb_agent.control.deployers.base import PlannedReplica
from lb_agent.control.deployers.pulumi import PulumiDeployer
from lb_agent.control.scaler import STATE_KEY, Scaler
from lb_agent.control.states import ReplicaState as S
from lb_agent.control.store import StateStore
from lb_agent.runtime import AgentRuntime


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class RecordingDeployer:
    """Launches nothing: records calls; launched replicas stay pending until a test registers."""

    kind = "recording"
    runs_versions = False
    recorded_version: int | None = None
    placer = None

    def set_version(self, version: int, service: Mapping[str, Any]) -> None: ...

    def replica_failure(self, replica_id: str) -> dict[str, Any] | None:
        return None

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.launched: list[str] = []
        self.n = 0
        self.runtime: AgentRuntime | None = None

    async def start(self) -> None: ...
    async def close(self) -> None:
        self.calls.append(("close", None))

    async def scale_up(self, spot: bool | None) -> str:
        self.n += 1
        rid = f"local-{self.n}"
        self.launched.append(rid)
        self.calls.append(("scale_up", spot))
        return rid

    def choose_removal(self, replica_id: str) -> str:
        return replica_id

    async def remove(self, replica_id: str) -> None:
        assert self.runtime is not None
        self.calls.append(("remove", (replica_id, self.runtime.in_flight(replica_id))))
        self.runtime.registry.remove(replica_id)

    async def replace(self, replica_id: str, reason: str) -> None:
        self.calls.append(("replace", (replica_id, reason)))

    def owns(self, replica_id: str) -> bool:
        return replica_id.startswith("local-")

    def pending(self) -> list[PlannedReplica]:
        assert self.runtime is not None
        return [PlannedReplica(r, int(r.split("-")[1]), False) for r in self.launched
                if self.runtime.registry.get(r) is None]

    def poll(self) -> None: ...

    def launch_time(self, replica_id: str) -> float | None:
        del replica_id
        return None

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind}


def runtime(policy: dict[str, Any], clock: Clock, store: StateStore | None = None) -> AgentRuntime:
    cfg = AgentConfig.from_dict({
        "token": "t" * 16, "state_file": ":memory:",
        "service": {"service_spec": {"replica_policy": policy}, "service_port": 8080,
                    "load_balancing_policy": "least_load"},
        "autoscaler": {"decision_interval_seconds": 20},
    })
    return AgentRuntime(cfg, store=store or StateStore(":memory:"), clock=clock)


def make(policy: dict[str, Any], clock: Clock, store: StateStore | None = None,
         drain: float = 5.0) -> tuple[Scaler, RecordingDeployer, AgentRuntime]:
    rt = runtime(policy, clock, store)
    dep = RecordingDeployer()
    dep.runtime = rt
    a = build_autoscaler(PolicyParams.from_policy(policy), Tuning())
    return Scaler(rt, a, dep, drain_timeout=drain, clock=clock), dep, rt


POLICY = {"min_replicas": 1, "max_replicas": 3, "target_qps_per_replica": 1,
          "upscale_delay_seconds": 20, "downscale_delay_seconds": 20}


async def test_scale_up_counts_pending_launches() -> None:
    clock = Clock()
    sc, dep, rt = make(POLICY, clock)
    await sc.tick()
    assert dep.calls == [("scale_up", None)]
    clock.t += 20
    await sc.tick()  # local-1 has not registered yet: it is counted, nothing more launches
    assert dep.calls == [("scale_up", None)]
    # Load: 3 qps -> target 3 after one tick (threshold int(20/20) = 1)
    clock.t += 20
    for i in range(180):
        rt.arrivals.record(clock.t - 59.9 + i / 3)
    rt.registry.register("local-1", "http://127.0.0.1:9", state=S.READY)
    await sc.tick()
    assert [c for c in dep.calls if c[0] == "scale_up"] == [("scale_up", None)] * 3
    st = rt.autoscaler_status
    assert st is not None and st["target"] == 3 and st["replicas"]["live"] == 3
    assert st["qps"] == 3.0 and st["deployer"] == {"kind": "recording"}


async def test_scale_down_drains_before_remove() -> None:
    clock = Clock()
    pol = {**POLICY, "min_replicas": 1}
    sc, dep, rt = make(pol, clock, drain=5.0)
    for i in (1, 2):
        rt.registry.register(f"local-{i}", f"http://127.0.0.1:{i}", state=S.READY)
    sc.autoscaler.state.target = 2
    rt.targets["local-2"].in_flight = 2  # two requests still running on the newest replica
    clock.t += 20
    await sc.tick()  # qps 0 -> raw 1 < 2: threshold 1 -> scale down local-2 (newest)
    rec = rt.registry.get("local-2")
    assert rec is not None and rec.state is S.SHUTTING_DOWN
    assert [t.replica_id for t in rt.routable] == ["local-1"], "no new request may go to it"
    await asyncio.sleep(0.2)
    assert ("remove", ("local-2", 2)) not in dep.calls and not any(
        c[0] == "remove" for c in dep.calls)
    rt.targets["local-2"].in_flight = 0  # the in-flight requests finish
    await sc.wait_removals()
    assert dep.calls == [("remove", ("local-2", 0))]
    assert sc.drained_clean == 1 and rt.registry.get("local-2") is None
    clock.t += 20
    await sc.tick()
    assert dep.calls == [("remove", ("local-2", 0))], "a finished removal is not 'vanished'"


async def test_drain_is_bounded_by_timeout() -> None:
    clock = Clock()
    sc, dep, rt = make(POLICY, clock, drain=0.2)
    for i in (1, 2):
        rt.registry.register(f"local-{i}", f"http://127.0.0.1:{i}", state=S.READY)
    sc.autoscaler.state.target = 2
    rt.targets["local-2"].in_flight = 1
    await sc.tick()
    await asyncio.wait_for(sc.wait_removals(), 3)
    assert dep.calls == [("remove", ("local-2", 1))]
    assert sc.drain_timeouts == 1


async def test_vanished_replicas_are_handed_to_deployer() -> None:
    clock = Clock()
    sc, dep, rt = make({"min_replicas": 2}, clock)
    for i in (1, 2):
        rt.registry.register(f"local-{i}", f"http://127.0.0.1:{i}", state=S.READY)
    await sc.tick()
    rt.registry.set_state("local-1", S.FAILED_PROBING)
    rt.registry.remove("local-2")  # deregistered (spot notice)
    clock.t += 20
    await sc.tick()
    assert ("replace", ("local-1", "FAILED_PROBING")) in dep.calls
    assert ("replace", ("local-2", "deregistered")) in dep.calls
    assert [c for c in dep.calls if c[0] == "scale_up"] == [("scale_up", None)] * 2
    clock.t += 20
    await sc.tick()
    assert len([c for c in dep.calls if c[0] == "replace"]) == 2, "each loss handled once"


async def test_state_persists_and_restores_without_churn() -> None:
    clock = Clock()
    store = StateStore(":memory:")
    sc, dep, rt = make(POLICY, clock, store)
    for i in (1, 2, 3):
        rt.registry.register(f"local-{i}", f"http://127.0.0.1:{i}", state=S.READY)
    for i in range(180):
        rt.arrivals.record(clock.t - 59 + i / 3)
    await sc.tick()
    assert sc.autoscaler.target == 3 and dep.calls == []
    saved: Any = store.get_json(STATE_KEY)
    assert saved["target"] == 3 and len(saved["arrivals"]) > 0
    # Restart: new runtime (empty arrival window) over the same store.
    clock.t += 20
    sc2, dep2, _ = make(POLICY, clock, store)
    assert sc2.restored and sc2.autoscaler.target == 3
    await sc2.tick()
    assert dep2.calls == [], "a restarted agent keeps its replicas (SkyServe #8562)"


async def test_preempted_spot_gets_spot_and_ondemand_cover_with_pulumi() -> None:
    clock = Clock()
    pol = {"min_replicas": 2, "max_replicas": 2, "dynamic_ondemand_fallback": True}
    rt = runtime(pol, clock)
    double = StackDouble()
    dep = PulumiDeployer(rt.registry, stack_factory=lambda: double, service_port=8080,
                         spot_default=True, initial_counts={"spot": 2, "ondemand": 0},
                         retry_initial_seconds=0.01, rng=random.Random(0))
    sc = Scaler(rt, build_autoscaler(PolicyParams.from_policy(pol)), dep, clock=clock)
    await dep.start()
    for i in (0, 1):
        rt.registry.register(f"spot-{i}", f"http://10.0.0.{i}:8080", state=S.READY, spot=True,
                             group="spot", index=i)
    assert await sc.tick() == []
    rt.registry.set_state("spot-1", S.PREEMPTED)
    clock.t += 20
    decisions = await sc.tick()
    # spot-1 comes back through refresh + up (same count), and one on-demand covers for it.
    assert [d.spot for d in decisions] == [False]
    await until(lambda: dep.updates_ok >= 1 and not dep.busy and dep.desired["ondemand"] == 1)
    await until(lambda: double.configs()[-1] == ("skyform:fleet", fleet((1, 2, 1), version=1)))
    assert [c[0] for c in double.calls].count("refresh") == 1
    # Spot is back and READY (and the on-demand replica registered): on-demand goes.
    rt.registry.register("spot-1", "http://10.0.0.9:8080", state=S.READY, spot=True,
                         group="spot", index=1)
    rt.registry.register("ondemand-0", "http://10.0.1.1:8080", state=S.READY, spot=False,
                         group="ondemand", index=0)
    clock.t += 20
    decisions = await sc.tick()
    assert [d.replica_id for d in decisions] == ["ondemand-0"]
    await sc.wait_removals()
    await until(lambda: double.configs()[-1] == ("skyform:fleet", fleet((1, 2, 0), version=1)))
    await until(lambda: rt.registry.get("ondemand-0") is None)
    await dep.close()


async def test_deregistration_between_two_decisions_is_not_missed() -> None:
    clock = Clock()
    sc, dep, rt = make({"min_replicas": 1}, clock)
    rt.registry.register("local-7", "http://127.0.0.1:7", state=S.READY)
    rt.registry.remove("local-7")  # gone before any decision saw it
    await sc.tick()
    assert ("replace", ("local-7", "deregistered")) in dep.calls
    await sc.tick()
    assert dep.calls.count(("replace", ("local-7", "deregistered"))) == 1


async def test_status_line_active_versions_follow_the_registry_not_the_last_tick() -> None:
    """`skyform local`'s ``active=`` is read from the registry as it is: right after the first
    READY it shows the version at once, not the last decision's ``[]``."""
    from components.commands.local import _line, _snapshot

    clock = Clock()
    sc, _, rt = make(POLICY, clock)
    rt.scaler = sc  # as run_scaler does
    rt.registry.register("local-1", "http://127.0.0.1:9", state=S.STARTING)
    await sc.tick()
    assert rt.autoscaler_status is not None
    assert rt.autoscaler_status["active_versions"] == []
    rt.registry.set_state("local-1", S.READY)  # between two decisions
    assert rt.autoscaler_status["active_versions"] == []  # the tick's snapshot lags
    snap = _snapshot(rt, 1.0)
    assert snap["active_versions"] == [1]
    assert " active=[1] " in _line(snap)
    rt.registry.set_state("local-1", S.NOT_READY)
    assert _snapshot(rt, 2.0)["active_versions"] == []


async def test_a_new_scaler_finishes_removals_its_predecessor_started() -> None:
    """A leader lost mid-drain (or an agent restarted) leaves a replica SHUTTING_DOWN: the
    next scaler drains it and hands it to the deployer instead of keeping it forever."""
    clock = Clock()
    sc, dep, rt = make(POLICY, clock)
    rt.registry.register("local-1", "http://127.0.0.1:1", state=S.READY)
    rt.registry.register("local-2", "http://127.0.0.1:2", state=S.SHUTTING_DOWN)
    rt.registry.register("static-0", "http://127.0.0.1:3", state=S.SHUTTING_DOWN, static=True)
    sc.resume_removals()
    await sc.wait_removals()
    assert dep.calls == [("remove", ("local-2", 0))]
    assert rt.registry.get("local-2") is None and rt.registry.get("static-0") is not None
    await sc.tick()
    assert ("replace", ("local-2", "deregistered")) not in dep.calls
