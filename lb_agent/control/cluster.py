"""Cluster calls between the load balancers of one service (several load balancers, one leader).

The leader answers (admin API, admin token): ``GET /cluster/state`` (its replica set, the
versions it routes to, its autoscaler's published status and, when they changed, the
autoscaler's and the version book's persisted state) and ``POST /cluster/arrivals`` (a
follower's per-second arrival counts, lb_agent.control.arrivals). Each follower
(``ClusterClient``) polls the state every ``SYNC_SECONDS`` and mirrors it (``apply_state``):
replicas the leader added or removed, the leader's control of each one (version, draining,
PROVISIONING/SHUTTING_DOWN and the terminal states), while STARTING/READY/NOT_READY come from
the follower's own probes. It keeps the leader's autoscaler state in its own state store, so a
follower that is elected carries on where the leader stopped (target, counters, versions). A
registration that reaches a follower is forwarded to the leader with the caller's credential
and address (``forward``). ``lead`` is the leader's work the election runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry

from lb_agent.control.leadership import LEADER, LeaseState
from lb_agent.control.registry import ReplicaRecord
from lb_agent.control.states import ReplicaState

if TYPE_CHECKING:
    from lb_agent.runtime import AgentRuntime

log = logging.getLogger(__name__)

#: Seconds between a follower's syncs of the replica set and its arrival reports.
SYNC_SECONDS = 1.0
REPORT_SECONDS = 1.0
#: Seconds a cluster call may take.
CALL_TIMEOUT_SECONDS = 5.0
#: Headers of a registration a follower forwards: the caller's bearer credential and address
#: (the leader checks both as if the replica had called it; the call carries the admin token).
FORWARDED_AUTH = "x-skyform-forwarded-auth"
FORWARDED_FOR = "x-skyform-forwarded-for"
#: On every forwarded call: a load balancer never forwards a call again (two that each
#: believe the other leads, for a moment, do not pass it back and forth).
FORWARDED = "x-skyform-forwarded"
#: Replica states the leader decides (the follower takes them as they are); the probed states
#: (STARTING, READY, NOT_READY) come from the follower's own probes.
_LEADER_STATES = frozenset(s for s in ReplicaState if not s.is_probed)
#: Record fields the leader owns.
_CONTROL_FIELDS = ("version", "spot", "accelerator", "group", "index", "draining", "static")


class ClusterError(Exception):
    """A cluster call failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# -- the leader's side -------------------------------------------------------------------
def cluster_state(runtime: AgentRuntime, known_ticks: int | None) -> dict[str, Any]:
    """What ``GET /cluster/state`` answers (the leader only)."""
    from lb_agent.control.scaler import STATE_KEY, VERSIONS_KEY

    scaler = runtime.scaler
    ticks = None if scaler is None else scaler.ticks
    out: dict[str, Any] = {
        "leader": runtime.leadership.identity,
        "term": runtime.leadership.term,
        "replicas": [rec.to_json() for rec in runtime.registry.list()],
        "active_versions": None if runtime.active_versions is None
        else sorted(runtime.active_versions),
        "autoscaler": runtime.autoscaler_status,
        "ticks": ticks,
    }
    if ticks is not None and ticks != known_ticks:
        out["autoscaler_state"] = runtime.store.get_json(STATE_KEY)
        out["versions_state"] = runtime.store.get_json(VERSIONS_KEY)
    return out


# -- the follower's side -----------------------------------------------------------------
def apply_state(runtime: AgentRuntime, data: Mapping[str, Any]) -> int:
    """Mirror the leader's state in this follower; returns the number of records changed."""
    from lb_agent.control.scaler import STATE_KEY, VERSIONS_KEY

    registry = runtime.registry
    changed = 0
    seen: set[str] = set()
    for item in data.get("replicas") or []:
        theirs = ReplicaRecord.from_json(item)
        seen.add(theirs.replica_id)
        mine = registry.get(theirs.replica_id)
        if mine is None or mine.url != theirs.url:
            rec = registry.register(theirs.replica_id, theirs.url, version=theirs.version,
                                    spot=theirs.spot, accelerator=theirs.accelerator,
                                    group=theirs.group, index=theirs.index,
                                    state=theirs.state, static=theirs.static)
            rec.ready_once = theirs.ready_once
            rec.draining = theirs.draining
            registry.update(rec)
            changed += 1
            continue
        dirty = False
        for name in _CONTROL_FIELDS:
            if getattr(mine, name) != getattr(theirs, name):
                setattr(mine, name, getattr(theirs, name))
                dirty = True
        if theirs.state is not mine.state and (
                theirs.state in _LEADER_STATES or mine.state in _LEADER_STATES):
            mine.state = theirs.state
            dirty = True
        if dirty:
            registry.update(mine)
            changed += 1
    for rec in registry.list():
        if rec.replica_id not in seen and not rec.static:
            registry.remove(rec.replica_id)
            changed += 1
    active = data.get("active_versions")
    versions = None if active is None else frozenset(int(v) for v in active)
    if versions != runtime.active_versions:
        runtime.active_versions = versions
        runtime.rebuild_routing()
    runtime.autoscaler_status = data.get("autoscaler")
    if isinstance(data.get("autoscaler_state"), dict):
        runtime.store.put_json(STATE_KEY, data["autoscaler_state"])
    if isinstance(data.get("versions_state"), dict):
        runtime.store.put_json(VERSIONS_KEY, data["versions_state"])
    return changed


class ClusterClient:
    """A follower's calls to the leader: sync, arrival reports, forwarded registrations."""

    def __init__(self, runtime: AgentRuntime) -> None:
        from lb_agent.control.arrivals import ArrivalReporter

        self.runtime = runtime
        self.reporter = ArrivalReporter(runtime.arrivals)
        self._session: aiohttp.ClientSession | None = None
        self._ticks: int | None = None
        self._synced_term: int | None = None
        self.syncs = 0
        self.reports = 0
        self.last_error: str | None = None
        #: Set once this load balancer knows the replica set: its first sync, or it leads.
        self.known = asyncio.Event()
        #: Called when the leader cannot be reached (the election tries the lease at once).
        self.on_unreachable: Callable[[], None] | None = None

    def _leader_url(self) -> str:
        lead = self.runtime.leadership
        if lead.role == LEADER:
            raise ClusterError(409, "this load balancer is the leader")
        if not lead.holder or not lead.address:
            raise ClusterError(503, "no leader is elected yet; retry in a few seconds")
        return f"http://{lead.address}"

    async def _call(self, method: str, path: str, *, json_body: Any = None,
                    headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECONDS))
        url = self._leader_url() + path
        all_headers = {"Authorization": f"Bearer {self.runtime.config.token}",
                       **(headers or {})}
        try:
            async with self._session.request(method, url, json=json_body,
                                             headers=all_headers) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {"detail": f"the leader answered HTTP {resp.status} without JSON"}
                return resp.status, body
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ClusterError(
                503, f"the leader ({self.runtime.leadership.holder} at "
                     f"{self.runtime.leadership.address}) is not reachable: "
                     f"{type(exc).__name__}: {exc}") from None

    async def sync(self) -> bool:
        """Fetch the leader's state and mirror it; False when there is no leader to ask."""
        lead = self.runtime.leadership
        if self._synced_term != lead.term:
            self._ticks = None  # a new leader: take its autoscaler state whatever its ticks
        query = "" if self._ticks is None else f"?ticks={self._ticks}"
        status, body = await self._call("GET", f"/cluster/state{query}")
        if status != 200 or not isinstance(body, dict):
            raise ClusterError(502, f"the leader refused the sync: HTTP {status}: "
                                    f"{_detail(body)}")
        apply_state(self.runtime, body)
        if "autoscaler_state" in body:
            self._ticks = body.get("ticks")
        self._synced_term = lead.term
        self.syncs += 1
        self.known.set()
        return True

    async def report(self) -> int:
        """Send the arrivals completed since the last accepted batch; returns how many."""
        lead = self.runtime.leadership
        key = (lead.holder, lead.term)
        now = self.runtime.clock()
        counts = self.reporter.batch(key, now)
        body = {"sender": lead.identity, "counts": {str(k): v for k, v in counts.items()}}
        status, answer = await self._call("POST", "/cluster/arrivals", json_body=body)
        if status != 200:
            raise ClusterError(502, f"the leader refused the arrivals: HTTP {status}: "
                                    f"{_detail(answer)}")
        self.reporter.accepted(key, now)
        self.reports += 1
        return sum(counts.values())

    async def forward(self, method: str, path: str, *, body: Any = None,
                      replica_auth: str | None, source: str) -> tuple[int, Any]:
        """Pass a registration call to the leader: with the admin token and, for a replica's
        call, its credential and address for the leader to check."""
        headers = {FORWARDED: "1"}
        if replica_auth is not None:
            headers.update({FORWARDED_AUTH: replica_auth, FORWARDED_FOR: source})
        return await self._call(method, path, json_body=body, headers=headers)

    async def run(self) -> None:
        """Sync and report once a second while following, until cancelled."""
        try:
            while True:
                if self.runtime.leadership.role == LEADER:
                    self.known.set()
                elif self.runtime.leadership.address:
                    for call in (self.sync, self.report):
                        try:
                            await call()
                            self.last_error = None
                        except ClusterError as exc:
                            self.last_error = exc.detail
                            log.debug("cluster call failed: %s", exc.detail)
                            if exc.status == 503 and self.on_unreachable is not None:
                                self.on_unreachable()
                            break
                await asyncio.sleep(min(SYNC_SECONDS, REPORT_SECONDS))
        finally:
            await self.close()

    async def wait_known(self, timeout: float) -> bool:
        """Wait until the replica set is known (the first sync, or elected), at most
        ``timeout`` seconds; the proxy starts accepting after it, so a load balancer that
        joins the endpoint does not answer 503 for want of a replica list."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.known.is_set() and self.runtime.leadership.role != LEADER:
            if loop.time() >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.known.wait(), min(0.05, deadline - loop.time()))
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _detail(body: Any) -> str:
    return str(body.get("detail")) if isinstance(body, dict) and "detail" in body else str(body)


async def lead(runtime: AgentRuntime, state: LeaseState) -> None:
    """The leader's work for one term: the scaler (autoscaler and deployer), when the config
    has one, with its metrics in a registry of the term (a later term registers them anew)."""
    if not (runtime.config.autoscaler_enabled or runtime.config.deployer is not None):
        await asyncio.Event().wait()  # nothing to run; lead until cancelled
    from lb_agent.control.scaler import run_scaler

    term_metrics = CollectorRegistry(auto_describe=True)
    runtime.metrics_registry.register(term_metrics)
    try:
        await run_scaler(runtime, metrics_registry=term_metrics)
        await asyncio.Event().wait()  # the scaler ended by itself: still the leader
    finally:
        runtime.scaler = None
        with contextlib.suppress(KeyError):
            runtime.metrics_registry.unregister(term_metrics)
