"""AWS: several controllers behind a Network Load Balancer (``skyform:controllerReplicas``).

With two or more controllers (components/clouds/controllers.py) the service's endpoint is an
internet-facing Network Load Balancer, as the one controller's Elastic IP is today:

- ``skyform:aws:NetworkLoadBalancer``: the NLB in the controllers' zones' default subnets,
  a TCP listener on the public port 30001, a target group of every controller instance
  (TCP, health check ``HTTP GET /health`` on the agent's admin port 20001: the agent
  answers it as soon as it serves), and a security group of its own: clients from
  ``skyform:allowedCidrs`` to 30001; out only to the controllers' security group.
- The controllers' security group admits from the NLB's group the public port (client
  traffic: with client IP preservation, which instance targets have, AWS documents that a
  rule naming the load balancer's group admits it) and the admin port (health checks), and
  from itself the admin port (the load balancers report to the leader). The replicas keep
  admitting only the controllers' group, which now holds every controller.

The controllers share the leader lease ``lease/<service>.json`` in the stack's files bucket
(lb_agent/control/leases/s3.py); their role may get and put that one object
(``controller_policy``'s ``LeaderLease``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pulumi
import pulumi_aws as aws

from components.clouds.common import DeploymentPlan, resource_name, stack_identity
from components.clouds.controllers import controller_zones, lease_config, lease_key
from lb_agent.contract import LeaseConfig

#: The agent's health path on its admin port (lb_agent/admin.py).
HEALTH_PATH = "/health"
#: A controller that stops answering leaves the target group in about 10 s
#: (2 failed checks 5 s apart), well within the 15 s the leader lease takes to move.
HEALTH_INTERVAL_SECONDS, HEALTH_TIMEOUT_SECONDS, HEALTH_THRESHOLD = 5, 4, 2


class SeveralControllers(NamedTuple):
    """What ``Controller`` takes to run several controllers."""

    zones: list[str]
    lease: pulumi.Output[LeaseConfig]
    lease_arn: pulumi.Output[str]


def several_controllers(plan: DeploymentPlan, count: int, bucket_name: pulumi.Output[str],
                        bucket_arn: pulumi.Output[str]) -> SeveralControllers:
    """The controllers' zones and their shared lease in the files bucket."""
    key = lease_key(plan)
    return SeveralControllers(
        zones=controller_zones(plan, count),
        lease=bucket_name.apply(lambda bucket: lease_config(plan, "s3", bucket)),
        lease_arn=bucket_arn.apply(lambda arn: f"{arn}/{key}"),
    )


def lb_name(plan: DeploymentPlan) -> str:
    """The NLB's and target group's name (at most 32 characters, unique per account and
    region): ``sky-<service>-<stack id>``."""
    return f"sky-{resource_name(plan.name, max_len=16)}-{stack_identity(plan)[:8]}"


@dataclass
class NetworkLoadBalancerArgs:
    plan: DeploymentPlan
    #: Every controller's zone and instance id, in the same order.
    zones: list[str]
    instance_ids: list[pulumi.Output[str]]
    controller_sg_id: pulumi.Input[str]
    vpc_id: pulumi.Input[str]


class NetworkLoadBalancer(pulumi.ComponentResource):
    """The endpoint of several controllers: an internet-facing NLB forwarding TCP 30001."""

    dns_name: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkLoadBalancerArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("skyform:aws:NetworkLoadBalancer", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        tags = {**plan.labels, "skyform:service": plan.name, "skyform:stack": plan.stack,
                "skyform:stack-id": stack_identity(plan)}
        group = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id,
            description=f"skyform load balancer of {plan.name}", tags=tags, opts=child,
        )
        for i, cidr in enumerate(plan.allowed_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-clients-{i}", security_group_id=group.id, ip_protocol="tcp",
                from_port=plan.lb_port, to_port=plan.lb_port, cidr_ipv4=cidr,
                description="clients to the load balancer", opts=child,
            )
        for port, what in ((plan.lb_port, "traffic"), (plan.admin_port, "health checks")):
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-to-controllers-{port}", security_group_id=group.id,
                ip_protocol="tcp", from_port=port, to_port=port,
                referenced_security_group_id=args.controller_sg_id,
                description=f"the load balancer's {what} to the controllers", opts=child,
            )
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-from-lb-{port}", security_group_id=args.controller_sg_id,
                ip_protocol="tcp", from_port=port, to_port=port,
                referenced_security_group_id=group.id,
                description=f"the load balancer's {what} to the controllers", opts=child,
            )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-controllers-admin", security_group_id=args.controller_sg_id,
            ip_protocol="tcp", from_port=plan.admin_port, to_port=plan.admin_port,
            referenced_security_group_id=args.controller_sg_id,
            description="the load balancers report to the leader", opts=child,
        )
        zones = list(dict.fromkeys(args.zones))
        subnets = [aws.ec2.get_subnet_output(
            default_for_az=True, availability_zone=zone,
            opts=pulumi.InvokeOutputOptions(parent=self)).id for zone in zones]
        balancer = aws.lb.LoadBalancer(
            f"{name}", name=lb_name(plan), load_balancer_type="network", internal=False,
            subnets=subnets, security_groups=[group.id],
            enable_cross_zone_load_balancing=True, tags=tags, opts=child,
        )
        targets = aws.lb.TargetGroup(
            f"{name}-targets", name=lb_name(plan), port=plan.lb_port, protocol="TCP",
            target_type="instance", vpc_id=args.vpc_id,
            health_check={
                "protocol": "HTTP", "port": str(plan.admin_port), "path": HEALTH_PATH,
                "interval": HEALTH_INTERVAL_SECONDS, "timeout": HEALTH_TIMEOUT_SECONDS,
                "healthy_threshold": HEALTH_THRESHOLD, "unhealthy_threshold": HEALTH_THRESHOLD,
                "matcher": "200",
            },
            tags=tags, opts=child,
        )
        aws.lb.Listener(
            f"{name}-listener", load_balancer_arn=balancer.arn, port=plan.lb_port,
            protocol="TCP",
            default_actions=[{"type": "forward", "target_group_arn": targets.arn}],
            tags=tags, opts=child,
        )
        for index, instance_id in enumerate(args.instance_ids):
            aws.lb.TargetGroupAttachment(
                f"{name}-controller-{index}", target_group_arn=targets.arn,
                target_id=instance_id, port=plan.lb_port, opts=child,
            )
        self.dns_name = balancer.dns_name
        self.register_outputs({"dns_name": self.dns_name})
