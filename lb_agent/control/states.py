"""SkyServe's replica states (serve_state.ReplicaStatus) and which of them are terminal."""

from __future__ import annotations

import enum


class ReplicaState(enum.StrEnum):
    """A replica's lifecycle state, with SkyServe's names (``sky/serve/serve_state.py``)."""

    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    READY = "READY"
    NOT_READY = "NOT_READY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    FAILED = "FAILED"
    FAILED_INITIAL_DELAY = "FAILED_INITIAL_DELAY"
    FAILED_PROBING = "FAILED_PROBING"
    FAILED_PROVISION = "FAILED_PROVISION"
    FAILED_CLEANUP = "FAILED_CLEANUP"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """SHUTTING_DOWN, PREEMPTED, UNKNOWN and every FAILED* state: never probed or routed to."""
        return self in _TERMINAL

    @property
    def is_probed(self) -> bool:
        """States the prober checks: a launched replica that is not terminal."""
        return self in (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.NOT_READY)


_TERMINAL = frozenset(
    {
        ReplicaState.SHUTTING_DOWN,
        ReplicaState.PREEMPTED,
        ReplicaState.UNKNOWN,
        ReplicaState.FAILED,
        ReplicaState.FAILED_INITIAL_DELAY,
        ReplicaState.FAILED_PROBING,
        ReplicaState.FAILED_PROVISION,
        ReplicaState.FAILED_CLEANUP,
    }
)
