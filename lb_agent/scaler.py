"""The scaling loop: observe, decide (lb_agent.autoscaler), drain, apply (a Deployer).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from lb_agent import constants as C
from lb_agent.autoscaler import (
    Decision,
    Operator,
    PolicyParams,
    ReplicaView,
    RequestRateAutoscaler,
    Tuning,
    build_autoscaler,
)
from lb_agent.deployers import Deployer, build_deployer
from lb_agent.deployers.base import replica_seq
from lb_agent.runtime import AgentRuntime
from lb_agent.states import ReplicaState

log = logging.getLogger(__name__)

STATE_KEY = "autoscaler.state"
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
    def __init__(self, runtime: AgentRuntime) -> None:
        reg = runtime.metrics_registry
        self.target = Gauge("skyform_autoscaler_target_replicas", "autoscaler target",
                            registry=reg)
        self.qps = Gauge("skyform_autoscaler_qps", "QPS over the autoscaler window", registry=reg)
        self.decisions = Counter("skyform_autoscaler_decisions", "scale decisions",
                                 ["operator"], registry=reg)
        self.drains = Counter("skyform_autoscaler_drains", "scale-down drains by outcome",
                              ["outcome"], registry=reg)


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
        self._metrics = _Metrics(runtime)
        self.decided = asyncio.Event()

    @classmethod
    def from_runtime(cls, runtime: AgentRuntime) -> Scaler:
        cfg = runtime.config
        section = dict(cfg.autoscaler or {})
        params = PolicyParams.from_service(cfg.service)
        if not cfg.autoscaler_enabled:
            params = PolicyParams(min_replicas=params.min_replicas,
                                  max_replicas=params.min_replicas)
        tuning = Tuning.from_config(section)
        autoscaler = build_autoscaler(params, tuning)
        deployer = build_deployer(cfg, runtime)
        drain = float(section.get("drain_timeout_seconds", C.DEFAULT_DRAIN_SECONDS))
        return cls(runtime, autoscaler, deployer, drain_timeout=drain)

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
                )
            )
        if self.deployer is not None:
            version = self.autoscaler.state.latest_version
            for p in self.deployer.pending():
                if p.replica_id not in known:
                    out.append(ReplicaView(p.replica_id, p.seq, p.state, version, p.spot))
        return out

    async def tick(self) -> list[Decision]:
        """Observe, decide, persist, apply. Returns the decisions taken."""
        now = self.clock()
        if self.deployer is not None:
            self.deployer.poll()
        await self._handle_vanished()
        self.autoscaler.collect(self.runtime.arrivals.timestamps(now), now)
        decisions = self.autoscaler.generate_decisions(self.views(), now)
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
        self.runtime.autoscaler_status = {
            **info,
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

    async def wait_removals(self) -> None:
        """Wait for scale-downs in progress (tests and shutdown)."""
        while self._removing:
            await asyncio.gather(*list(self._removing.values()), return_exceptions=True)

    async def run(self) -> None:
        """Tick until cancelled; ends the deployer's local work on the way out."""
        if self.deployer is not None:
            await self.deployer.start()
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


def _describe(d: Decision) -> str:
    if d.operator is Operator.SCALE_UP:
        kind = {None: "", True: " spot", False: " on-demand"}[d.spot]
        return f"scale_up{kind}"
    return f"scale_down {d.replica_id}"


async def run_scaler(runtime: AgentRuntime) -> None:
    """Entry point the server starts as a task when the autoscaler or a deployer is set."""
    if not runtime.config.service:
        runtime.autoscaler_status = {
            "enabled": False,
            "error": "no service spec in the agent config: nothing to scale",
        }
        return
    try:
        scaler = Scaler.from_runtime(runtime)
    except (ValueError, TypeError) as exc:
        runtime.autoscaler_status = {"enabled": False, "error": str(exc)}
        log.error("autoscaler not started: %s", exc)
        return
    setattr(runtime, "scaler", scaler)  # noqa: B010 - for tests and `skyform local`
    await scaler.run()


def status_line(status: dict[str, Any] | None) -> str:
    """A one-line summary of ``autoscaler_status`` for logs and non-TTY output."""
    if not status:
        return "autoscaler: off"
    reps = status.get("replicas") or {}
    return (
        f"target={status.get('final_target')} qps={status.get('qps')} "
        f"live={reps.get('live')} ready={reps.get('ready')} "
        f"up={status.get('upscale_counter')}/{status.get('scale_up_threshold')} "
        f"down={status.get('downscale_counter')}/{status.get('scale_down_threshold')}"
    )
