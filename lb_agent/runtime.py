"""AgentRuntime: the state every part of the agent shares (config, registry, load, metrics).

It owns the routing table: the READY, non-draining, non-ejected replicas of the active
versions (blue-green updates route to one version only), rebuilt whenever
the registry changes, and the per-replica ``Target`` objects whose in-flight counts the
proxy maintains. The autoscaler (lb_agent/control/scaler.py) reads arrivals and in-flight counts,
calls ``drain`` and publishes ``autoscaler_status`` here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from lb_agent.config import AgentConfig
from lb_agent.control.arrivals import ArrivalInbox, ArrivalWindow
from lb_agent.control.leadership import Leadership, resolve_identity
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState
from lb_agent.control.store import StateStore
from lb_agent.dataplane.admission import ApiKeys, Breaker, RateLimiter, WaitQueue
from lb_agent.dataplane.affinity import Affinity
from lb_agent.dataplane.forwarding import trusted_networks
from lb_agent.dataplane.policies import Policy, build_policy
from lb_agent.dataplane.target import Target
from lb_agent.metrics import AgentMetrics, RuntimeCollector

if TYPE_CHECKING:  # these import this module; the runtime only holds references
    from lb_agent.control.cluster import ClusterClient
    from lb_agent.control.scaler import Scaler


class AgentRuntime:
    """Shared state of one agent process."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store or StateStore(config.state_file)
        self.registry = Registry(self.store, clock)
        self.arrivals = ArrivalWindow()
        #: With several load balancers: this one's role, the lease holder and the term
        #: (the election updates it); a lone load balancer is the leader of term 0.
        identity = resolve_identity(config.lease.identity)
        self.leadership = Leadership(identity, holder=identity)
        #: The leader merges its followers' arrival counts into ``arrivals`` here.
        self.inbox = ArrivalInbox(self.arrivals)
        #: A follower's client for cluster calls to the leader (None: a lone load balancer).
        self.cluster: ClusterClient | None = None
        self.autoscaler_status: dict[str, Any] | None = None
        #: The running scaler (lb_agent.control.scaler.run_scaler sets it; None without one).
        self.scaler: Scaler | None = None
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self.metrics = AgentMetrics(self.metrics_registry)
        self.policy: Policy = build_policy(
            config.policy, target_qps_per_replica=config.target_qps_per_replica,
            **config.routing.policy_options(),
        )
        routing = config.routing
        #: Session affinity (None when ``routing.session_header`` is empty).
        self.session_header: bytes = routing.session_header.lower().encode()
        self.affinity: Affinity | None = (
            Affinity(routing.max_sessions, routing.prefix_balance_abs,
                     routing.prefix_balance_rel) if routing.session_header else None)
        adm = config.admission
        self.api_keys = ApiKeys(adm.api_keys, [(d.name, d.sha256) for d in adm.api_key_digests])
        self.rate_limiter = RateLimiter(adm.rate_limit_rps, adm.rate_limit_burst)
        #: Keys with limits of their own (``api_key_digests[].rate_limit_rps``), by name.
        self.key_limiters = {d.name: RateLimiter(d.rate_limit_rps, d.rate_limit_burst or 0)
                             for d in adm.api_key_digests if d.rate_limit_rps is not None}
        self.trusted_proxies = trusted_networks(adm.trusted_proxies)
        self.queue = WaitQueue(adm.queue_max_depth)
        self.cap = adm.max_in_flight_per_replica
        #: replica id -> its circuit breaker (only when ``admission.breaker_failures`` > 0).
        self.breakers: dict[str, Breaker] = {}
        self.breakers_on = adm.breaker_failures > 0
        self._gated = bool(self.cap or self.breakers_on)
        self.targets: dict[str, Target] = {}
        self.routable: list[Target] = []
        self.bound_ports: dict[str, int] = {}
        # Replicas that failed to connect: out of routing until their next successful probe.
        self.ejected: set[str] = set()
        #: replica id -> the last probe's outcome ("HTTP 200", "HTTP 404", "timeout after 5s").
        self.probe_results: dict[str, str] = {}
        #: Versions the load balancer routes to (None: every version). The scaler sets it
        #: from the update mode (lb_agent.control.rollout.active_versions); static replicas always.
        self.active_versions: frozenset[int] | None = None
        self.registry.add_listener(self.rebuild_routing)
        # Static replicas come from the config: drop those a previous config listed.
        configured = {rep.replica_id for rep in config.replicas}
        for rec in self.registry.list():
            if rec.static and rec.replica_id not in configured:
                self.registry.remove(rec.replica_id)
        for rep in config.replicas:
            self.registry.register(
                rep.replica_id, rep.url, version=rep.version, spot=rep.spot,
                accelerator=rep.accelerator, static=True,
            )
        self.rebuild_routing()
        self.metrics_registry.register(RuntimeCollector(self))

    # -- routing table -------------------------------------------------------------
    def rebuild_routing(self) -> None:
        """Recompute ``routable`` from the registry (called on every registry change)."""
        routable: list[Target] = []
        live_ids = set()
        for rec in self.registry.list():
            live_ids.add(rec.replica_id)
            t = self.targets.get(rec.replica_id)
            if t is None or t.url != rec.url:
                # A new URL is a new process: a fresh Target (count 0); requests still running
                # on the old one decrement the old object.
                t = Target(rec.replica_id, rec.url, rec.accelerator, rec.version)
                self.targets[rec.replica_id] = t
            t.accelerator = rec.accelerator
            t.version = rec.version
            if (
                rec.state is ReplicaState.READY
                and not rec.draining
                and rec.replica_id not in self.ejected
                and (rec.static or self.active_versions is None
                     or rec.version in self.active_versions)
            ):
                routable.append(t)
        for rid in [r for r in self.targets if r not in live_ids]:
            if self.targets[rid].in_flight <= 0:
                del self.targets[rid]
        for rid in [r for r in self.probe_results if r not in live_ids]:
            del self.probe_results[rid]
        for rid in [r for r in self.breakers if r not in live_ids]:
            del self.breakers[rid]
        self.routable = routable
        self.policy.on_targets_changed(routable)
        if routable:
            self.notify_routable()

    def notify_routable(self) -> None:
        """Wake the first request waiting in the queue for a replica."""
        self.queue.wake()

    # -- admission -----------------------------------------------------------------------
    def admissible(self, tried: AbstractSet[str] | None = None) -> list[Target]:
        """Routable replicas that may take a request now: not in ``tried``, under the
        per-replica cap, breaker not open."""
        c = self.routable
        if tried:
            c = [t for t in c if t.replica_id not in tried]
        if not self._gated:
            return c
        cap = self.cap
        return [t for t in c
                if not (cap and t.in_flight >= cap) and self._breaker_allows(t.replica_id)]

    async def wait_for_slot(self, timeout: float) -> bool:
        """Wait in the FIFO queue until a replica can take a request (``admissible``); False
        after ``timeout`` seconds or at once when the queue is full (both counted in the
        ``rejected`` metric). HTTP requests and WebSocket handshakes share the queue."""
        since = time.perf_counter()
        full = len(self.queue) >= self.queue.max_depth
        ok = await self.queue.wait_turn(lambda: bool(self.admissible()), timeout)
        if not ok:
            self.metrics.rejected.labels(reason="queue_full" if full else "queue_timeout").inc()
        self.metrics.queue_wait.observe(time.perf_counter() - since)
        return ok

    def limiter_for(self, who: str | None) -> RateLimiter:
        """The rate limiter of the key named ``who``: its own, else the shared one."""
        if who is None:
            return self.rate_limiter
        return self.key_limiters.get(who, self.rate_limiter)

    def _breaker_allows(self, replica_id: str) -> bool:
        b = self.breaker(replica_id)
        return b is None or b.allows()

    def breaker(self, replica_id: str) -> Breaker | None:
        """The circuit breaker of ``replica_id`` (None when breakers are off)."""
        adm = self.config.admission
        if not adm.breaker_failures:
            return None
        b = self.breakers.get(replica_id)
        if b is None:
            b = Breaker(adm.breaker_failures, adm.breaker_cooldown_seconds,
                        adm.breaker_successes)
            self.breakers[replica_id] = b
        return b

    def eject(self, replica_id: str) -> None:
        """Take a replica out of routing until its next successful probe.

        The prober clears ``ejected`` as part of the record update a success makes, so the
        routing table is rebuilt once.
        """
        if replica_id not in self.ejected:
            self.ejected.add(replica_id)
            self.rebuild_routing()

    # -- load ------------------------------------------------------------------------
    def in_flight(self, replica_id: str) -> int:
        """Requests currently proxied to ``replica_id``."""
        t = self.targets.get(replica_id)
        return 0 if t is None else t.in_flight

    def in_flight_counts(self) -> dict[str, int]:
        """In-flight count of every known replica."""
        return {rid: t.in_flight for rid, t in self.targets.items()}

    def total_in_flight(self) -> int:
        """Sum of all in-flight counts."""
        return sum(t.in_flight for t in self.targets.values())

    async def drain(self, replica_id: str, timeout: float) -> bool:
        """Stop routing new requests to ``replica_id`` and wait for its in-flight to reach 0.

        Returns True when it drained within ``timeout`` seconds (or was unknown/idle).
        """
        self.registry.mark_draining(replica_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight(replica_id) > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        return True

    def close(self) -> None:
        """Close the state store."""
        self.store.close()

