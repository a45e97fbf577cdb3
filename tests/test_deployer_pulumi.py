"""PulumiDeployer against a recording stack double: exact Automation API calls, coalescing,
one update at a time, backoff on ConcurrentUpdateError / CommandError, registry reconcile.

The double records calls and raises errors built the way pulumi's own code builds them
(``create_command_error`` on a CommandResult). Its outputs change only when a test scripts
them: it never pretends infrastructure changed.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pulumi.automation as auto
import pytest
from pulumi.automation.errors import create_command_error

from lb_agent.control.deployers.pulumi import PulumiDeployer
from lb_agent.control.fleet import Fleet, Generation, fleet_json
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState
from lb_agent.control.store import StateStore

URNS = [
    "urn:pulumi:dev::skyform::skyform:replicas:ReplicaGroup::svc-spot",
    "urn:pulumi:dev::skyform::skyform:replicas:ReplicaGroup::svc-ondemand",
]


def conflict() -> auto.CommandError:
    return create_command_error(
        auto.CommandResult(
            stdout="", code=255,
            stderr="error: [409] Conflict: Another update is currently in progress.\n",
        )
    )


def failed() -> auto.CommandError:
    return create_command_error(
        auto.CommandResult(stdout="", code=255, stderr="error: update failed: quota exceeded\n")
    )


class StackDouble:
    """Records calls; each up consumes one scripted step (an exception or new outputs)."""

    def __init__(self, outputs: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._outputs: dict[str, Any] = dict(outputs or {"replicaGroupUrns": URNS})
        self.script: list[BaseException | dict[str, Any] | None] = []
        self.gate: threading.Event | None = None
        self.up_started = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def set_config(self, key: str, value: auto.ConfigValue, *, path: bool = False) -> None:
        self.calls.append(("set_config", key, value.value, value.secret))

    def refresh(self, **kwargs: Any) -> None:
        self.calls.append(("refresh", kwargs.get("target"), kwargs.get("target_dependents"),
                           kwargs.get("run_program")))

    def outputs(self) -> dict[str, auto.OutputValue]:
        return {k: auto.OutputValue(v, False) for k, v in self._outputs.items()}

    def up(self, **kwargs: Any) -> Any:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.calls.append(("up", kwargs.get("target"), kwargs.get("target_dependents")))
            self.up_started.set()
            if self.gate is not None:
                assert self.gate.wait(10)
            step = self.script.pop(0) if self.script else None
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, dict):
                self._outputs.update(step)
            return auto.UpResult("", "", None, self.outputs())  # type: ignore[arg-type]
        finally:
            with self._lock:
                self.active -= 1

    def ups(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "up"]

    def configs(self) -> list[tuple[str, str]]:
        return [(c[1], c[2]) for c in self.calls if c[0] == "set_config"]


def fleet(*generations: tuple[int, int, int], version: int | None = None,
          digest: str = "") -> str:
    """The exact ``skyform:fleet`` value for (generation, spot, ondemand) triples."""
    return fleet_json(Fleet(tuple(Generation(g, digest, s, o) for g, s, o in generations),
                            version))


def make(
    double: StackDouble, **kw: Any
) -> tuple[PulumiDeployer, Registry]:
    reg = Registry(StateStore(":memory:"))
    kw.setdefault("initial_counts", {"spot": 0, "ondemand": 0})
    dep = PulumiDeployer(
        reg, stack_factory=lambda: double, stack_name="dev", service_port=8080,
        spot_default=True, retry_initial_seconds=0.02, rng=random.Random(1), **kw,
    )
    return dep, reg


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def replicas(*items: tuple[str, int, str]) -> dict[str, Any]:
    return {
        "replicas": [
            {"index": i, "group": g, "spot": g == "spot", "instanceType": "g5.xlarge",
             "address": a}
            for g, i, a in items
        ]
    }


async def test_exact_calls_and_reconcile() -> None:
    double = StackDouble()
    double.script = [replicas(("spot", 0, "10.0.0.5"), ("spot", 1, "10.0.0.6"),
                              ("ondemand", 0, "10.0.1.5"))]
    dep, reg = make(double)
    await dep.start()
    ids = [await dep.scale_up(True), await dep.scale_up(None), await dep.scale_up(False)]
    assert ids == ["spot-0", "spot-1", "ondemand-0"]
    # Until the stack reports them they are pending (counted as PROVISIONING).
    assert sorted(p.replica_id for p in dep.pending()) == sorted(ids)
    await until(lambda: dep.updates_ok == 1)
    assert double.calls == [
        ("set_config", "skyform:fleet", fleet((1, 2, 1)), False),
        ("up", URNS, True),
    ]
    recs = {r.replica_id: r for r in reg.list()}
    assert recs["spot-1"].url == "http://10.0.0.6:8080"
    assert recs["ondemand-0"].spot is False and recs["ondemand-0"].index == 0
    assert recs["spot-0"].state is ReplicaState.STARTING
    assert dep.pending() == []
    await dep.close()


async def test_no_pretend_outputs_keep_replicas_pending() -> None:
    double = StackDouble()  # the up "succeeds" but the outputs list no replica
    dep, reg = make(double)
    await dep.start()
    await dep.scale_up(True)
    await until(lambda: dep.updates_ok == 1)
    assert reg.list() == []
    assert [p.replica_id for p in dep.pending()] == ["spot-0"]
    await dep.close()


async def test_coalescing_and_one_update_at_a_time() -> None:
    double = StackDouble()
    double.gate = threading.Event()
    dep, _ = make(double)
    await dep.start()
    await dep.scale_up(True)
    await until(double.up_started.is_set)
    for _ in range(5):
        await dep.scale_up(True)
    await dep.scale_up(False)
    assert dep.busy and len(double.ups()) == 1
    double.gate.set()
    await until(lambda: dep.updates_ok == 2)
    await asyncio.sleep(0.05)
    assert len(double.ups()) == 2, "requests made during an update coalesce into one more up"
    assert double.max_active == 1
    assert double.configs() == [
        ("skyform:fleet", fleet((1, 1, 0))), ("skyform:fleet", fleet((1, 6, 1))),
    ]
    await dep.close()


async def test_retries_with_backoff_and_reports_errors() -> None:
    double = StackDouble()
    double.script = [conflict(), failed(), None]
    reg_metrics = __import__("prometheus_client").CollectorRegistry()
    dep, _ = make(double, metrics_registry=reg_metrics)
    await dep.start()
    await dep.scale_up(True)
    await until(lambda: dep.conflicts == 1)
    assert "another update is in progress" in str(dep.last_error)
    await until(lambda: dep.failures == 1)
    assert "quota exceeded" in str(dep.status()["last_error"])
    await until(lambda: dep.updates_ok == 1)
    assert len(double.ups()) == 3
    st = dep.status()
    assert (st["conflicts"], st["failures"], st["updates"], st["last_error"]) == (1, 1, 1, None)
    assert reg_metrics.get_sample_value(
        "skyform_deployer_updates_total", {"result": "conflict"}) == 1
    assert reg_metrics.get_sample_value(
        "skyform_deployer_updates_total", {"result": "failed"}) == 1
    assert reg_metrics.get_sample_value("skyform_deployer_updates_total", {"result": "ok"}) == 1
    await dep.close()


def test_error_types_are_pulumis() -> None:
    assert isinstance(conflict(), auto.ConcurrentUpdateError)
    assert type(failed()) is auto.CommandError


async def test_scale_down_removes_highest_index_after_drain() -> None:
    double = StackDouble()
    dep, reg = make(double, initial_counts={"spot": 3, "ondemand": 0})
    for i in range(3):
        reg.register(f"spot-{i}", f"http://10.0.0.{i}:8080", spot=True, group="spot", index=i)
    await dep.start()
    # The autoscaler picked spot-0 and spot-1; Pulumi deletes the top indices, so those go.
    assert dep.choose_removal("spot-0") == "spot-2"
    assert dep.choose_removal("spot-1") == "spot-1"
    await dep.remove("spot-1")  # drained first: spot-2 is still draining, nothing shrinks
    await asyncio.sleep(0.05)
    assert dep.desired["spot"] == 3 and double.ups() == []
    await dep.remove("spot-2")
    await until(lambda: dep.updates_ok == 1)
    assert double.configs() == [("skyform:fleet", fleet((1, 1, 0)))]
    assert [r.replica_id for r in reg.list()] == ["spot-0"]
    await dep.close()


async def test_vanished_replica_refreshes_then_ups() -> None:
    double = StackDouble()
    dep, reg = make(double, initial_counts={"spot": 2, "ondemand": 0})
    for i in range(2):
        reg.register(f"spot-{i}", f"http://10.0.0.{i}:8080", spot=True, group="spot", index=i)
    await dep.start()
    await dep.replace("spot-1", "preempted")
    assert reg.get("spot-1") is None
    assert [p.replica_id for p in dep.pending()] == ["spot-1"]
    await until(lambda: dep.updates_ok == 1)
    assert [c[0] for c in double.calls] == ["set_config", "refresh", "up"]
    # The refresh is targeted like the up (the least-privilege role cannot read the rest) and
    # runs the program (the engine cannot load an explicit provider otherwise).
    assert double.calls[1] == ("refresh", URNS, True, True)
    assert double.configs()[0] == ("skyform:fleet", fleet((1, 2, 0)))
    await dep.close()


async def test_start_reads_counts_from_stack_outputs() -> None:
    double = StackDouble({"replicaGroupUrns": URNS, **replicas(
        ("spot", 0, "a"), ("spot", 1, "b"), ("ondemand", 0, "c"))})
    dep, _ = make(double, initial_counts=None)
    await dep.start()
    assert dep.desired == {"spot": 2, "ondemand": 1}
    await asyncio.sleep(0.05)
    assert double.ups() == []  # nothing to change: no update
    await dep.close()


@pytest.mark.parametrize("spot_default,group", [(True, "spot"), (False, "ondemand")])
async def test_default_group(spot_default: bool, group: str) -> None:
    dep, _ = make(StackDouble())
    dep.spot_default = spot_default
    assert await dep.scale_up(None) == f"{group}-0"


async def test_unreadable_stack_falls_back_to_registry_counts() -> None:
    class Broken(StackDouble):
        def outputs(self) -> dict[str, auto.OutputValue]:
            raise failed()

    double = Broken()
    dep, reg = make(double, initial_counts=None)
    for i in range(3):
        reg.register(f"spot-{i}", f"http://10.0.0.{i}:8080", spot=True, group="spot", index=i)
    await dep.start()
    assert dep.desired == {"spot": 3, "ondemand": 0}
    assert "cannot read stack outputs" in str(dep.last_error)
    await asyncio.sleep(0.05)
    assert double.ups() == [], "an unreadable stack is never shrunk"
    await dep.close()


def test_backoff_grows_by_1_6_capped_at_5x_with_jitter() -> None:
    from lb_agent.control.deployers.base import Backoff

    b = Backoff(1.0, random.Random(3))
    gaps = [b.current() for _ in range(8)]
    bases = [1.0, 1.6, 2.56, 4.096, 5.0, 5.0, 5.0, 5.0]
    for gap, base in zip(gaps, bases, strict=True):
        assert base * 0.6 - 1e-9 <= gap <= base * 1.4 + 1e-9
    assert len(set(gaps)) == len(gaps), "jittered"
    b.reset()
    assert b.current() <= 1.4


def test_build_deployer_from_agent_config(tmp_path: Any) -> None:
    from lb_agent.config import AgentConfig
    from lb_agent.control.deployers import build_deployer
    from lb_agent.control.deployers.local import LocalDeployer
    from lb_agent.runtime import AgentRuntime

    service = {"service_spec": {"replica_policy": {"min_replicas": 1}}, "service_port": 9000,
               "load_balancing_policy": "least_load", "run": "true",
               "resources": [{"use_spot": True}]}
    cfg = AgentConfig.from_dict({
        "token": "k" * 16, "state_file": ":memory:", "service": service,
        "deployer": {"kind": "pulumi", "work_dir": str(tmp_path), "stack": "prod",
                     "retry_initial_seconds": 2},
    })
    rt = AgentRuntime(cfg, store=StateStore(":memory:"))
    dep = build_deployer(cfg, rt)
    assert isinstance(dep, PulumiDeployer)
    assert (dep.stack_name, dep.service_port, dep.spot_default) == ("prod", 9000, True)
    assert dep._backoff.initial == 2
    local_cfg = cfg.replace(deployer={"kind": "local", "log_dir": str(tmp_path / "l")})
    local = build_deployer(local_cfg, rt)
    assert isinstance(local, LocalDeployer) and local.service_port == 9000
    assert build_deployer(cfg.replace(deployer=None), rt) is None


async def test_version_goes_to_the_stack_config_with_the_counts() -> None:
    """A service update (version 2) is written in the fleet with the next targeted up, so a
    controller that lost its state starts from it."""
    reg = Registry(StateStore(":memory:"))
    double = StackDouble()
    dep = PulumiDeployer(reg, stack_factory=lambda: double, stack_name="dev", service_port=8080,
                         initial_counts={"spot": 0, "ondemand": 2}, retry_initial_seconds=0.01)
    assert dep.runs_versions is True
    await dep.start()
    try:
        dep.set_version(2, {"run": "v2"})
        await until(lambda: dep.updates_ok >= 1 and not dep.busy)
        await dep.scale_up(False)
        await until(lambda: dep.updates_ok >= 2 and not dep.busy)
        dep.set_version(2, {"run": "v2"})  # unchanged: no new up
        await asyncio.sleep(0.05)
    finally:
        await dep.close()
    assert double.calls == [
        ("set_config", "skyform:fleet", fleet((1, 0, 2), version=2), False),
        ("up", URNS, True),
        ("set_config", "skyform:fleet", fleet((1, 0, 3), version=2), False),
        ("up", URNS, True),
    ]
    assert dep.status()["version"] == 2


async def test_a_new_generation_scales_beside_the_old_and_targets_its_new_group() -> None:
    """Generation 2 (from the agent config) starts from the stack's fleet: new replicas go
    to its groups, the old generation keeps its digest, and the targeted up includes the
    new group's URN even when the last update's replicaGroupUrns did not list it."""
    double = StackDouble({"replicaGroupUrns": URNS, "fleet": {"version": 1, "generations": [
        {"generation": 1, "digest": "old", "spot": 0, "ondemand": 2}]}})
    dep, _ = make(double, initial_counts=None, generation=2, digest="new")
    await dep.start()
    assert dep.desired == {"spot-g2": 0, "ondemand-g2": 0, "ondemand": 2}
    assert await dep.scale_up(False) == "ondemand-g2-0"
    await until(lambda: dep.updates_ok == 1)
    assert double.configs() == [("skyform:fleet", json.dumps(
        {"generations": [{"digest": "old", "generation": 1, "ondemand": 2, "spot": 0},
                         {"digest": "new", "generation": 2, "ondemand": 1, "spot": 0}],
         "version": 1}, sort_keys=True, separators=(",", ":")))]
    group_urn = "urn:pulumi:dev::skyform::skyform:replicas:ReplicaGroup::svc-ondemand-g2"
    await asyncio.sleep(0.05)  # applied: no further up (the recorded version is kept)
    assert double.ups() == [("up", [*URNS, group_urn], True)]
    await dep.close()


async def test_a_config_without_a_digest_keeps_the_stacks() -> None:
    double = StackDouble({"replicaGroupUrns": URNS, "fleet": {"version": None, "generations": [
        {"generation": 1, "digest": "abc", "spot": 1, "ondemand": 0}]}})
    dep, _ = make(double, initial_counts=None)
    await dep.start()
    await dep.scale_up(True)
    await until(lambda: dep.updates_ok == 1)
    assert double.configs() == [("skyform:fleet", fleet((1, 2, 0), digest="abc"))]
    await dep.close()


async def test_a_vanished_old_generation_replica_is_retired_not_brought_back() -> None:
    """A preempted replica of generation 1 while generation 2 is current: no refresh of the
    old groups (which would let `up` recreate it with the new spec); it is retired once the
    indices above it are gone. One of the current generation is refreshed and comes back."""
    urns = [*URNS, "urn:pulumi:dev::skyform::skyform:replicas:ReplicaGroup::svc-ondemand-g2"]
    double = StackDouble({"replicaGroupUrns": urns})
    dep, reg = make(double, initial_counts={"ondemand": 2, "ondemand-g2": 1}, generation=2)
    for rid, group, index in (("ondemand-0", "ondemand", 0), ("ondemand-1", "ondemand", 1),
                              ("ondemand-g2-0", "ondemand-g2", 0)):
        reg.register(rid, f"http://10.0.0.{index}:8080", group=group, index=index)
    await dep.start()
    await dep.replace("ondemand-1", "preempted")  # the top index: the group shrinks
    await until(lambda: dep.updates_ok == 1)
    assert [c[0] for c in double.calls] == ["set_config", "up"], "no refresh"
    assert dep.desired["ondemand"] == 1 and dep.pending() == []
    await dep.replace("ondemand-g2-0", "preempted")  # the current generation: comes back
    await until(lambda: dep.updates_ok == 2)
    refresh = [c for c in double.calls if c[0] == "refresh"]
    assert refresh == [("refresh", [urns[2]], True, True)], "only the current generation"
    assert [p.replica_id for p in dep.pending()] == ["ondemand-g2-0"]
    await dep.close()


async def test_replica_regions_are_targeted_by_up_and_not_refreshed() -> None:
    """AWS lists its replica regions' components in replicaGroupUrns: the agent's up targets
    them (with dependents, so a region's network is created when a replica first goes
    there); a refresh reads only the groups' replicas."""
    region = ("urn:pulumi:dev::skyform::skyform:index:SkyService$skyform:aws:ReplicaRegion::"
              "svc-region-us-west-2")
    double = StackDouble({"replicaGroupUrns": [*URNS, region]})
    dep, reg = make(double, initial_counts={"spot": 2, "ondemand": 0})
    for i in range(2):
        reg.register(f"spot-{i}", f"http://10.0.0.{i}:8080", spot=True, group="spot", index=i)
    await dep.start()
    await dep.replace("spot-1", "preempted")
    await until(lambda: dep.updates_ok == 1)
    assert [c for c in double.calls if c[0] == "refresh"] == [("refresh", URNS, True, True)]
    assert double.ups() == [("up", [*URNS, region], True)]
    await dep.close()
