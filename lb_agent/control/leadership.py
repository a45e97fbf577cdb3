"""Leadership: which of several load balancers of one service is the controller.

Every load balancer serves traffic; exactly one holds the service's leader lease and alone
autoscales and runs ``up``s. A lease is a record (holder identity, the holder's cluster
address, expiry) kept where all load balancers can write it conditionally: a file lock
locally, a ``coordination.k8s.io`` Lease on Kubernetes, an object in the stack's files
bucket with conditional writes on AWS (S3 ``If-Match``/``If-None-Match``) and GCP (GCS
generation preconditions). The Pulumi stack lock stays the second guard against two ``up``s.

This module owns the protocol every lease store implements and the value they return; the
stores live beside it (``lb_agent/control/leases/``) and the election loop in the agent's
control plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LeaseState:
    """What a lease store holds after an acquire/renew attempt.

    ``holder`` is the identity of the load balancer holding the lease (``None``: nobody, or it
    expired), ``address`` where the holder's agent takes cluster calls (``host:port`` of its
    admin listener, reachable from the other load balancers), ``expires_at`` the wall-clock
    time (seconds since the epoch) the holder's claim lapses unless renewed, ``term`` a number
    that grows each time the lease changes hands (a fencing token for logs and tests).
    """

    holder: str | None
    address: str | None
    expires_at: float
    term: int

    def held_by(self, identity: str) -> bool:
        return self.holder == identity


class LeaseStore(Protocol):
    """One service's leader lease in one place.

    ``acquire_or_renew`` is the only write: it takes the lease when it is free or expired,
    renews it when ``identity`` holds it, and otherwise leaves it alone; it returns the state
    it saw or wrote, and is atomic against every other load balancer calling it (the store's
    conditional write). ``release`` gives the lease up at once when ``identity`` holds it (a
    clean shutdown), so a successor need not wait for expiry. Errors reaching the store raise
    ``LeaseUnavailable``; the caller then stops acting as leader once its last successful
    renewal is older than the lease duration.
    """

    duration_seconds: float

    async def acquire_or_renew(self, identity: str, address: str) -> LeaseState: ...

    async def release(self, identity: str) -> None: ...


class LeaseUnavailable(Exception):
    """The lease store could not be read or written (network, permission, server error)."""
