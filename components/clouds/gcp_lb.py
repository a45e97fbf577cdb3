"""GCP: several controllers behind a regional external passthrough Network Load Balancer
(``skyform:controllerReplicas``).

With two or more controllers (components/clouds/controllers.py) the service's endpoint is
the forwarding rule of a backend service-based external passthrough Network Load Balancer:

- ``skyform:gcp:NetworkLoadBalancer``: a reserved regional external address, a regional
  HTTP health check (``GET /health`` on the agent's admin port 20001), one unmanaged
  instance group per controller zone, a regional backend service (``EXTERNAL``, TCP,
  ``CONNECTION`` balancing) of those groups, and a forwarding rule of the address's TCP
  port 30001 to it.
- Firewall: the balancer passes packets through with the clients' own source addresses,
  so the existing rule (``skyform:allowedCidrs`` to the controllers' tag on 30001) already
  admits its traffic. Two rules are added, both to the controllers' tag only: Google's
  health-check probes to the admin port, and the controllers to each other's admin port
  (the load balancers report to the leader). The probe ranges are the ones Google documents
  for external passthrough Network Load Balancers (``HEALTH_CHECK_RANGES``):
  ``35.191.0.0/16``, ``209.85.152.0/22`` and ``209.85.204.0/22``; ``130.211.0.0/22`` probes
  only the proxy-based and internal balancers, so it is not admitted. Probes reach the
  admin port, which serves ``/health`` without a token and everything else with one.

The controllers share the leader lease ``lease/<service>.json`` in the stack's files bucket
(lb_agent/control/leases/gcs.py) through ``lease_grant``: a custom role of exactly
``LEASE_PERMISSIONS`` bound on the bucket under an IAM condition naming that one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.clouds.common import DeploymentPlan, gcp_labels
from components.clouds.controllers import lease_key

#: Google's health-check probe ranges for external passthrough Network Load Balancers.
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22")
#: The agent's health path on its admin port (lb_agent/admin.py).
HEALTH_PATH = "/health"
#: A controller that stops answering leaves the balancer in about 10 s (2 failed probes
#: 5 s apart), within the 15 s the leader lease takes to move.
HEALTH_INTERVAL_SECONDS, HEALTH_TIMEOUT_SECONDS, HEALTH_THRESHOLD = 5, 4, 2
#: What the lease store calls (lb_agent/control/leases/gcs.py): read the object, create it,
#: replace it (GCS needs delete besides create to overwrite an object).
LEASE_PERMISSIONS = ("storage.objects.create", "storage.objects.delete", "storage.objects.get")


def lease_condition(bucket: str, plan: DeploymentPlan) -> str:
    """CEL naming exactly the lease object (GCS IAM conditions name an object
    ``projects/_/buckets/<bucket>/objects/<name>``)."""
    return f"resource.name == 'projects/_/buckets/{bucket}/objects/{lease_key(plan)}'"


def lease_grant(name: str, plan: DeploymentPlan, *, role_id: pulumi.Input[str],
                project_id: pulumi.Input[str], bucket: pulumi.Input[str],
                member: pulumi.Input[str], opts: pulumi.ResourceOptions) -> list[pulumi.Resource]:
    """The controllers' lease permissions: a custom role of ``LEASE_PERMISSIONS`` and its
    binding on the files bucket, conditioned on the lease object alone."""
    role = gcp.projects.IAMCustomRole(
        f"{name}-lease-role", project=project_id, role_id=role_id,
        title=f"skyform leader lease of {plan.name}",
        description="read, create and replace the controllers' leader lease object",
        permissions=list(LEASE_PERMISSIONS), opts=opts,
    )
    binding = gcp.storage.BucketIAMMember(
        f"{name}-lease", bucket=bucket,
        role=pulumi.Output.all(project_id, role.role_id).apply(
            lambda a: f"projects/{a[0]}/roles/{a[1]}"),
        member=member,
        condition={"title": "skyform leader lease only",
                   "expression": pulumi.Output.from_input(bucket).apply(
                       lambda b: lease_condition(b, plan))},
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[role])),
    )
    return [role, binding]


@dataclass
class NetworkLoadBalancerArgs:
    plan: DeploymentPlan
    #: ``<service>-<hash>``: the prefix of the stack's global names (gcp.base_name).
    base: str
    #: Every controller's zone and instance self link, in the same order.
    zones: list[str]
    instances: list[pulumi.Output[str]]
    #: The controllers' network tag and the network.
    controller_tag: str
    network: str


class NetworkLoadBalancer(pulumi.ComponentResource):
    """The endpoint of several controllers: a regional external passthrough NLB."""

    address: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkLoadBalancerArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("skyform:gcp:NetworkLoadBalancer", name, None, opts)
        plan, base = args.plan, args.base
        child = pulumi.ResourceOptions(parent=self)
        labels = gcp_labels({**plan.labels, "skyform-service": plan.name,
                             "skyform-stack": plan.stack})
        gcp.compute.Firewall(
            f"{name}-health-checks", network=args.network, direction="INGRESS",
            allows=[{"protocol": "tcp", "ports": [str(plan.admin_port)]}],
            source_ranges=list(HEALTH_CHECK_RANGES), target_tags=[args.controller_tag],
            description="Google's health checks of the load balancer to the controllers",
            opts=child,
        )
        gcp.compute.Firewall(
            f"{name}-controllers-admin", network=args.network, direction="INGRESS",
            allows=[{"protocol": "tcp", "ports": [str(plan.admin_port)]}],
            source_tags=[args.controller_tag], target_tags=[args.controller_tag],
            description="the load balancers report to the leader", opts=child,
        )
        check = gcp.compute.RegionHealthCheck(
            f"{name}-health", name=f"{base}-controllers", region=plan.region,
            http_health_check={"port": plan.admin_port, "request_path": HEALTH_PATH},
            check_interval_sec=HEALTH_INTERVAL_SECONDS, timeout_sec=HEALTH_TIMEOUT_SECONDS,
            healthy_threshold=HEALTH_THRESHOLD, unhealthy_threshold=HEALTH_THRESHOLD,
            opts=child,
        )
        groups: list[gcp.compute.InstanceGroup] = []
        for zone in dict.fromkeys(args.zones):
            members = [link for z, link in zip(args.zones, args.instances, strict=True)
                       if z == zone]
            short = zone.removeprefix(f"{plan.region}-")
            groups.append(gcp.compute.InstanceGroup(
                f"{name}-{short}", name=f"{base}-controllers-{short}", zone=zone,
                instances=members,
                description=f"skyform controllers of {plan.name} in {zone}", opts=child,
            ))
        backend = gcp.compute.RegionBackendService(
            f"{name}-backend", name=f"{base}-controllers", region=plan.region,
            load_balancing_scheme="EXTERNAL", protocol="TCP", health_checks=check.id,
            backends=[{"group": g.self_link, "balancing_mode": "CONNECTION"} for g in groups],
            opts=child,
        )
        address = gcp.compute.Address(
            f"{name}-address", name=f"{base}-endpoint", address_type="EXTERNAL",
            region=plan.region, labels=labels, opts=child,
        )
        gcp.compute.ForwardingRule(
            f"{name}-rule", name=f"{base}-endpoint", region=plan.region,
            load_balancing_scheme="EXTERNAL", ip_protocol="TCP",
            ports=[str(plan.lb_port)], ip_address=address.address,
            backend_service=backend.self_link, labels=labels, opts=child,
        )
        self.address = address.address
        self.register_outputs({"address": self.address})
