"""Service versions and rollouts (``sky serve update`` semantics), as pure code.

Owns: what counts as a change (a new version), when the running replicas can take the new
version in place (only the ``service:`` section changed: SkyServe's in-place reuse, with
``any_of``/set resources compared as a set and any ``file_mounts``/``workdir`` forcing new
replicas), which versions take traffic (rolling: every version with a READY replica;
blue-green: the newest version with ``min_replicas`` READY, else the oldest with any READY),
and the ``VersionBook``: every live version's spec, the update mode and the current rollout,
persisted as JSON in the agent's StateStore so a restarted agent keeps its version
(SkyServe #8562). The autoscaler (lb_agent.control.autoscaler) decides which old replicas go; the
scaler (lb_agent.control.scaler) applies updates and reports progress.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lb_agent import constants as C
from lb_agent.control.states import ReplicaState

ROLLING = "rolling"
BLUE_GREEN = "blue_green"
UPDATE_MODES = (ROLLING, BLUE_GREEN)

#: Keys of the normalized spec that come from the ``service:`` section (SkyServe strips
#: ``service`` before comparing), plus where the file came from.
SERVICE_KEYS = frozenset(
    {"source", "name", "service_spec", "service_port", "load_balancing_policy",
     "use_ondemand_fallback"}
)

IN_PROGRESS = "in_progress"
DONE = "done"
FAILED = "failed"


def check_mode(mode: str) -> str:
    """``mode`` if it is an update mode, else ValueError naming the valid ones."""
    if mode not in UPDATE_MODES:
        raise ValueError(f"update mode: expected one of {', '.join(UPDATE_MODES)}, got {mode!r}")
    return mode


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def replica_spec(service: Mapping[str, Any]) -> dict[str, Any]:
    """What a replica is made of: the spec without the service section; set-like resources
    (``any_of``) sorted so their order does not matter."""
    out = {k: v for k, v in service.items() if k not in SERVICE_KEYS}
    resources = out.get("resources")
    if isinstance(resources, list) and out.get("resources_container") != "list":
        out["resources"] = sorted(resources, key=_canonical)
    return out


def same_service(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """True when nothing but the file's location differs (no new version)."""
    strip = lambda s: {k: v for k, v in (s or {}).items() if k != "source"}  # noqa: E731
    return _canonical(strip(a)) == _canonical(strip(b))


def can_reuse(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """SkyServe's in-place reuse: only the service section differs and there is nothing to
    copy to the replica (``file_mounts`` and ``workdir`` empty), so the running replicas take
    the new version without a relaunch."""
    if new.get("file_mounts") or new.get("workdir"):
        return False
    return _canonical(replica_spec(old)) == _canonical(replica_spec(new))


def min_replicas_of(service: Mapping[str, Any] | None) -> int:
    """``replica_policy.min_replicas`` of a version's spec (SkyServe's default 1)."""
    spec = (service or {}).get("service_spec") or {}
    policy = spec.get("replica_policy") or {}
    return int(policy.get("min_replicas", C.DEFAULT_MIN_REPLICAS))


@dataclass(frozen=True)
class VersionedReplica:
    """What the active-version rule needs about a replica."""

    version: int
    state: ReplicaState


def active_versions(
    mode: str, replicas: Iterable[VersionedReplica], min_replicas: Mapping[int, int]
) -> list[int]:
    """The versions the load balancer routes to (SkyServe's ``active_versions``).

    Rolling: every version with a READY replica. Blue-green: the newest version whose READY
    count reaches that version's ``min_replicas`` (at least 1: a version with
    ``min_replicas: 0`` and nothing READY never takes the traffic), else the oldest version
    with any READY replica.
    """
    ready: dict[int, int] = {}
    for r in replicas:
        if r.state is ReplicaState.READY:
            ready[r.version] = ready.get(r.version, 0) + 1
    if mode != BLUE_GREEN:
        return sorted(ready)
    for v in sorted(ready, reverse=True):
        if ready[v] >= max(1, min_replicas.get(v, C.DEFAULT_MIN_REPLICAS)):
            return [v]
    return [min(ready)] if ready else []


@dataclass
class VersionBook:
    """Every live version's spec, the update mode and the current rollout (persisted)."""

    latest: int = C.INITIAL_VERSION
    mode: str = ROLLING
    specs: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: {from, to, mode, reused, status, reason, started_at, finished_at} or None.
    rollout: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"latest": self.latest, "mode": self.mode,
                "specs": {str(k): v for k, v in self.specs.items()}, "rollout": self.rollout}

    @classmethod
    def from_json(cls, data: Any) -> VersionBook | None:
        """The book from ``to_json``; None when ``data`` is not one."""
        if not isinstance(data, dict):
            return None
        try:
            specs = {int(k): dict(v) for k, v in (data.get("specs") or {}).items()}
            rollout = data.get("rollout")
            return cls(latest=int(data["latest"]), mode=check_mode(str(data.get("mode", ROLLING))),
                       specs=specs, rollout=dict(rollout) if isinstance(rollout, dict) else None)
        except (KeyError, TypeError, ValueError):
            return None

    def min_replicas(self) -> dict[int, int]:
        return {v: min_replicas_of(s) for v, s in self.specs.items()}

    def reusable_versions(self, new: Mapping[str, Any]) -> list[int]:
        """Versions whose replicas can take ``new`` in place."""
        return [v for v, spec in sorted(self.specs.items()) if can_reuse(spec, new)]

    def forget(self, live_versions: Iterable[int]) -> None:
        """Drop the specs of versions no replica runs any more (never the latest)."""
        keep = set(live_versions) | {self.latest}
        self.specs = {v: s for v, s in self.specs.items() if v in keep}
