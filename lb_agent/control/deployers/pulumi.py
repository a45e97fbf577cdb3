"""PulumiDeployer: scale by writing the fleet to the stack config and running `up`.

One worker task owns the stack. ``scale_up``/``remove`` only change the desired counts and
wake the worker; the worker applies the latest counts (coalescing every request made while an
update ran), one ``up`` at a time, from a thread so the event loop keeps serving. The engine
itself runs in a child process (``engine_process``: lower CPU priority, off the proxy's CPU),
so the agent never loads the program, the Pulumi SDK or a cloud SDK. An ``up`` is
targeted at the replica-group components (stack output ``replicaGroupUrns``) with
``target_dependents``. A held stack lock (``EngineConflictError``) and failed updates
(``EngineError``; the Automation API's own errors count too, for in-process stacks) are
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

Placement (docs/locations.md): each scale-up asks the placer (lb_agent.control.placement)
for a location from the program's menu (``deployer.locations``); the replica joins the group
at that location (lb_agent.control.deployers.placing). An ``up`` that fails with a capacity,
quota or unschedulable error (lb_agent.control.launch_errors) marks the location in the book
and moves the replicas that ``up`` added there to the next location, then retries at once:
the other groups' counts never wait on the failing one. A Kubernetes replica that does not
register within ``unschedulable_seconds`` of its ``up`` counts as a failed launch the same
way. A spot VM replica that was preempted (or vanished) is recorded against its location and
its index is skipped (``Generation.skip``): its replacement is placed like any new replica.
Imports no Pulumi SDK and no cloud provider: the engine runs in a child process
(lb_agent.control.deployers.engine_process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from lb_agent.control.deployers.base import Backoff, PlannedReplica, replica_seq
from lb_agent.control.deployers.engine_process import (
    ConfigValue,
    EngineConflictError,
    EngineError,
    EngineStack,
)
from lb_agent.control.deployers.placing import Menu, failed_groups
from lb_agent.control.deployers.workspace import engine_error
from lb_agent.control.fleet import (
    FLEET_KEY,
    FLEET_OUTPUT,
    KINDS,
    ONDEMAND,
    SPOT,
    Fleet,
    FleetError,
    Generation,
    PlacedGroup,
    Site,
    fleet_json,
    generation_of,
    group_name,
    parse_fleet,
    parse_group,
    parse_group_key,
    parse_replica,
)
from lb_agent.control.launch_errors import classify
from lb_agent.control.placement import build_placer
from lb_agent.control.placement.locations import Location, LocationState
from lb_agent.control.placement.policy import DEFAULT_PLACER, Placer
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState

log = logging.getLogger(__name__)


class StackLike(Protocol):
    """The part of ``pulumi.automation.Stack`` the deployer uses: ``EngineStack`` in
    production (the engine in its own process), a double in tests. Outputs are values with
    ``.value`` (``OutputValue``) or plain values."""

    def set_config(self, key: str, value: ConfigValue, *, path: bool = False) -> None: ...

    def up(self, **kwargs: Any) -> Any: ...

    def refresh(self, **kwargs: Any) -> Any: ...

    def outputs(self) -> Mapping[str, Any]: ...


StackFactory = Callable[[], StackLike]


def local_stack_factory(
    work_dir: str, stack_name: str, env: Mapping[str, str] | None = None,
    env_files: Mapping[str, str] | None = None,
) -> StackFactory:
    """A factory for ``stack_name`` of the project in ``work_dir``, run by the engine worker
    (``engine_process``), which runs the program inline (``workspace``: no language plugin
    needed). ``env_files`` names variables whose values are read from files (the
    controller's Pulumi credentials), so they never sit in the agent config; they reach the
    worker over its pipe, never its environment or arguments."""

    def make() -> StackLike:
        full = dict(env or {})
        for name, path in (env_files or {}).items():
            with open(path, encoding="utf-8") as fh:
                full[name] = fh.read().strip()
        return EngineStack(work_dir, stack_name, env=full)

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
        self.location_state = Gauge(
            "skyform_location_state", "1 for a location's current state (active, preempted, "
            "blocked, parked)", ["location", "state"], registry=reg)
        self.location_replicas = Gauge(
            "skyform_location_replicas", "desired replicas per location", ["location"],
            registry=reg)
        self.launch_failures = Counter(
            "skyform_launch_failures", "launches that failed for their location, by kind",
            ["location", "kind"], registry=reg)
        self.preemptions = Counter(
            "skyform_preemptions", "spot replicas preempted or vanished, by location",
            ["location"], registry=reg)


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
        cloud: str = "",
        locations: Sequence[Mapping[str, Any]] = (),
        home: Mapping[str, Any] | None = None,
        placer: str = DEFAULT_PLACER,
        unschedulable_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        #: Where replicas may go (the program's menu), and the policy that chooses.
        self.cloud = cloud
        self.menu = Menu(locations, home)
        self.placer: Placer | None = (
            build_placer(placer, self.menu.locations, rng=random.Random(0))
            if self.menu.locations else None)
        self.clock = clock
        #: Kubernetes: a replica not registered this long after the `up` that launched it
        #: counts as a failed launch (its pod stayed Unschedulable); None: never.
        self.unschedulable_seconds = unschedulable_seconds
        #: The site of each placed group (home groups have none).
        self._sites: dict[str, Site] = {}
        #: Indices of VM groups that are gone for good (a preempted replica), per group.
        self._skip: dict[str, set[int]] = {}
        #: When the `up` that launched a replica succeeded (replica id -> time), until it is
        #: READY (the placer's launch-to-READY time; unregistered past a timeout on
        #: Kubernetes: unschedulable); and the replicas already reported READY to the placer.
        self._started: dict[str, float] = {}
        self._reported_ready: set[str] = set()
        self.moved = 0
        self._applied_skip: dict[str, tuple[int, ...]] = {}
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
            self._applied_skip = self._skips()
            self._counts_known = True
        # Replicas the stack has that have not registered: their launch clock starts now.
        now = self.clock()
        for group, count in self._desired.items():
            for index in range(count):
                rid = f"{group}-{index}"
                if self.registry.get(rid) is None and index not in self._skip.get(group, ()):
                    self._started.setdefault(rid, now)
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
        close = getattr(self._stack, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    def replica_failure(self, replica_id: str) -> dict[str, Any] | None:
        """Replicas run on machines the deployer does not watch: their failures show as
        FAILED registrations, not as exit codes here."""
        return None

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
        loc = self._choose(use_spot)
        group, site = self.menu.group_for(loc, use_spot, self.generation)
        if site is not None:
            self._sites[group] = site
        if loc is not None and self.placer is not None:
            self.placer.launched(loc, self.clock())
        return group

    def _choose(self, spot: bool) -> Location | None:
        """The placer's location for a new replica (None: the home group)."""
        if self.placer is None:
            return None
        return self.placer.choose(spot, self.current_locations(), self.clock())

    def current_locations(self) -> list[Location]:
        """One entry per live replica of every generation (what the placer spreads over)."""
        out: list[Location] = []
        for group, count in self._desired.items():
            loc = self.menu.location_for(group, self._sites)
            if loc is not None:
                n = count - len(self._skip.get(group, set()) & set(range(count)))
                out.extend([loc] * max(0, n))
        return out

    async def scale_up(self, spot: bool | None) -> str:
        group = self._group_for(spot)
        index = self._add(group)
        self._request()
        return f"{group}-{index}"

    def _add(self, group: str) -> int:
        index = self._desired.get(group, 0)
        self._desired[group] = index + 1
        return index

    def choose_removal(self, replica_id: str) -> str:
        parsed = parse_replica(replica_id)
        if parsed is None:
            return replica_id
        group = parsed[0]
        taken = self._removing.setdefault(group, set())
        skipped = self._skip.get(group, set())
        for index in range(self._desired.get(group, 0) - 1, -1, -1):
            if index not in taken and index not in skipped:
                taken.add(index)
                return f"{group}-{index}"
        return replica_id

    async def remove(self, replica_id: str) -> None:
        parsed = parse_replica(replica_id)
        if parsed is not None and self.placer is not None:
            # A scale-down: the placer stops counting the replica at its location.
            loc = self.menu.location_for(parsed[0], self._sites)
            if loc is not None:
                self.placer.released(loc, self.clock())
        await self._retire(replica_id)

    async def _retire(self, replica_id: str) -> None:
        parsed = parse_replica(replica_id)
        if parsed is None:
            return
        group, index = parsed
        drained = self._drained.setdefault(group, set())
        drained.add(index)
        self._retiring.add(replica_id)
        self._trim(group)
        self._request()

    def _trim(self, group: str) -> None:
        """Shrink while the top indices are all drained or skipped (a group loses its
        highest first)."""
        drained = self._drained.setdefault(group, set())
        removing = self._removing.setdefault(group, set())
        skipped = self._skip.setdefault(group, set())
        while self._desired.get(group, 0) - 1 in drained | skipped:
            top = self._desired[group] - 1
            drained.discard(top)
            removing.discard(top)
            skipped.discard(top)
            self._desired[group] = top

    async def replace(self, replica_id: str, reason: str) -> None:
        """A replica vanished. One of the current generation comes back: the next ``up``
        refreshes first and Pulumi recreates it. One of an older generation does not: a new
        instance would have the current spec under the old generation's name (a frozen group
        keeps inputs only for what exists), and SkyServe launches only the latest version
        too. It is retired instead, and the autoscaler replaces the capacity in the current
        generation; the refresh never reads old generations, so nothing recreates it."""
        self.registry.remove(replica_id)
        self._labelled.discard(replica_id)
        self._reported_ready.discard(replica_id)
        self._started.pop(replica_id, None)
        generation = generation_of(replica_id)
        parsed = parse_replica(replica_id)
        loc = None if parsed is None else self.menu.location_for(parsed[0], self._sites)
        if loc is not None and loc.spot and reason.lower() in PREEMPTION_REASONS:
            if self.placer is not None:
                self.placer.preempted(loc, self.clock())
            self._metrics.preemptions.labels(location=loc.key).inc()
            if (parsed is not None and generation == self.generation
                    and self.cloud in SKIPPING_CLOUDS):
                # The replacement goes wherever the placer says (the autoscaler sees one
                # replica fewer); this index is declared nowhere from now on.
                log.info("spot replica %s preempted (%s) at %s: its replacement is placed "
                         "again", replica_id, reason, loc)
                self._skip.setdefault(parsed[0], set()).add(parsed[1])
                self._trim(parsed[0])
                self._request()
                return
        if generation is not None and generation != self.generation:
            log.info("replica %s of generation %d vanished (%s): retired, not brought back",
                     replica_id, generation, reason)
            await self._retire(replica_id)
            return
        log.info("replica %s vanished (%s): refresh and up will bring it back", replica_id, reason)
        self._refresh_wanted += 1
        self._request()

    def owns(self, replica_id: str) -> bool:
        return parse_replica(replica_id) is not None

    def pending(self) -> list[PlannedReplica]:
        out = []
        for group, count in sorted(self._desired.items()):
            taken = self._removing.get(group, set()) | self._skip.get(group, set())
            kind = (parse_group(group) or (SPOT, 1))[0]
            for index in range(count):
                rid = f"{group}-{index}"
                if index in taken or self.registry.get(rid) is not None:
                    continue
                out.append(PlannedReplica(rid, replica_seq(rid, group), kind == SPOT, group,
                                          index))
        return out

    def _unregistered_late(self, replica_id: str, now: float) -> bool:
        """Launched ``unschedulable_seconds`` ago or more and still not registered."""
        since = self._started.get(replica_id)
        return (since is not None and self.unschedulable_seconds is not None
                and now - since >= self.unschedulable_seconds
                and self.registry.get(replica_id) is None)

    def launch_time(self, replica_id: str) -> float | None:
        # Spot and on-demand groups number apart (on-demand +1000): seq does not order them.
        return self._started.get(replica_id)

    def poll(self) -> None:
        """Tell the placer which replicas came up, and (Kubernetes) move replicas whose pod
        never got scheduled."""
        now = self.clock()
        for rec in self.registry.list():
            if rec.state is ReplicaState.READY and rec.replica_id not in self._reported_ready:
                self._reported_ready.add(rec.replica_id)
                parsed = parse_replica(rec.replica_id)
                loc = None if parsed is None else self.menu.location_for(parsed[0], self._sites)
                started = self._started.pop(rec.replica_id, None)
                if loc is not None and self.placer is not None:
                    self.placer.ready(loc, now, launched_at=started)
        for rid in list(self._started):  # scaled down or moved before READY
            parsed = parse_replica(rid)
            if parsed is None or parsed[1] >= self._desired.get(parsed[0], 0):
                del self._started[rid]
        if self.unschedulable_seconds is None or self.placer is None:
            return None
        late: dict[str, int] = {}
        for rid in self._started:
            parsed = parse_replica(rid)
            if parsed is not None and self._unregistered_late(rid, now):
                late[parsed[0]] = late.get(parsed[0], 0) + 1
        for group, n in late.items():
            # A StatefulSet loses its highest ordinals: move only the top ones still pending.
            count = self._desired[group]
            top = 0
            while top < n and self._unregistered_late(f"{group}-{count - 1 - top}", now):
                top += 1
            if top:
                for i in range(count - top, count):
                    self._started.pop(f"{group}-{i}", None)
                self._move(group, top, "unschedulable",
                           f"not registered {self.unschedulable_seconds:g} s after launch")
        return None

    def _move(self, group: str, n: int, kind: str, detail: str) -> bool:
        """Mark ``group``'s location failed (``kind``), take its ``n`` highest replicas off
        it and place them again. False when the placer has nowhere else to put them (the
        counts are then left as they were)."""
        loc = self.menu.location_for(group, self._sites)
        if loc is None or self.placer is None:
            return False
        now = self.clock()
        self.placer.launch_failed(loc, now, kind)
        self._metrics.launch_failures.labels(location=loc.key, kind=kind).inc()
        self._desired[group] = max(0, self._desired.get(group, 0) - n)
        self._trim(group)
        if not self.placer.place_again(loc, now):
            # Dropped: the autoscaler decides again (a probe while on-demand covers).
            log.warning("launch at %s failed (%s: %s): %d of %s dropped", loc, kind, detail,
                        n, group)
            self._request()
            return True
        moved: list[str] = []
        for _ in range(n):
            other = self.placer.choose(loc.spot, self.current_locations(), now)
            if other is None or other == loc:
                break
            target, site = self.menu.group_for(other, loc.spot, self.generation)
            if site is not None:
                self._sites[target] = site
            self.placer.launched(other, now)
            moved.append(f"{target}-{self._add(target)}")
        missing = n - len(moved)
        if missing:
            # Nowhere else: keep them where they were, the retry backs off.
            self._desired[group] = self._desired.get(group, 0) + missing
        if moved:
            self.moved += len(moved)
            log.warning("launch at %s failed (%s: %s): %s placed again as %s", loc, kind,
                        detail, group, ", ".join(moved))
        self._request()
        return bool(moved)

    def _fail_over(self, want: Mapping[str, int], text: str) -> bool:
        """After a failed ``up``: when its error is a location's (capacity, quota, price,
        unsupported zone, unschedulable), move the replicas it tried to add there."""
        failure = classify(text)
        if failure is None or self.placer is None:
            return False
        applied = self._applied or {}
        grown = [g for g, n in want.items() if n > applied.get(g, 0)]
        zones = {g: (loc.zone if (loc := self.menu.location_for(g, self._sites)) else None)
                 for g in grown}
        moved = False
        for group in failed_groups(text, failure, grown, zones):
            n = min(want[group], self._desired.get(group, 0)) - applied.get(group, 0)
            if n > 0:
                moved = self._move(group, n, failure.kind, failure.code) or moved
        return moved

    def locations_status(self) -> dict[str, Any]:
        """The placer, every location with its state, and each group's location."""
        if self.placer is None:
            return {"placer": None, "locations": [], "groups": {}}
        now = self.clock()
        book = self.placer.status(now)
        per: dict[str, int] = {}
        for loc in self.current_locations():
            per[loc.key] = per.get(loc.key, 0) + 1
        for entry in book:
            entry["replicas"] = per.get(entry["key"], 0)
        groups = {}
        for group in sorted(self._desired):
            where = self.menu.location_for(group, self._sites)
            if where is not None:
                groups[group] = {**where.to_json(), "key": where.key}
        return {"placer": self.placer.name, "locations": book, "groups": groups}

    def replica_location(self, replica_id: str) -> dict[str, Any] | None:
        """Where a replica runs (region, zone, candidate, market), for ``/status``."""
        parsed = parse_replica(replica_id)
        loc = None if parsed is None else self.menu.location_for(parsed[0], self._sites)
        if loc is None:
            return None
        site = self._sites.get(parsed[0]) if parsed else None
        site = site or self.menu.home
        return {"region": loc.region or None, "zone": loc.zone, "candidate": loc.candidate,
                "accelerator": site.accelerator if site else None, "market": loc.market}

    def replica_locations(self) -> dict[str, dict[str, Any]]:
        """Where every replica the deployer holds runs (replica id -> location)."""
        out: dict[str, dict[str, Any]] = {}
        for group, count in self._desired.items():
            skipped = self._skip.get(group, set())
            for index in range(count):
                if index in skipped:
                    continue
                where = self.replica_location(f"{group}-{index}")
                if where is not None:
                    out[f"{group}-{index}"] = where
        return out

    def _publish_locations(self) -> None:
        if self.placer is None:
            return
        status = self.locations_status()
        for entry in status["locations"]:
            for state in LocationState:
                self._metrics.location_state.labels(location=entry["key"], state=state.value).set(
                    1 if entry["state"] == state.value else 0)
            self._metrics.location_replicas.labels(location=entry["key"]).set(
                entry["replicas"])

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
            "moved": self.moved,
            "skipped": {g: sorted(s) for g, s in self._skip.items() if s},
            **self.locations_status(),
            "replica_locations": self.replica_locations(),
        }

    @property
    def desired(self) -> dict[str, int]:
        return dict(self._desired)

    def fleet(self, counts: Mapping[str, int] | None = None) -> Fleet:
        """``counts`` (default: the desired ones) as the fleet the program reads: every
        generation with a replica, and the current one."""
        per: dict[int, dict[str, int]] = {self.generation: {}}
        placed: dict[int, list[PlacedGroup]] = {}
        skip: dict[int, list[tuple[str, int]]] = {}
        for group, n in (self._desired if counts is None else counts).items():
            parsed = parse_group_key(group)
            if parsed is None or (n <= 0 and (parsed[1] != self.generation or parsed[2])):
                continue
            kind, generation, key = parsed
            per.setdefault(generation, {})
            if key is None:
                per[generation][kind] = n
            elif group in self._sites:
                placed.setdefault(generation, []).append(
                    PlacedGroup(kind, self._sites[group], n))
            else:
                log.warning("group %s has no recorded location; left out of the fleet", group)
                continue
            skip.setdefault(generation, []).extend(
                (group, i) for i in sorted(self._skip.get(group, set())) if i < n)
        return Fleet(tuple(
            Generation(g, self._digests.get(g, ""), c.get(SPOT, 0), c.get(ONDEMAND, 0),
                       tuple(placed.get(g, ())), tuple(skip.get(g, ())))
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

    def _skips(self) -> dict[str, tuple[int, ...]]:
        return {g: tuple(sorted(s)) for g, s in self._skip.items() if s}

    def _needs_work(self) -> bool:
        return (
            self._applied != self._desired
            or self._applied_skip != self._skips()
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
            skips = self._skips()
            fleet = self.fleet(want)
            wanted = self._refresh_wanted
            refresh = wanted != self._refresh_done
            self.busy = True
            self._metrics.busy.set(1)
            delay: float | None = None
            try:
                outputs = await asyncio.to_thread(self._apply_sync, fleet, refresh)
            except Exception as exc:
                kind = _engine_failure(exc)
                if kind == "conflict":
                    self.conflicts += 1
                    self._metrics.updates.labels(result="conflict").inc()
                    delay = self._failed("another update is in progress", exc)
                else:
                    # The engine failed, or a bug or an unreadable stack: report and retry.
                    self.failures += 1
                    self._metrics.updates.labels(result="failed").inc()
                    delay = self._failed("pulumi up failed" if kind else "update error", exc)
                    if kind and self._fail_over(want, str(exc)):
                        # The failing location's replicas went elsewhere: retry at once, so
                        # the other groups' replicas never wait on it.
                        delay = None
                        self.retry_in = None
            else:
                self._applied = want
                self._applied_skip = skips
                self._applied_version = fleet.version
                if refresh:
                    self._refresh_done = wanted
                self.updates_ok += 1
                self._metrics.updates.labels(result="ok").inc()
                self.last_error = None
                self.retry_in = None
                self._backoff.reset()
                self._reconcile(want, outputs)
                now = self.clock()
                for group, n in want.items():
                    for index in range(n):
                        rid = f"{group}-{index}"
                        if self.registry.get(rid) is None:
                            self._started.setdefault(rid, now)
                self.applied_event.set()
                self.applied_event = asyncio.Event()
            finally:
                self.busy = False
                self._metrics.busy.set(0)
                self._publish_locations()
            if delay is not None:
                await asyncio.sleep(delay)
                self.retry_in = None
                self._wake.set()
            elif self._needs_work():
                self._wake.set()

    def _failed(self, what: str, exc: BaseException) -> float:
        if _engine_failure(exc):
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
                for placed in gen.placed:
                    name = placed.name(gen.generation)
                    self._sites[name] = placed.site
                    if placed.count:
                        counts[name] = placed.count
                for name, index in gen.skip:
                    self._skip.setdefault(name, set()).add(index)
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
        counts = {g: n for gen in fleet.generations for g, n in gen.group_counts().items()}
        prefix = next((u[: -len(n)] for u in urns for n in counts if u.endswith(f"-{n}")),
                      None)
        if prefix is None:
            return out
        for group, n in counts.items():
            urn = f"{prefix}{group}"
            if n and urn not in out:
                out.append(urn)
        return out

    def _apply_sync(self, fleet: Fleet, refresh: bool) -> dict[str, Any]:
        stack = self._get_stack()
        stack.set_config(FLEET_KEY, ConfigValue(value=fleet_json(fleet)))
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
            names = [g for gen in fleet.generations if gen.generation == self.generation
                     for g in gen.group_counts()]
            current = [u for u in kwargs.get("target", [])
                       if any(u.endswith(f"-{g}") for g in names)]
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


#: Reasons (``replace``) that count as a preemption of a spot replica: the replica's own
#: notice (PREEMPTED), or it vanished (deregistered, or its heartbeat stopped).
PREEMPTION_REASONS = frozenset({"preempted", "deregistered", "unknown"})
#: Clouds whose groups can skip an index (one instance per index); a Kubernetes StatefulSet
#: recreates its pod itself, in the same group.
SKIPPING_CLOUDS = frozenset({"aws", "gcp"})


def _engine_failure(exc: BaseException) -> str | None:
    """``"conflict"`` (another update holds the lock), ``"failed"`` (the engine failed) or
    None (anything else). In-process stacks raise the Automation API's own errors; they are
    looked up only if something in this process already loaded it."""
    if isinstance(exc, EngineConflictError):
        return "conflict"
    if isinstance(exc, EngineError):
        return "failed"
    automation = sys.modules.get("pulumi.automation")
    if automation is not None:
        if isinstance(exc, automation.ConcurrentUpdateError):
            return "conflict"
        if isinstance(exc, automation.CommandError):
            return "failed"
    return None


def _plain(outputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Output values without their ``OutputValue`` wrapper (plain values pass through)."""
    out: dict[str, Any] = {}
    for key, value in (outputs or {}).items():
        wrapped = hasattr(value, "value") and hasattr(value, "secret")
        out[key] = value.value if wrapped else value
    return out


def _url(address: str, port: int) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if ":" in address and not address.startswith("["):
        return f"http://{address}"
    return f"http://{address}:{port}"
