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


#: This load balancer's roles: ``leader`` (holds the lease: autoscales, runs ``up``s),
#: ``follower`` (another holds it) and ``candidate`` (nobody holds it that we know of).
LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"


@dataclass
class Leadership:
    """What one load balancer knows of the lease: its own identity and role, the holder, the
    holder's cluster address and the term. ``/status`` and the metrics show it; the follower's
    cluster calls go to ``address``. A lone load balancer (``lease.kind: none``) is always
    the leader of term 0."""

    identity: str
    role: str = LEADER
    holder: str | None = None
    address: str | None = None
    term: int = 0
    #: The last error reaching the lease store (None after a successful call).
    error: str | None = None
    #: How many times this load balancer became the leader.
    elected: int = 0

    @property
    def leading(self) -> bool:
        return self.role == LEADER

    def to_json(self) -> dict[str, object]:
        return {"identity": self.identity, "role": self.role, "holder": self.holder,
                "address": self.address, "term": self.term, "error": self.error,
                "elected": self.elected}


#: Environment variables naming this load balancer in the lease and where others reach it
#: (the Kubernetes Deployment sets them from the pod's name and IP).
IDENTITY_ENV = "SKYFORM_LB_IDENTITY"
ADDRESS_ENV = "SKYFORM_LB_ADDRESS"


def resolve_identity(configured: str) -> str:
    """``lease.identity``, else $SKYFORM_LB_IDENTITY, else ``<hostname>-<pid>``."""
    import os
    import socket

    return configured or os.environ.get(IDENTITY_ENV) or f"{socket.gethostname()}-{os.getpid()}"


def resolve_address(configured: str, admin_host: str, admin_port: int) -> str | None:
    """``lease.address``, else $SKYFORM_LB_ADDRESS, else the admin listen address (a wildcard
    host replaced by this host's address); None while the admin port is not known yet."""
    import os
    import socket

    if configured or os.environ.get(ADDRESS_ENV):
        return configured or os.environ[ADDRESS_ENV]
    if not admin_port:
        return None
    host = admin_host
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"[{host}]:{admin_port}" if ":" in host else f"{host}:{admin_port}"
