"""The agent's status snapshot: one JSON-ready dict read by every view of a running agent.

``GET /status`` on the admin port answers it, ``skyform status`` fetches it, and ``skyform
local`` (which runs the agent in-process) builds the same dict and renders it with the same
renderer (components/commands/status.py). It owns which facts a view may show: per replica its
registry record, in-flight count, routing, breaker, last probe and, for a replica whose process
exited, the exit (``failures`` of the local deployer); per service the arrivals, the queue, the
versions routed to now and the scaler's last published status; with several load balancers,
this one's role (leader or follower), the lease holder and the term.
"""

from __future__ import annotations

from typing import Any

from lb_agent.control.states import ReplicaState
from lb_agent.runtime import AgentRuntime


def deployer_status(runtime: AgentRuntime) -> dict[str, Any]:
    """The deployer's state now (the running scaler's), else as of the last decision."""
    scaler = runtime.scaler
    if scaler is not None and scaler.deployer is not None:
        return scaler.deployer.status()
    auto = runtime.autoscaler_status or {}
    return dict(auto.get("deployer") or {})


def active_versions(runtime: AgentRuntime) -> list[int] | None:
    """The versions routed to now (the scaler reads the registry), not as of the last
    decision, which can lag the first READY by a decision interval."""
    if runtime.scaler is not None:
        return runtime.scaler.current_active_versions()
    versions = (runtime.autoscaler_status or {}).get("active_versions")
    return None if versions is None else list(versions)


def replica_detail(state: str, probe: str | None, failure: dict[str, Any] | None) -> str:
    """Why a replica is in its state: the exit of its process, or its last probe."""
    if failure is not None:
        return f"{failure['step']} exited with code {failure['exit_code']}"
    if state == ReplicaState.READY.value:
        return ""
    return f"last probe: {probe}" if probe else ""


def exited(deployer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Replicas whose process exited, from a deployer's status: id -> step, exit code, log
    and its last lines (the local deployer's ``failures``; a cloud deployer counts its
    failed ``up``s there instead, a number, which is not about replicas)."""
    failures = deployer.get("failures")
    return dict(failures) if isinstance(failures, dict) else {}


def snapshot(runtime: AgentRuntime) -> dict[str, Any]:
    """The whole status of the agent as one JSON-ready dict (see the module docstring)."""
    now = runtime.clock()
    deployer = deployer_status(runtime)
    failures = exited(deployer)
    routable = {t.replica_id for t in runtime.routable}
    where = deployer.get("replica_locations") or {}
    replicas = []
    for rec in runtime.registry.list():
        item = rec.to_json()
        rid = rec.replica_id
        probe = runtime.probe_results.get(rid)
        failure = failures.get(rid)
        b = runtime.breakers.get(rid)
        item.update(
            in_flight=runtime.in_flight(rid),
            ejected=rid in runtime.ejected,
            routable=rid in routable,
            breaker=None if b is None else b.state,
            probe=probe,
            exit_code=None if failure is None else failure.get("exit_code"),
            log=None if failure is None else failure.get("log"),
            detail=replica_detail(item["state"], probe, failure),
            # Region, zone, candidate and market (None without placement).
            location=where.get(rid),
        )
        replicas.append(item)
    service = runtime.config.service or {}
    return {
        "service": service.get("name"),
        "policy": runtime.config.policy,
        "qps": runtime.arrivals.qps(now),
        "requests_in_window": runtime.arrivals.count(now),
        "in_flight": runtime.total_in_flight(),
        "ready_replicas": len(runtime.routable),
        "queue_depth": len(runtime.queue),
        "replicas": replicas,
        "active_versions": active_versions(runtime),
        "deployer": deployer,
        "exited": failures,
        # Every candidate location with its state (active, preempted, blocked until).
        "locations": deployer.get("locations") or [],
        "placer": deployer.get("placer"),
        "autoscaler": runtime.autoscaler_status,
        # Several load balancers: this one's role, the lease holder and the term.
        "leadership": runtime.leadership.to_json(),
    }
