"""PulumiDeployer: scale by writing the replica counts to the stack config and running `up`.

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

from lb_agent.deployers.base import (
    ONDEMAND_GROUP,
    SPOT_GROUP,
    Backoff,
    PlannedReplica,
    replica_seq,
)
from lb_agent.deployers.workspace import engine_error, open_stack
from lb_agent.registry import Registry
from lb_agent.states import ReplicaState

log = logging.getLogger(__name__)

REPLICAS_KEY = "skyform:replicas"
ONDEMAND_KEY = "skyform:onDemandReplicas"
#: The service version the agent runs, kept in the stack config so that a controller that
#: lost its state starts from it (the program passes it back in the agent config).
VERSION_KEY = "skyform:version"
GROUPS = (SPOT_GROUP, ONDEMAND_GROUP)


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
    inline (``lb_agent.deployers.workspace``: no language plugin needed). ``env_files``
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

    def __init__(
        self,
        registry: Registry,
        *,
        stack_factory: StackFactory,
        stack_name: str = "",
        service_port: int = 8080,
        spot_default: bool = False,
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
        self._desired: dict[str, int] = {g: 0 for g in GROUPS}
        self._counts_known = initial_counts is not None
        if initial_counts is not None:
            self._desired.update({g: int(n) for g, n in initial_counts.items()})
        # Counts given up front are what the stack already has.
        self._applied: dict[str, int] | None = (
            dict(self._desired) if initial_counts is not None else None
        )
        self._removing: dict[str, set[int]] = {g: set() for g in GROUPS}
        self._drained: dict[str, set[int]] = {g: set() for g in GROUPS}
        self._retiring: set[str] = set()
        self._refresh_generation = 0
        self._refreshed_generation = 0
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
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="skyform-pulumi-deployer")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def set_version(self, version: int, service: Mapping[str, Any]) -> None:
        """Record the service version in the stack config with the next ``up`` (one is
        requested when it changed). The program renders every replica from the stack's YAML,
        so this deployer does not run versions side by side (``runs_versions`` is False)."""
        del service
        if version != self._version:
            self._version = version
            self._request()

    runs_versions = False

    # -- the Deployer protocol -----------------------------------------------------------
    def _group_for(self, spot: bool | None) -> str:
        use_spot = self.spot_default if spot is None else spot
        return SPOT_GROUP if use_spot else ONDEMAND_GROUP

    async def scale_up(self, spot: bool | None) -> str:
        group = self._group_for(spot)
        index = self._desired[group]
        self._desired[group] = index + 1
        self._request()
        return f"{group}-{index}"

    def choose_removal(self, replica_id: str) -> str:
        group = _group_of(replica_id)
        if group is None:
            return replica_id
        taken = self._removing[group]
        for index in range(self._desired[group] - 1, -1, -1):
            if index not in taken:
                taken.add(index)
                return f"{group}-{index}"
        return replica_id

    async def remove(self, replica_id: str) -> None:
        group = _group_of(replica_id)
        index = _index_of(replica_id)
        if group is None or index is None:
            return
        self._drained[group].add(index)
        self._retiring.add(replica_id)
        # Shrink only while the top indices are all drained (a group loses its highest first).
        while self._desired[group] - 1 in self._drained[group]:
            top = self._desired[group] - 1
            self._drained[group].discard(top)
            self._removing[group].discard(top)
            self._desired[group] = top
        self._request()

    async def replace(self, replica_id: str, reason: str) -> None:
        log.info("replica %s vanished (%s): refresh and up will bring it back", replica_id, reason)
        self.registry.remove(replica_id)
        self._refresh_generation += 1
        self._request()

    def owns(self, replica_id: str) -> bool:
        return _group_of(replica_id) is not None

    def pending(self) -> list[PlannedReplica]:
        out = []
        for group in GROUPS:
            for index in range(self._desired[group]):
                rid = f"{group}-{index}"
                if index in self._removing[group] or self.registry.get(rid) is not None:
                    continue
                out.append(
                    PlannedReplica(rid, replica_seq(rid, group), group == SPOT_GROUP, group, index)
                )
        return out

    def poll(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stack": self.stack_name,
            "busy": self.busy,
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

    # -- the worker ----------------------------------------------------------------------
    def _request(self) -> None:
        for group, n in self._desired.items():
            self._metrics.desired.labels(group=group).set(n)
        self._wake.set()

    def _needs_work(self) -> bool:
        return (
            self._applied != self._desired
            or self._refresh_generation != self._refreshed_generation
            or self._version != self._applied_version
        )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._needs_work():
                continue
            want = dict(self._desired)
            version = self._version
            generation = self._refresh_generation
            refresh = generation != self._refreshed_generation
            self.busy = True
            self._metrics.busy.set(1)
            delay: float | None = None
            try:
                outputs = await asyncio.to_thread(self._apply_sync, want, refresh, version)
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
                self._applied_version = version
                if refresh:
                    self._refreshed_generation = generation
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
        try:
            outputs = _plain(self._get_stack().outputs())
        except Exception as exc:  # no stack yet, or no CLI: start from zero and say why
            self.last_error = f"cannot read stack outputs: {str(exc).strip()[:200]}"
            return None
        counts = {g: 0 for g in GROUPS}
        for item in outputs.get("replicas") or []:
            group = item.get("group")
            if group in counts:
                counts[group] = max(counts[group], int(item.get("index", 0)) + 1)
        return counts

    def _registry_counts(self) -> dict[str, int]:
        counts = {g: 0 for g in GROUPS}
        for rec in self.registry.list():
            group, index = _group_of(rec.replica_id), _index_of(rec.replica_id)
            if group is not None and index is not None:
                counts[group] = max(counts[group], index + 1)
        return counts

    def _apply_sync(self, want: Mapping[str, int], refresh: bool,
                    version: int | None = None) -> dict[str, Any]:
        stack = self._get_stack()
        if version is not None:
            stack.set_config(VERSION_KEY, auto.ConfigValue(value=str(version)))
        total = sum(want.values())
        stack.set_config(REPLICAS_KEY, auto.ConfigValue(value=str(total)))
        stack.set_config(ONDEMAND_KEY, auto.ConfigValue(value=str(want.get(ONDEMAND_GROUP, 0))))
        urns = [str(u) for u in (_plain(stack.outputs()).get("replicaGroupUrns") or [])]
        kwargs: dict[str, Any] = {"on_output": log.debug}
        if urns:
            # Targeted like `up`: an untargeted refresh reads every resource of the stack,
            # which the controller's least-privilege role is not allowed to.
            kwargs["target"] = urns
            kwargs["target_dependents"] = True
        if refresh:
            self.refreshes += 1
            self._metrics.refreshes.inc()
            # run_program: a targeted refresh that does not run the program cannot load an
            # explicit provider (the engine stops with "unknown provider ... for resource",
            # seen with the render-mode Kubernetes provider).
            stack.refresh(**kwargs, run_program=True)
        result = stack.up(**kwargs)
        outputs = getattr(result, "outputs", None)
        return _plain(outputs if outputs else stack.outputs())

    def _reconcile(self, applied: Mapping[str, int], outputs: Mapping[str, Any]) -> None:
        """Register replicas the outputs list; forget retired ones that are gone."""
        listed: set[str] = set()
        for item in outputs.get("replicas") or []:
            group, index = item.get("group"), item.get("index")
            if group not in GROUPS or index is None:
                continue
            rid = f"{group}-{int(index)}"
            listed.add(rid)
            address = item.get("address")
            if not address or int(index) >= applied.get(group, 0):
                continue
            url = _url(str(address), self.service_port)
            rec = self.registry.get(rid)
            if rec is None or (rec.url != url and not rec.draining):
                self.registry.register(
                    rid, url, spot=bool(item.get("spot", group == SPOT_GROUP)), group=group,
                    index=int(index), accelerator=item.get("accelerator"),
                    state=ReplicaState.STARTING,
                )
        for rid in list(self._retiring):
            group, index = _group_of(rid), _index_of(rid)
            if group is not None and index is not None and index >= applied.get(group, 0):
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


def _group_of(replica_id: str) -> str | None:
    for group in GROUPS:
        if replica_id.startswith(group + "-") and replica_id[len(group) + 1 :].isdigit():
            return group
    return None


def _index_of(replica_id: str) -> int | None:
    tail = replica_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None
