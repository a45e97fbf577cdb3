"""The Deployer protocol: how the scaler turns decisions into replicas, and shared helpers.

A deployer launches and removes replicas. The scaler drains a replica before it calls
``remove``; a deployer never removes a replica that is still taking requests. Replicas a
deployer has launched but that have not registered yet are reported by ``pending`` so the
autoscaler counts them (PROVISIONING) instead of launching more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lb_agent.backoff import Backoff as Backoff  # the deployers' import path
from lb_agent.control.fleet import ONDEMAND, ONDEMAND_ID_OFFSET, parse_replica, replica_number
from lb_agent.control.states import ReplicaState

if TYPE_CHECKING:
    from lb_agent.control.placement.policy import Placer

#: The on-demand replica group of generation 1 (lb_agent.control.fleet names the later ones).
ONDEMAND_GROUP = ONDEMAND

_TRAILING_INT = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class PlannedReplica:
    """A replica the deployer launched (or is launching) that is not registered yet."""

    replica_id: str
    seq: int
    spot: bool
    group: str | None = None
    index: int | None = None
    state: ReplicaState = ReplicaState.PROVISIONING


def replica_seq(replica_id: str, group: str | None = None) -> int:
    """SkyServe's integer replica id for ordering: launch order. A Pulumi group replica gets
    its SKYPILOT_SERVE_REPLICA_ID (lb_agent.control.fleet.replica_number: on-demand +1000, later
    generations higher still); any other id its trailing number + 1."""
    parsed = parse_replica(replica_id)
    if parsed is not None:
        return replica_number(parsed[0], parsed[1])
    m = _TRAILING_INT.search(replica_id)
    n = int(m.group(1)) + 1 if m else 0
    if group == ONDEMAND_GROUP:
        n += ONDEMAND_ID_OFFSET
    return n


@runtime_checkable
class Deployer(Protocol):
    """What the scaler needs from a way of running replicas."""

    kind: str
    #: True when replicas of several service versions can run side by side (each launch
    #: runs the spec of the version ``set_version`` named last).
    runs_versions: bool
    #: The service version the deployer found recorded where it deploys (the stack's
    #: fleet), once ``start`` has read it; None where nothing records one.
    recorded_version: int | None
    #: The placement policy choosing each launch's location; None: the deployer has one
    #: place.
    placer: Placer | None

    def set_version(self, version: int, service: Mapping[str, Any]) -> None:
        """New launches run ``service`` as ``version``."""

    def replica_failure(self, replica_id: str) -> dict[str, Any] | None:
        """Why ``replica_id`` failed (``step``, ``exit_code``) when the deployer saw its
        process end; None when it knows nothing."""

    async def start(self) -> None:
        """Begin background work (worker tasks); called once by the scaler."""

    async def close(self) -> None:
        """Stop background work. Local replicas are ended; cloud replicas are left running."""

    async def scale_up(self, spot: bool | None) -> str:
        """Launch one replica (spot, on-demand, or the service's default when None).

        Returns its replica id at once; the launch itself may finish later.
        """

    def choose_removal(self, replica_id: str) -> str:
        """The replica that will really go when the autoscaler picks ``replica_id``.

        Pulumi groups shrink from the highest index, so they map the choice to that one; the
        scaler drains exactly the returned replica.
        """

    async def remove(self, replica_id: str) -> None:
        """Remove a replica the scaler has drained."""

    async def replace(self, replica_id: str, reason: str) -> None:
        """A replica vanished (preempted, deregistered, failed): clean up / bring it back."""

    def owns(self, replica_id: str) -> bool:
        """True when this deployer manages ``replica_id``."""

    def pending(self) -> list[PlannedReplica]:
        """Launched replicas that have not registered yet."""

    def launch_time(self, replica_id: str) -> float | None:
        """When ``replica_id``'s launch went out, while it is not READY; None when the
        deployer does not know (its ``seq`` then orders launches)."""

    def poll(self) -> None:
        """Notice replicas that ended by themselves (called before each decision)."""

    def status(self) -> dict[str, Any]:
        """Deployer state for /status (busy, counts, errors)."""
