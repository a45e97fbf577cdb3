"""Several controllers on VMs (AWS, GCP): how many, in which zones, and the lease they share.

With ``skyform:controllerReplicas`` >= 2 a VM service runs that many controllers, each a
load balancer, behind the cloud's own network load balancer (components/clouds/aws_lb.py,
gcp_lb.py); one of them, the holder of the leader lease, alone autoscales and runs ``up``s
(lb_agent/control/leadership.py). The lease is one object in the stack's files bucket, the
bucket the controllers already take their project bundle from, written with the bucket's
conditional writes (lb_agent/control/leases/s3.py, gcs.py). With 1 (the VM default) nothing
of this exists and the stack is exactly what it was.

This module owns the controllers' zones, the lease object's key and the agent config's
``lease:`` section; the count is ``DeploymentPlan.controller_replicas`` (components/stack_config.py
reads and checks ``skyform:controllerReplicas``).
"""

from __future__ import annotations

from components.clouds.common import DeploymentPlan
from components.locations import default_zone, region_zones
from lb_agent.contract import LeaseConfig

#: Where the leader lease lives in the stack's files bucket: outside the bundle prefix
#: (``controller/``) and the uploads, so each grant names exactly its own objects.
LEASE_PREFIX = "lease/"


def controller_zones(plan: DeploymentPlan, count: int) -> list[str]:
    """Where the controllers run: the first where the one controller always ran
    (``skyform:zone``, else the region's default zone), the others spread over the region's
    other zones (components/locations.py), round robin when there are more controllers than
    zones."""
    home = plan.zone or default_zone(plan.cloud, plan.region) or plan.region
    order = [home, *(z for z in region_zones(plan.cloud, plan.region) if z != home)]
    return [order[i % len(order)] for i in range(count)]


def lease_key(plan: DeploymentPlan) -> str:
    """The leader lease object's key in the files bucket: one per service."""
    return f"{LEASE_PREFIX}{plan.name}.json"


def lease_config(plan: DeploymentPlan, kind: str, bucket: str) -> LeaseConfig:
    """The agent config's ``lease:`` section of every controller (the same for all)."""
    return LeaseConfig(kind=kind, bucket=bucket, name=lease_key(plan))
