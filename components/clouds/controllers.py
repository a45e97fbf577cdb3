"""Several controllers on VMs (AWS, GCP): how many, in which zones, and the lease they share.

With ``skyform:controllerReplicas`` >= 2 a VM service runs that many controllers, each a
load balancer, behind the cloud's own network load balancer (components/clouds/aws_lb.py,
gcp_lb.py); one of them, the holder of the leader lease, alone autoscales and runs ``up``s
(lb_agent/control/leadership.py). The lease is one object in the stack's files bucket, the
bucket the controllers already take their project bundle from, written with the bucket's
conditional writes (lb_agent/control/leases/s3.py, gcs.py). With 1 (the VM default) there
is no load balancer, lease or controller subnet; only the replicas' start-up already names
the slots below, so that adding controllers later changes no replica.

Controller slots: the replicas register (and heartbeat) with any controller that answers
(templates/replica.sh.j2 tries them in turn; a follower forwards a registration to the
leader), so their start-up names every controller address there can ever be, and names the
same ones whatever ``skyform:controllerReplicas`` is: a change of the count, or a controller
VM restarted or replaced, never changes a replica's user data (which would replace it).
There are ``MAX_CONTROLLER_REPLICAS`` slots:

- slot 0 is the first controller, where the one controller always was (AWS: its own network
  interface in its zone's default subnet; GCP: its reserved internal address in the region's
  default subnet), so going from one controller to several moves nothing;
- slots 1..9 are fixed private addresses in a controller subnet of the stack's own, created
  only for the controllers that exist (``slot``): AWS subnets live in one zone, so
  each slot has a /28 of its own (in its controller's zone) inside the stack's /24 of
  ``AWS_SLOT_POOL``; a GCP subnet spans the region, so the slots share one /28 of
  ``GCP_SLOT_POOL``. The stack's block is chosen by its identity (``stack_identity``); a
  block another subnet already uses makes the subnet's creation fail at ``up``, naming the
  range.

This module owns the controllers' zones, their slots (addresses, subnets), the lease object's
key and the agent config's ``lease:`` section; the count is
``DeploymentPlan.controller_replicas`` (components/stack_config.py reads and checks
``skyform:controllerReplicas``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from components.clouds.common import DeploymentPlan, stack_identity
from components.locations import default_zone, region_zones
from components.stack_config import MAX_CONTROLLER_REPLICAS
from lb_agent.contract import LeaseConfig

#: AWS: where the stacks' controller blocks (a /24 each) are, inside the default VPC's
#: 172.31.0.0/16 and above its default subnets (one /20 per zone from 172.31.0.0).
AWS_SLOT_POOL = "172.31.128.0/17"
#: GCP: where the stacks' controller subnets (a /28 each) are, on the default network and
#: outside its auto-mode subnets (10.128.0.0/9).
GCP_SLOT_POOL = "10.64.0.0/10"
#: A slot subnet's size: a /28, the smallest subnet AWS takes, and on GCP room for the nine
#: slots besides the four addresses it reserves.
SLOT_SUBNET_PREFIX = 28
#: The first address a subnet lets an instance have: AWS reserves a subnet's first four
#: addresses (and the last), GCP its first two (and the last two).
FIRST_HOST = {"aws": 4, "gcp": 2}

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


@dataclass(frozen=True)
class Slot:
    """A controller slot (1..9): its fixed private address and the subnet that holds it."""

    index: int
    address: str
    subnet: str


def _block(plan: DeploymentPlan) -> ipaddress.IPv4Network:
    """The stack's controller block: a /24 of the AWS pool, a /28 of the GCP pool."""
    pool = ipaddress.IPv4Network(AWS_SLOT_POOL if plan.cloud == "aws" else GCP_SLOT_POOL)
    prefix = 24 if plan.cloud == "aws" else SLOT_SUBNET_PREFIX
    blocks = 1 << (prefix - pool.prefixlen)
    choice = int(stack_identity(plan), 16) % blocks
    return ipaddress.IPv4Network((int(pool.network_address) + (choice << (32 - prefix)),
                                  prefix))


def slot(plan: DeploymentPlan, index: int) -> Slot:
    """Slot ``index`` (1..9) of the stack's controllers (see the module docstring)."""
    if not 1 <= index < MAX_CONTROLLER_REPLICAS:
        raise ValueError(f"controller slot {index}: slots are 1..{MAX_CONTROLLER_REPLICAS - 1}")
    block = _block(plan)
    first = FIRST_HOST[plan.cloud]
    if plan.cloud == "aws":
        subnet = list(block.subnets(new_prefix=SLOT_SUBNET_PREFIX))[index]
        return Slot(index, str(subnet.network_address + first), str(subnet))
    return Slot(index, str(block.network_address + first + index - 1), str(block))


def slot_addresses(plan: DeploymentPlan) -> list[str]:
    """The fixed addresses of slots 1..9 (the replicas' user data names them all)."""
    return [slot(plan, i).address for i in range(1, MAX_CONTROLLER_REPLICAS)]


def controller_urls(first: str, plan: DeploymentPlan) -> tuple[str, ...]:
    """Every admin URL a replica may register with: slot 0's address ``first``, then slots
    1..9, whatever the count."""
    return tuple(f"http://{address}:{plan.admin_port}"
                 for address in (first, *slot_addresses(plan)))
