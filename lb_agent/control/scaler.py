"""The scaling loop: observe, decide (lb_agent.control.autoscaler), drain, apply (a Deployer).

Every decision interval (20 s, 5 s while the target is 0; configurable) the loop:
1. lets the deployer notice replicas that ended by themselves, and hands every replica that
   vanished (deregistered on a spot notice, PREEMPTED, FAILED_PROBING, ...) to the deployer to
   clean up or bring back;
2. feeds the load balancer's arrival times to the autoscaler and runs it over the registry's
   replicas plus the ones the deployer launched that have not registered yet;
3. persists the autoscaler state in the StateStore (restored on start: no churn after a
   restart, SkyServe #8562);
4. applies the decisions: scale-ups go to the deployer; a scale-down first drains the replica
   (SHUTTING_DOWN at once, so it gets no new request; in-flight requests finish, bounded by
   the drain timeout) and only then asks the deployer to remove it.
It publishes ``runtime.autoscaler_status`` and Prometheus metrics. Static replicas from the
config file are routed to but never scaled.

Updates (``apply_update``; a restart with a changed service spec is one too) make version
N+1: the replicas of a version that differs only in its ``service:`` section take the new
version in place, other changes get new replicas from the deployer; the autoscaler retires
old replicas by the update mode, the load balancer routes to the active versions
(lb_agent.control.rollout), and a new version that fails before it was ever READY stops the rollout
with the reason in ``/status`` and the metrics. The versions survive a restart (StateStore).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from lb_agent import constants as C
from lb_agent.config import AgentConfig
from lb_agent.control.autoscaler import (
    Decision,
    FallbackRequestRateAutoscaler,
    Operator,
    PolicyParams,
    ReplicaView,
    RequestRateAutoscaler,
    Tuning,
    autoscaler_class,
    build_autoscaler,
)
from lb_agent.control.deployers import Deployer, build_deployer
from lb_agent.control.deployers.base import replica_seq
from lb_agent.control.rollout import (
    DONE,
    FAILED,
    IN_PROGRESS,
    ROLLING,
    VersionBook,
    VersionedReplica,
    active_versions,
    check_mode,
    same_service,
)
from lb_agent.control.states import ReplicaState
from lb_agent.dataplane.policies import build_policy
from lb_agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

STATE_KEY = "autoscaler.state"
VERSIONS_KEY = "versions.state"
#: Terminal states that mean the replica is gone and must be replaced.
VANISHED_STATES = frozenset(
    {
        ReplicaState.PREEMPTED,
        ReplicaState.FAILED_PROBING,
        ReplicaState.FAILED_INITIAL_DELAY,
        ReplicaState.FAILED,
        ReplicaState.FAILED_PROVISION,
        ReplicaState.UNKNOWN,
    }
)


class _Metrics:
    def __init__(self, reg: CollectorRegistry) -> None:
        self.target = Gauge("skyform_autoscaler_target_replicas", "autoscaler target",
                            registry=reg)
        self.qps = Gauge("skyform_autoscaler_qps", "QPS over the autoscaler window", registry=reg)
        self.decisions = Counter("skyform_autoscaler_decisions", "scale decisions",
                                 ["operator"], registry=reg)
        self.drains = Counter("skyform_autoscaler_drains", "scale-down drains by outcome",
                              ["outcome"], registry=reg)
        self.version = Gauge("skyform_service_version", "the latest service version",
                             registry=reg)
        self.version_replicas = Gauge(
            "skyform_version_replicas", "live (non-terminal) replicas per version and state",
            ["version", "state"], registry=reg)
        self.version_active = Gauge(
            "skyform_version_active", "1 for each version the load balancer routes to",
            ["version"], registry=reg)
        self.rollout = Gauge(
            "skyform_rollout", "the current rollout (value 1) with its status and, when it "
            "failed, the reason", ["from_version", "to_version", "mode", "status", "reason"],
            registry=reg)


class Scaler:
    """One service's scaling loop (tick-driven so tests can step it)."""

    def __init__(
        self,
        runtime: AgentRuntime,
        autoscaler: RequestRateAutoscaler,
        deployer: Deployer | None,
        *,
        drain_timeout: float = C.DEFAULT_DRAIN_SECONDS,
        clock: Callable[[], float] | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.runtime = runtime
        self.autoscaler = autoscaler
        self.deployer = deployer
        self.drain_timeout = drain_timeout
        self.clock = clock or runtime.clock
        self.restored = False
        saved = runtime.store.get_json(STATE_KEY)
        if isinstance(saved, dict):
            self.restored = autoscaler.load_state(saved)
        # Replicas that left the registry without the scaler removing them (a spot notice,
        # DELETE /replicas/ID), noticed on every registry change so none is missed between
        # two decisions.
        self._gone: set[str] = set()
        self._quiet: set[str] = set()  # removals the scaler/deployer make themselves
        self._known = self._owned_ids()
        runtime.registry.add_listener(self._on_registry_change)
        self._handled: set[tuple[str, float]] = set()
        self._removing: dict[str, asyncio.Task[None]] = {}
        self._retired: set[str] = set()
        self.drained_clean = 0
        self.drain_timeouts = 0
        self.last_decisions: list[str] = []
        self.last_error: str | None = None
        self.ticks = 0
        # A leader of several load balancers builds a scaler per term, each in a registry
        # of the term (lb_agent.control.cluster.lead).
        self._metrics = _Metrics(metrics_registry or runtime.metrics_registry)
        self.decided = asyncio.Event()
        self.book = self._load_book()
        runtime.registry.add_listener(self._refresh_active)
        if deployer is not None:
            deployer.set_version(self.book.latest, self.book.specs[self.book.latest])
        service = runtime.config.service
        if service is not None and not same_service(self.book.specs[self.book.latest], service):
            # The config changed while the agent was down (a `pulumi up`): version N+1.
            self.apply_update(service, mode=self._config_mode())
        self._refresh_active()

    @classmethod
    def from_runtime(cls, runtime: AgentRuntime, *,
                     metrics_registry: CollectorRegistry | None = None) -> Scaler:
        cfg = runtime.config
        section = dict(cfg.autoscaler or {})
        params = PolicyParams.from_service(cfg.service)
        if not cfg.autoscaler_enabled:
            params = PolicyParams(min_replicas=params.min_replicas,
                                  max_replicas=params.min_replicas)
        tuning = Tuning.from_config(section)
        autoscaler = build_autoscaler(params, tuning)
        deployer = build_deployer(cfg, runtime, metrics_registry=metrics_registry)
        placer = deployer.placer if deployer is not None else None
        if placer is not None and isinstance(autoscaler, FallbackRequestRateAutoscaler):
            # The placement policy may refine the spot/on-demand split (docs/placement.md).
            autoscaler.counts_hook = placer.fallback_counts
        drain = float(section.get("drain_timeout_seconds", C.DEFAULT_DRAIN_SECONDS))
        return cls(runtime, autoscaler, deployer, drain_timeout=drain,
                   metrics_registry=metrics_registry)

    # -- versions -------------------------------------------------------------------------
    def _config_mode(self) -> str | None:
        mode = (self.runtime.config.autoscaler or {}).get("update_mode")
        return None if mode is None else check_mode(str(mode))

    def _load_book(self) -> VersionBook:
        book = VersionBook.from_json(self.runtime.store.get_json(VERSIONS_KEY))
        self._fresh_book = book is None or book.latest not in book.specs
        if book is None or book.latest not in book.specs:
            # No versions on this controller (a first start, or lost state): start from the
            # version the stack config recorded (skyform:version, via the agent config).
            recorded = (self.runtime.config.autoscaler or {}).get("version")
            latest = max(self.autoscaler.state.latest_version,
                         int(recorded) if isinstance(recorded, int) else 0)
            self.autoscaler.state.latest_version = latest
            book = VersionBook(latest=latest, mode=self._config_mode() or ROLLING,
                               specs={latest: dict(self.runtime.config.service or {})})
        self.autoscaler.state.update_mode = book.mode
        self.runtime.store.put_json(VERSIONS_KEY, book.to_json())
        return book

    def _adopt_recorded_version(self, recorded: int | None) -> None:
        """A controller that lost its state starts from the version the stack recorded (the
        Pulumi deployer reads it from the stack's fleet), not from 1 (SkyServe #8562)."""
        book = self.book
        if not self._fresh_book or recorded is None or recorded <= book.latest:
            return
        old = book.latest
        book.specs = {recorded: book.specs.pop(old)}
        book.latest = recorded
        self.autoscaler.state.latest_version = max(self.autoscaler.state.latest_version, recorded)
        for rec in self.runtime.registry.list():
            if self._owned(rec.replica_id, rec.static) and rec.version == old:
                self.runtime.registry.set_version(rec.replica_id, recorded)
        if self.deployer is not None:
            self.deployer.set_version(recorded, book.specs[recorded])
        self._save_book()
        self._refresh_active()
        log.info("no version state here: starting from the stack's recorded version %d",
                 recorded)

    def _save_book(self) -> None:
        self.runtime.store.put_json(VERSIONS_KEY, self.book.to_json())

    def apply_update(self, service: dict[str, Any], *, mode: str | None = None,
                     config: AgentConfig | None = None) -> dict[str, Any]:
        """Make ``service`` the latest version (``sky serve update``); returns what happened.

        Nothing changes when the spec is the one running. Otherwise version N+1: replicas of
        every version whose spec differs only in its ``service:`` section are relabelled (no
        relaunch), the autoscaler adopts the new policy at once and the deployer launches
        new replicas of the new spec; the old ones go as the mode says. ``config`` (the agent
        config rebuilt for the new spec: probe, load-balancing policy) replaces the
        runtime's; without it only the service spec and the policy are taken over.
        """
        mode = check_mode(mode or self.book.mode)
        book = self.book
        if same_service(book.specs.get(book.latest), service):
            if mode != book.mode:
                book.mode = self.autoscaler.state.update_mode = mode
                self._save_book()
            return {"changed": False, "version": book.latest, "mode": mode}
        params = PolicyParams.from_service(service)
        if not self.runtime.config.autoscaler_enabled:
            params = PolicyParams(min_replicas=params.min_replicas,
                                  max_replicas=params.min_replicas)
        previous = book.latest
        version = max(previous, self.autoscaler.state.latest_version) + 1
        if autoscaler_class(params) is not type(self.autoscaler):
            fresh = build_autoscaler(params, self.autoscaler.tuning)
            fresh.load_state(self.autoscaler.dump_state())
            self.autoscaler = fresh
        self.autoscaler.update_policy(params, version, mode)
        # A deployer that cannot launch replicas of a given spec (the Pulumi one: the
        # program renders every replica of a group from the stack's current YAML) keeps its
        # replicas and relabels them all; only the local deployer runs versions side by side.
        side_by_side = self.deployer is not None and self.deployer.runs_versions
        reusable = set(book.reusable_versions(service)) if side_by_side else set(
            book.specs) | {v.version for v in self.views()}
        reused = []
        for rec in self.runtime.registry.list():
            if (self._owned(rec.replica_id, rec.static) and not rec.state.is_terminal
                    and rec.version in reusable):
                self.runtime.registry.set_version(rec.replica_id, version)
                reused.append(rec.replica_id)
        if self.deployer is not None:
            self.deployer.set_version(version, service)
        self._take_config(service, config)
        book.specs[version] = dict(service)
        book.latest = version
        book.mode = mode
        book.rollout = {
            "from": previous, "to": version, "mode": mode, "reused": sorted(reused),
            "status": IN_PROGRESS, "reason": None, "started_at": self.clock(),
            "finished_at": None,
        }
        self._save_book()
        self._persist()
        self._refresh_active()
        log.info("service update: version %d -> %d (%s, %d replica(s) reused)",
                 previous, version, mode, len(reused))
        return {"changed": True, "version": version, "mode": mode, "reused": sorted(reused)}

    def _take_config(self, service: dict[str, Any], config: AgentConfig | None) -> None:
        """The runtime takes the new spec: probe settings, and the load-balancing policy
        (skyform controls the agent, so unlike SkyServe a changed policy applies)."""
        old = self.runtime.config
        new = config if config is not None else old.replace(
            service=service,
            policy=str(service.get("load_balancing_policy") or old.policy).lower(),
        )
        self.runtime.config = new
        if new.policy != old.policy or new.target_qps_per_replica != old.target_qps_per_replica:
            self.runtime.policy = build_policy(
                new.policy, target_qps_per_replica=new.target_qps_per_replica)
            self.runtime.rebuild_routing()

    def _refresh_active(self) -> None:
        """Route to the active versions (blue-green: one); called on every registry change,
        so the switch happens the moment the new version has ``min_replicas`` READY."""
        book = self.book
        active: frozenset[int] | None = None
        if book.mode != ROLLING:
            views = [VersionedReplica(r.version, r.state) for r in self.runtime.registry.list()
                     if self._owned(r.replica_id, r.static) and not r.draining]
            active = frozenset(active_versions(book.mode, views, book.min_replicas())) or None
        if active != self.runtime.active_versions:
            self.runtime.active_versions = active
            self.runtime.rebuild_routing()

    def _track_rollout(self, views: list[ReplicaView]) -> None:
        """Mark the rollout done (no old replica left) or failed (the new version failed
        before it was ever READY: SkyServe's fail-fast guard stops launching and retiring)."""
        r = self.book.rollout
        if r is None or r["status"] != IN_PROGRESS:
            return
        latest = [v for v in views if v.version == r["to"]]
        if self.autoscaler.failing(views):
            r["status"] = FAILED
            r["reason"] = self._failure_reason(latest)
            r["finished_at"] = self.clock()
            log.warning("rollout to version %d failed: %s", r["to"], r["reason"])
        elif (not any(v.version < r["to"] and not v.is_terminal for v in views)
              and any(v.state is ReplicaState.READY for v in latest)):
            r["status"] = DONE
            r["finished_at"] = self.clock()
        else:
            return
        self._save_book()

    def _failure_reason(self, latest: list[ReplicaView]) -> str:
        parts = []
        for v in latest:
            if v.state is ReplicaState.FAILED:
                info = (self.deployer.replica_failure(v.replica_id)
                        if self.deployer is not None else None)
                why = (f"{info['step']} exited with code {info['exit_code']}" if info
                       else "its setup or run failed")
                parts.append(f"{v.replica_id} FAILED: {why}")
            elif v.state is ReplicaState.FAILED_INITIAL_DELAY:
                parts.append(f"{v.replica_id} FAILED_INITIAL_DELAY: not ready within "
                             f"{self.runtime.config.probe.initial_delay_seconds:g} s")
        return ("the new version failed before any replica was READY; the old version keeps "
                "serving (" + "; ".join(parts) + ")")

    def current_active_versions(self) -> list[int]:
        """The versions the load balancer routes to now, from the registry as it is (not
        the last decision's snapshot): blue-green's chosen version, else (rolling) every
        version with a READY replica of this scaler's."""
        if self.runtime.active_versions:
            return sorted(self.runtime.active_versions)
        return sorted({r.version for r in self.runtime.registry.list()
                       if r.state is ReplicaState.READY and self._owned(r.replica_id, r.static)})

    def versions_status(self, views: list[ReplicaView]) -> dict[str, Any]:
        """Per-version counts, the active versions and the rollout's progress."""
        per: dict[int, dict[str, int]] = {}
        routable = {t.replica_id for t in self.runtime.routable}
        for v in views:
            if v.is_terminal:
                continue
            d = per.setdefault(v.version, {"live": 0, "ready": 0, "routable": 0})
            d["live"] += 1
            d["ready"] += v.state is ReplicaState.READY
            d["routable"] += v.replica_id in routable
        active = self.current_active_versions()
        rollout = None
        if self.book.rollout is not None:
            r = self.book.rollout
            new = per.get(r["to"], {"live": 0, "ready": 0})
            rollout = {**r, "new_live": new["live"], "new_ready": new["ready"],
                       "blocked": self.autoscaler.blocked if r["status"] == IN_PROGRESS else None,
                       "old_live": sum(d["live"] for v, d in per.items() if v < r["to"]),
                       "target": self.autoscaler.final_target}
        return {"version": self.book.latest, "update_mode": self.book.mode,
                "versions": {str(v): d for v, d in sorted(per.items())},
                "active_versions": active, "rollout": rollout}

    # -- one decision -------------------------------------------------------------------
    def _owned(self, replica_id: str, static: bool) -> bool:
        if static:
            return False
        return self.deployer.owns(replica_id) if self.deployer is not None else True

    async def _handle_vanished(self) -> None:
        if self.deployer is None:
            return
        for rec in self.runtime.registry.list():
            if not self._owned(rec.replica_id, rec.static):
                continue
            if rec.state is ReplicaState.SHUTTING_DOWN:
                continue  # ours to remove, or being removed
            if not rec.state.is_terminal:
                self._retired.discard(rec.replica_id)  # an id Pulumi reused
            key = (rec.replica_id, rec.registered_at)
            if rec.state in VANISHED_STATES and key not in self._handled:
                self._handled.add(key)
                await self._replace(rec.replica_id, rec.state.value)
        gone, self._gone = sorted(self._gone), set()
        for rid in gone:
            if self.runtime.registry.get(rid) is None:
                await self._replace(rid, "deregistered")

    async def _replace(self, replica_id: str, reason: str) -> None:
        assert self.deployer is not None
        self._quiet.add(replica_id)
        try:
            await self.deployer.replace(replica_id, reason)
        finally:
            self._quiet.discard(replica_id)

    def _owned_ids(self) -> set[str]:
        return {
            rec.replica_id for rec in self.runtime.registry.list()
            if self._owned(rec.replica_id, rec.static)
        }

    def _on_registry_change(self) -> None:
        now = self._owned_ids()
        for rid in self._known - now:
            if rid not in self._removing and rid not in self._retired and rid not in self._quiet:
                self._gone.add(rid)
        self._known = now

    def views(self) -> list[ReplicaView]:
        """The replicas the autoscaler counts: registered ones plus deployer placeholders."""
        out: list[ReplicaView] = []
        known: set[str] = set()
        for rec in self.runtime.registry.list():
            if not self._owned(rec.replica_id, rec.static):
                continue
            known.add(rec.replica_id)
            out.append(
                ReplicaView(
                    rec.replica_id, replica_seq(rec.replica_id, rec.group), rec.state,
                    rec.version, rec.spot, rec.accelerator, rec.ready_once,
                    None if self.deployer is None else self.deployer.launch_time(rec.replica_id),
                )
            )
        if self.deployer is not None:
            version = self.autoscaler.state.latest_version
            for p in self.deployer.pending():
                if p.replica_id not in known:
                    out.append(ReplicaView(p.replica_id, p.seq, p.state, version, p.spot,
                                           launched_at=self.deployer.launch_time(p.replica_id)))
        return out

    async def tick(self) -> list[Decision]:
        """Observe, decide, persist, apply. Returns the decisions taken."""
        now = self.clock()
        if isinstance(self.autoscaler, FallbackRequestRateAutoscaler):
            self.autoscaler.now = now
        if self.deployer is not None:
            self.deployer.poll()
        await self._handle_vanished()
        self.autoscaler.collect(self.runtime.arrivals.timestamps(now), now)
        views = self.views()
        decisions = self.autoscaler.generate_decisions(views, now)
        self._track_rollout(views)
        self.book.forget(v.version for v in views if not v.is_terminal)
        # Off the event loop: at high request rates the arrival list is large.
        await asyncio.to_thread(self._persist)
        self.ticks += 1
        if self.deployer is not None:
            for d in decisions:
                await self._apply(d)
        self.last_decisions = [_describe(d) for d in decisions]
        for d in decisions:
            self._metrics.decisions.labels(operator=d.operator.value).inc()
        self._publish(now)
        self.decided.set()
        self.decided = asyncio.Event()
        return decisions

    def _persist(self) -> None:
        self.runtime.store.put_json(STATE_KEY, self.autoscaler.dump_state())

    async def _apply(self, d: Decision) -> None:
        assert self.deployer is not None
        if d.operator is Operator.SCALE_UP:
            rid = await self.deployer.scale_up(d.spot)
            log.info("scale up: launched %s", rid)
            return
        assert d.replica_id is not None
        target = self.deployer.choose_removal(d.replica_id)
        if target in self._removing:
            return
        self._retired.add(target)
        if self.runtime.registry.get(target) is not None:
            # Out of routing now, and not counted by the next decision.
            self.runtime.registry.set_state(target, ReplicaState.SHUTTING_DOWN)
        self._removing[target] = asyncio.create_task(
            self._drain_and_remove(target), name=f"skyform-drain-{target}"
        )

    async def _drain_and_remove(self, replica_id: str) -> None:
        assert self.deployer is not None
        try:
            if self.runtime.registry.get(replica_id) is not None:
                clean = await self.runtime.drain(replica_id, self.drain_timeout)
                if clean:
                    self.drained_clean += 1
                    self._metrics.drains.labels(outcome="clean").inc()
                else:
                    self.drain_timeouts += 1
                    self._metrics.drains.labels(outcome="timeout").inc()
                    log.warning("replica %s: drain timed out after %.0f s with %d in flight",
                                replica_id, self.drain_timeout,
                                self.runtime.in_flight(replica_id))
            await self.deployer.remove(replica_id)
            log.info("scale down: removed %s", replica_id)
        except Exception as exc:
            self.last_error = f"removing {replica_id}: {exc}"
            log.exception("removing %s failed", replica_id)
        finally:
            self._removing.pop(replica_id, None)

    # -- status -----------------------------------------------------------------------
    def _publish(self, now: float) -> None:
        views = self.views()
        live = [v for v in views if not v.is_terminal and
                v.version == self.autoscaler.state.latest_version]
        info = self.autoscaler.info()
        self._metrics.target.set(info["final_target"])
        self._metrics.qps.set(info["qps"])
        versions = self.versions_status(views)
        self._publish_versions(views, versions)
        self.runtime.autoscaler_status = {
            **info,
            **versions,
            "enabled": self.runtime.config.autoscaler_enabled,
            "decision_interval_seconds": self.autoscaler.decision_interval(),
            "last_decision_at": now,
            "last_decisions": self.last_decisions,
            "replicas": {
                "live": len(live),
                "ready": sum(1 for v in live if v.state is ReplicaState.READY),
                "pending": sum(1 for v in live if v.state in (
                    ReplicaState.PENDING, ReplicaState.PROVISIONING, ReplicaState.STARTING)),
            },
            "draining": sorted(self._removing),
            "drains": {"clean": self.drained_clean, "timed_out": self.drain_timeouts},
            "restored": self.restored,
            "deployer": None if self.deployer is None else self.deployer.status(),
            "error": self.last_error,
        }

    def _publish_versions(self, views: list[ReplicaView], versions: dict[str, Any]) -> None:
        m = self._metrics
        m.version.set(versions["version"])
        m.version_replicas.clear()
        for v in views:
            if not v.is_terminal:
                m.version_replicas.labels(version=str(v.version), state=v.state.value).inc()
        m.version_active.clear()
        for v in versions["active_versions"]:
            m.version_active.labels(version=str(v)).set(1)
        m.rollout.clear()
        r = versions["rollout"]
        if r is not None:
            m.rollout.labels(from_version=str(r["from"]), to_version=str(r["to"]),
                             mode=r["mode"], status=r["status"],
                             reason=r["reason"] or "").set(1)

    def resume_removals(self) -> None:
        """Finish removing the replicas a previous scaler marked SHUTTING_DOWN (it stopped
        mid-drain: the agent restarted, or another load balancer's leader was lost), so none
        stays out of routing yet counted as removing forever."""
        for rec in self.runtime.registry.list():
            rid = rec.replica_id
            if (rec.state is ReplicaState.SHUTTING_DOWN and self._owned(rid, rec.static)
                    and rid not in self._removing):
                self._retired.add(rid)
                self._removing[rid] = asyncio.create_task(
                    self._drain_and_remove(rid), name=f"skyform-drain-{rid}")

    async def wait_removals(self) -> None:
        """Wait for scale-downs in progress (tests and shutdown)."""
        while self._removing:
            await asyncio.gather(*list(self._removing.values()), return_exceptions=True)

    async def run(self) -> None:
        """Tick until cancelled; ends the deployer's local work on the way out."""
        if self.deployer is not None:
            await self.deployer.start()
            self._adopt_recorded_version(self.deployer.recorded_version)
            self.resume_removals()
        try:
            while True:
                try:
                    await self.tick()
                    self.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # keep deciding; say what went wrong
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("scaler tick failed")
                    if self.runtime.autoscaler_status is not None:
                        self.runtime.autoscaler_status["error"] = self.last_error
                await asyncio.sleep(self.autoscaler.decision_interval())
        finally:
            for task in list(self._removing.values()):
                task.cancel()
            for task in list(self._removing.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.deployer is not None:
                await self.deployer.close()
            self.detach()

    def detach(self) -> None:
        """Stop following the registry: a scaler whose run ended (a leader's term over) must
        not keep setting the routed versions."""
        self.runtime.registry.remove_listener(self._on_registry_change)
        self.runtime.registry.remove_listener(self._refresh_active)


def _describe(d: Decision) -> str:
    if d.operator is Operator.SCALE_UP:
        kind = {None: "", True: " spot", False: " on-demand"}[d.spot]
        return f"scale_up{kind}"
    return f"scale_down {d.replica_id}"


async def run_scaler(runtime: AgentRuntime, *,
                     metrics_registry: CollectorRegistry | None = None) -> None:
    """Entry point the server starts as a task when the autoscaler or a deployer is set (with
    several load balancers, the leader's work: lb_agent.control.cluster.lead)."""
    if not runtime.config.service:
        runtime.autoscaler_status = {
            "enabled": False,
            "error": "no service spec in the agent config: nothing to scale",
        }
        return
    try:
        scaler = Scaler.from_runtime(runtime, metrics_registry=metrics_registry)
    except (ValueError, TypeError) as exc:
        runtime.autoscaler_status = {"enabled": False, "error": str(exc)}
        log.error("autoscaler not started: %s", exc)
        return
    runtime.scaler = scaler
    await scaler.run()

