"""PulumiDeployer: scale by writing the fleet to the stack config and running `up`.

One worker task owns the stack. ``scale_up``/``remove`` only change the desired counts and
wake the worker; the worker applies the latest counts (coalescing every request made while an
update ran), one ``up`` at a time, in a thread so the event loop keeps serving. An ``up`` is
targeted at the replica-group components (stack output ``replicaGroupUrns``) with
``target_dependents``. ``ConcurrentUpdateError`` and failed updates (``CommandError``) are
retried with SkyServe's jittered backoff and counted in status and metrics. After a
successful ``up`` the stack output ``replicas`` reconciles the registry, for replicas that do
not register themselves. A replica that vanished triggers a ``refresh`` before the next ``up``.

Replica groups shrink from the highest index, so ``choose_removal`` maps the autoscaler's
choice to that replica and the scaler drains exactly the one Pulumi will delete.

Groups are per *generation* (lb_agent.control.fleet): new replicas always go to the current
generation (``deployer.generation`` in the agent config, which the program chose), while
the replicas of older generations keep their spec until the rollout retires them, so the
deployer runs versions side by side. What it writes before each ``up`` is the whole fleet,
``skyform:fleet``: every generation's digest and per-kind counts.
Imports only the core SDK (``pulumi.automation``), never a cloud provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pulumi.automation as auto
from prometheus_client import CollectorRegistry, Counter, Gauge

from lb_agent.control.deployers.base import Backoff, PlannedReplica, replica_seq
from lb_agent.control.deployers.workspace import engine_error, open_stack
from lb_agent.control.fleet import (
    FLEET_KEY,
    FLEET_OUTPUT,
    KINDS,
    ONDEMAND,
    SPOT,
    Fleet,
    FleetError,
    Generation,
    fleet_json,
    generation_of,
    group_name,
    parse_fleet,
    parse_group,
    parse_replica,
)
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState

log = logging.getLogger(__name__)


class StackLike(Protocol):
    """The part of ``pulumi.automation.Stack`` the deployer uses (tests pass a double)."""

    def set_config(self, key: str, value: auto.ConfigValue, *, path: bool = False) -> None: ...

    def up(self, **kwargs: Any) -> Any: ...

    def refresh(self, **kwargs: Any) -> Any: ...

    def outputs(self) -> Mapping[str, auto.OutputValue]: ...


StackFactory = Callable[[], StackLike]


def local_stack_factory(
    work_dir: str, stack_name: str, env: Mapping[str, str] | None = None,
    env_files: Mapping[str, str] | None = None,
) -> StackFactory:
    """A factory selecting ``stack_name`` of the project in ``work_dir``, its program run
    inline (``lb_agent.control.deployers.workspace``: no language plugin needed). ``env_files``
    names variables whose values are read from files (the controller's Pulumi credentials),
    so they never sit in the agent config."""

    def make() -> StackLike:
        full = dict(env or {})
        for name, path in (env_files or {}).items():
            with open(path, encoding="utf-8") as fh:
                full[name] = fh.read().strip()
        stack: Any = open_stack(work_dir, stack_name, env=full)
        return stack

    return make


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        reg = registry or CollectorRegistry()
        self.updates = Counter(
            "skyform_deployer_updates", "pulumi up runs by result", ["result"], registry=reg
        )
        self.refreshes = Counter("skyform_deployer_refreshes", "pulumi refresh runs", registry=reg)
        self.busy = Gauge("skyform_deployer_busy", "1 while an update runs", registry=reg)
        self.desired = Gauge(
            "skyform_deployer_desired_replicas", "desired replicas per group", ["group"],
            registry=reg,
        )


class PulumiDeployer:
    """Replica groups of a Pulumi stack, scaled through the Automation API."""

    kind = "pulumi"
    #: Old generations keep their spec while the rollout retires them (lb_agent.control.fleet).
    runs_versions = True

    def __init__(
        self,
        registry: Registry,
        *,
        stack_factory: StackFactory,
        stack_name: str = "",
        service_port: int = 8080,
        spot_default: bool = False,
        generation: int = 1,
        digest: str = "",
        initial_counts: Mapping[str, int] | None = None,
        retry_initial_seconds: float = 5.0,
        metrics_registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.stack_factory = stack_factory
        self.stack_name = stack_name
        self.service_port = service_port
        self.spot_default = spot_default
        #: The generation new replicas join, and its replica-spec digest (from the program).
        self.generation = generation
        self.digest = digest
        #: Digests of the other live generations, as the stack's ``fleet`` output says.
        self._digests: dict[int, str] = {generation: digest}
        self._desired: dict[str, int] = {group_name(k, generation): 0 for k in KINDS}
        self._counts_known = initial_counts is not None
        if initial_counts is not None:
            self._desired.update({g: int(n) for g, n in initial_counts.items()})
        # Counts given up front are what the stack already has.
        self._applied: dict[str, int] | None = (
            dict(self._desired) if initial_counts is not None else None
        )
        self._removing: dict[str, set[int]] = {}
        self._drained: dict[str, set[int]] = {}
        self._retiring: set[str] = set()
        self._refresh_wanted = 0
        self._refresh_done = 0
        self._stack: StackLike | None = None
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._backoff = Backoff(retry_initial_seconds, rng)
        self._metrics = _Metrics(metrics_registry)
        self.busy = False
        self.updates_ok = 0
        self.failures = 0
        self.conflicts = 0
        self.refreshes = 0
        self.last_error: str | None = None
        self.retry_in: float | None = None
        self.applied_event = asyncio.Event()
        self._version: int | None = None
        self._applied_version: int | None = None
        #: The service version the stack's fleet recorded (read at start): a controller that
        #: lost its state starts from it (SkyServe #8562).
        self.recorded_version: int | None = None
        #: The service version each generation's replicas run (a replica that registers
        #: gets its generation's), and the replicas already labelled.
        self._generation_versions: dict[int, int] = {}
        self._labelled: set[str] = set()
        registry.add_listener(self._label_new_replicas)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._counts_known:
            counts = await asyncio.to_thread(self._read_counts)
            if counts is None:
                # Never shrink a stack we could not read: start from the replicas the
                # (persisted) registry knows, which self-register with group and index.
                counts = self._registry_counts()
            self._desired.update(counts)
            self._applied = dict(self._desired)
            self._counts_known = True
        for rec in self.registry.list():
            generation = generation_of(rec.replica_id)
            if generation is not None:
                self._labelled.add(rec.replica_id)
                known = self._generation_versions.get(generation, 0)
                if generation != self.generation:
                    self._generation_versions[generation] = max(known, rec.version)
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="skyform-pulumi-deployer")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def set_version(self, version: int, service: Mapping[str, Any]) -> None:
        """The service is now ``version``: replicas of the current generation run it (the
        program put the spec's generation in this agent's config), and it is recorded in
        the fleet with the next ``up`` (one is requested when it changed)."""
        del service
        self._generation_versions[self.generation] = version
        if version != self._version:
            self._version = version
            self._request()

    def _label_new_replicas(self) -> None:
        """A replica that registers gets its generation's version (its own start script
        does not know it), so the rollout never mistakes a new replica for an old one."""
        for rec in self.registry.list():
            if rec.replica_id in self._labelled:
                continue
            generation = generation_of(rec.replica_id)
            if generation is None:
                continue
            self._labelled.add(rec.replica_id)
            version = self._generation_versions.get(generation)
            if version is not None and rec.version != version:
                self.registry.set_version(rec.replica_id, version)

    # -- the Deployer protocol -----------------------------------------------------------
    def _group_for(self, spot: bool | None) -> str:
        use_spot = self.spot_default if spot is None else spot
        return group_name(SPOT if use_spot else ONDEMAND, self.generation)

    async def scale_up(self, spot: bool | None) -> str:
        group = self._group_for(spot)
        index = self._desired.get(group, 0)
        self._desired[group] = index + 1
        self._request()
        return f"{group}-{index}"

    def choose_removal(self, replica_id: str) -> str:
        parsed = parse_replica(replica_id)
        if parsed is None:
            return replica_id
        group = parsed[0]
        taken = self._removing.setdefault(group, set())
        for index in range(self._desired.get(group, 0) - 1, -1, -1):
            if index not in taken:
                taken.add(index)
                return f"{group}-{index}"
        return replica_id

    async def remove(self, replica_id: str) -> None:
        parsed = parse_replica(replica_id)
        if parsed is None:
            return
        group, index = parsed
        drained = self._drained.setdefault(group, set())
        removing = self._removing.setdefault(group, set())
        drained.add(index)
        self._retiring.add(replica_id)
        # Shrink only while the top indices are all drained (a group loses its highest first).
        while self._desired.get(group, 0) - 1 in drained:
            top = self._desired[group] - 1
            drained.discard(top)
            removing.discard(top)
            self._desired[group] = top
        self._request()

    async def replace(self, replica_id: str, reason: str) -> None:
        """A replica vanished. One of the current generation comes back: the next ``up``
        refreshes first and Pulumi recreates it. One of an older generation does not: a new
        instance would have the current spec under the old generation's name (a frozen group
        keeps inputs only for what exists), and SkyServe launches only the latest version
        too. It is retired instead, and the autoscaler replaces the capacity in the current
        generation; the refresh never reads old generations, so nothing recreates it."""
        self.registry.remove(replica_id)
        self._labelled.discard(replica_id)
        generation = generation_of(replica_id)
        if generation is not None and generation != self.generation:
            log.info("replica %s of generation %d vanished (%s): retired, not brought back",
                     replica_id, generation, reason)
            await self.remove(replica_id)
            return
        log.info("replica %s vanished (%s): refresh and up will bring it back", replica_id, reason)
        self._refresh_wanted += 1
        self._request()

    def owns(self, replica_id: str) -> bool:
        return parse_replica(replica_id) is not None

    def pending(self) -> list[PlannedReplica]:
        out = []
        for group, count in sorted(self._desired.items()):
            taken = self._removing.get(group, set())
            kind = (parse_group(group) or (SPOT, 1))[0]
            for index in range(count):
                rid = f"{group}-{index}"
                if index in taken or self.registry.get(rid) is not None:
                    continue
                out.append(PlannedReplica(rid, replica_seq(rid, group), kind == SPOT, group,
                                          index))
        return out

    def poll(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stack": self.stack_name,
            "busy": self.busy,
            "generation": self.generation,
            "desired": dict(self._desired),
            "applied": None if self._applied is None else dict(self._applied),
            "updates": self.updates_ok,
            "failures": self.failures,
            "conflicts": self.conflicts,
            "refreshes": self.refreshes,
            "last_error": self.last_error,
            "retry_in_seconds": self.retry_in,
            "version": self._version,
        }

    @property
    def desired(self) -> dict[str, int]:
        return dict(self._desired)

    def fleet(self, counts: Mapping[str, int] | None = None) -> Fleet:
        """``counts`` (default: the desired ones) as the fleet the program reads: every
        generation with a replica, and the current one."""
        per: dict[int, dict[str, int]] = {self.generation: {}}
        for group, n in (self._desired if counts is None else counts).items():
            parsed = parse_group(group)
            if parsed is None or (n <= 0 and parsed[1] != self.generation):
                continue
            per.setdefault(parsed[1], {})[parsed[0]] = n
        return Fleet(tuple(
            Generation(g, self._digests.get(g, ""), c.get(SPOT, 0), c.get(ONDEMAND, 0))
            for g, c in sorted(per.items())), self._effective_version())

    def _effective_version(self) -> int | None:
        """The version to write: the one the scaler set, else the one the stack recorded
        (never erase it with nothing)."""
        return self._version if self._version is not None else self.recorded_version

    # -- the worker ----------------------------------------------------------------------
    def _request(self) -> None:
        for group, n in self._desired.items():
            self._metrics.desired.labels(group=group).set(n)
        self._wake.set()

    def _needs_work(self) -> bool:
        return (
            self._applied != self._desired
            or self._refresh_wanted != self._refresh_done
            or self._effective_version() != self._applied_version
        )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._needs_work():
                continue
            want = dict(self._desired)
            fleet = self.fleet(want)
            wanted = self._refresh_wanted
            refresh = wanted != self._refresh_done
            self.busy = True
            self._metrics.busy.set(1)
            delay: float | None = None
            try:
                outputs = await asyncio.to_thread(self._apply_sync, fleet, refresh)
            except auto.ConcurrentUpdateError as exc:
                self.conflicts += 1
                self._metrics.updates.labels(result="conflict").inc()
                delay = self._failed("another update is in progress", exc)
            except auto.CommandError as exc:
                self.failures += 1
                self._metrics.updates.labels(result="failed").inc()
                delay = self._failed("pulumi up failed", exc)
            except Exception as exc:  # a bug or an unreadable stack: report and retry
                self.failures += 1
                self._metrics.updates.labels(result="failed").inc()
                delay = self._failed("update error", exc)
            else:
                self._applied = want
                self._applied_version = fleet.version
                if refresh:
                    self._refresh_done = wanted
                self.updates_ok += 1
                self._metrics.updates.labels(result="ok").inc()
                self.last_error = None
                self.retry_in = None
                self._backoff.reset()
                self._reconcile(want, outputs)
                self.applied_event.set()
                self.applied_event = asyncio.Event()
            finally:
                self.busy = False
                self._metrics.busy.set(0)
            if delay is not None:
                await asyncio.sleep(delay)
                self.retry_in = None
                self._wake.set()
            elif self._needs_work():
                self._wake.set()

    def _failed(self, what: str, exc: BaseException) -> float:
        if isinstance(exc, auto.CommandError):
            detail = engine_error(str(exc)).removeprefix("error: ")
        else:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        self.last_error = f"{what}: {detail.strip()[:300]}"
        delay = self._backoff.current()
        self.retry_in = round(delay, 3)
        log.warning("%s; retrying in %.1f s", self.last_error, delay)
        return delay

    def _get_stack(self) -> StackLike:
        if self._stack is None:
            self._stack = self.stack_factory()
        return self._stack

    def _read_counts(self) -> dict[str, int] | None:
        """The counts the stack last applied: its ``fleet`` output (with every generation's
        digest), else the groups and indices its ``replicas`` output lists."""
        try:
            outputs = _plain(self._get_stack().outputs())
        except Exception as exc:  # no stack yet, or no CLI: start from zero and say why
            self.last_error = f"cannot read stack outputs: {str(exc).strip()[:200]}"
            return None
        counts: dict[str, int] = {}
        try:
            fleet = parse_fleet(outputs.get(FLEET_OUTPUT))
        except FleetError as exc:
            log.warning("stack output %s: %s; reading the replicas output", FLEET_OUTPUT, exc)
            fleet = None
        if fleet is not None:
            self.recorded_version = self._applied_version = fleet.version
            for gen in fleet.generations:
                # The current generation's digest comes from the program (the agent
                # config); a config without one keeps the stack's.
                if gen.generation != self.generation or not self.digest:
                    self._digests[gen.generation] = gen.digest
                for kind in KINDS:
                    if gen.count(kind):
                        counts[group_name(kind, gen.generation)] = gen.count(kind)
            return counts
        for item in outputs.get("replicas") or []:
            group = item.get("group")
            if parse_group(group) is not None:
                counts[group] = max(counts.get(group, 0), int(item.get("index", 0)) + 1)
        return counts

    def _registry_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self.registry.list():
            parsed = parse_replica(rec.replica_id)
            if parsed is not None:
                counts[parsed[0]] = max(counts.get(parsed[0], 0), parsed[1] + 1)
        return counts

    def _targets(self, urns: list[str], fleet: Fleet) -> list[str]:
        """The replica-group components to target: the stack's ``replicaGroupUrns`` plus
        those of groups the fleet has that the last update had not (a generation an
        update created in between, or one this ``up`` brings back): a targeted ``up``
        cannot create a resource it does not target. URNs differ only in the group name."""
        out = list(urns)
        names = [group_name(kind, g.generation) for g in fleet.generations for kind in KINDS]
        prefix = next((u[: -len(n)] for u in urns for n in names if u.endswith(f"-{n}")), None)
        if prefix is None:
            return out
        for gen in fleet.generations:
            for kind in KINDS:
                urn = f"{prefix}{group_name(kind, gen.generation)}"
                if gen.count(kind) and urn not in out:
                    out.append(urn)
        return out

    def _apply_sync(self, fleet: Fleet, refresh: bool) -> dict[str, Any]:
        stack = self._get_stack()
        stack.set_config(FLEET_KEY, auto.ConfigValue(value=fleet_json(fleet)))
        urns = [str(u) for u in (_plain(stack.outputs()).get("replicaGroupUrns") or [])]
        kwargs: dict[str, Any] = {"on_output": log.debug}
        if urns:
            # Targeted like `up`: an untargeted refresh reads every resource of the stack,
            # which the controller's least-privilege role is not allowed to.
            kwargs["target"] = self._targets(urns, fleet)
            kwargs["target_dependents"] = True
        if refresh:
            self.refreshes += 1
            self._metrics.refreshes.inc()
            # run_program: a targeted refresh that does not run the program cannot load an
            # explicit provider (the engine stops with "unknown provider ... for resource",
            # seen with the render-mode Kubernetes provider).
            # Only the current generation's groups: a vanished replica of an older one is
            # retired, and a refresh would drop it from the state for `up` to recreate.
            current = [u for u in kwargs.get("target", [])
                       if any(u.endswith(f"-{group_name(k, self.generation)}") for k in KINDS)]
            refresh_kwargs = {**kwargs, "target": current} if current else kwargs
            stack.refresh(**refresh_kwargs, run_program=True)
        result = stack.up(**kwargs)
        outputs = getattr(result, "outputs", None)
        return _plain(outputs if outputs else stack.outputs())

    def _reconcile(self, applied: Mapping[str, int], outputs: Mapping[str, Any]) -> None:
        """Register replicas the outputs list; forget retired ones that are gone."""
        for item in outputs.get("replicas") or []:
            group, index = item.get("group"), item.get("index")
            parsed = parse_group(group)
            if parsed is None or index is None:
                continue
            rid = f"{group}-{int(index)}"
            address = item.get("address")
            if not address or int(index) >= applied.get(str(group), 0):
                continue
            url = _url(str(address), self.service_port)
            rec = self.registry.get(rid)
            if rec is None or (rec.url != url and not rec.draining):
                self.registry.register(
                    rid, url, spot=bool(item.get("spot", parsed[0] == SPOT)), group=group,
                    index=int(index), accelerator=item.get("accelerator"),
                    state=ReplicaState.STARTING,
                )
        for rid in list(self._retiring):
            parsed_rid = parse_replica(rid)
            if parsed_rid is not None and parsed_rid[1] >= applied.get(parsed_rid[0], 0):
                self._retiring.discard(rid)
                self.registry.remove(rid)


def _plain(outputs: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (outputs or {}).items():
        out[key] = value.value if isinstance(value, auto.OutputValue) else value
    return out


def _url(address: str, port: int) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if ":" in address and not address.startswith("["):
        return f"http://{address}"
    return f"http://{address}:{port}"
