"""AWS replica regions: the network of a region other than the controller's.

A security group cannot reference a group in another region, and every default VPC is
172.31.0.0/16 (two default VPCs cannot be peered), so a replica in another region cannot use
that region's default VPC and stay reachable from the controller alone. Each other region a
replica group of the fleet runs in gets, under one ``skyform:aws:ReplicaRegion`` component:

- its own provider (an ``aws.Provider`` for the region, a child of the component);
- a VPC with an address range of its own (``region_cidr``: a fixed table in 10.0.0.0/8, so
  never the controller's 172.31.0.0/16 and never another region's), an internet gateway
  (replicas download their models and packages), a route table and a subnet per zone used
  (``zone_cidr``: fixed per zone letter, so a new zone adds a subnet and changes no other);
- a VPC peering connection with the controller's VPC, requested from the replica region and
  accepted in the controller's, and routes both ways: the region's table sends the
  controller VPC's range over the peering, the controller VPC's main route table sends the
  region's range back;
- a security group admitting each controller's private address (``/32``: the first
  controller's and, with several, the others' fixed slot addresses, controllers.py) on
  the replica ports and nothing else inbound (the group itself for multi-node replicas,
  ``sshCidrs`` on 22 when set), and the region's AMI (looked up there, or the pinned one
  for the region).

The replicas' instance profile is global (IAM) and shared; their secrets and files stay in the
controller's region. The controller's security group admits every *menu* region's range on
the admin (registration) port from the user's ``up`` on (``admin_rule``): the agent's own
``up`` then never changes the controller's group, and a range no peering carries reaches
nothing.

The component is declared for every region of the menu but the controller's and has no
child while no group runs there: an unused region has no provider and no cloud resource, and
placing a replica in a new region adds children to that region's component only. Declaring
it for every menu region is what lets the agent's targeted ``up`` (at the stack output
``replicaGroupUrns``, which lists these components, with their dependents) create a region's
network the first time it places a replica there.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from components.clouds.common import MISSING_IMAGE, DeploymentPlan
from components.errors import PlacementError

#: The second octet of each region's VPC range (10.<n>.0.0/16). Append only: a region's
#: range must never change once a network exists there.
REGION_OCTETS: Mapping[str, int] = {region: 100 + i for i, region in enumerate((
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "ca-west-1",
    "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-central-2", "eu-north-1",
    "eu-south-1", "eu-south-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5",
    "ap-southeast-7", "ap-south-1", "ap-south-2", "ap-east-1", "sa-east-1", "me-south-1",
    "me-central-1", "af-south-1", "il-central-1", "mx-central-1",
))}
#: Regions not in the table hash into 10.160.0.0/16 .. 10.254.0.0/16.
HASHED_OCTETS = (160, 255)
#: The range every default VPC has (the controller runs in its region's default VPC).
DEFAULT_VPC_CIDR = "172.31.0.0/16"


def region_cidr(region: str) -> str:
    """The VPC range of a replica region: fixed per region, disjoint from 172.31.0.0/16."""
    octet = REGION_OCTETS.get(region)
    if octet is None:
        lo, hi = HASHED_OCTETS
        octet = lo + zlib.crc32(region.encode()) % (hi - lo)
    return f"10.{octet}.0.0/16"


def zone_cidr(region: str, zone: str) -> str:
    """The /20 of a zone inside its region's range: by zone letter (``a`` first), other
    suffixes (Local Zones) hashed into the slots after ``f``."""
    suffix = zone.removeprefix(region)
    slot = ord(suffix) - ord("a") if len(suffix) == 1 and "a" <= suffix <= "f" \
        else 6 + zlib.crc32(suffix.encode()) % 10
    network = ipaddress.ip_network(region_cidr(region))
    return str(list(network.subnets(new_prefix=20))[slot])


def check_ranges(regions: list[str], controller_cidr: str = DEFAULT_VPC_CIDR) -> None:
    """Refuse a set of replica regions whose ranges overlap each other or the controller's."""
    seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {
        ipaddress.ip_network(controller_cidr): "the controller's VPC"}
    for region in regions:
        net = ipaddress.ip_network(region_cidr(region))
        for other, owner in seen.items():
            if net.overlaps(other):
                raise PlacementError(
                    f"AWS region {region}: its replica network {net} overlaps {owner} "
                    f"({other}); add the region to REGION_OCTETS with a free 10.x octet")
        seen[net] = region


def replica_regions(plan: DeploymentPlan) -> list[str]:
    """Every menu region other than the controller's, and any a fleet group still uses."""
    regions = [loc.site.region for loc in plan.locations]
    regions += [plan.group_region(g) for g in plan.groups]
    return [r for r in dict.fromkeys(regions) if r and r != plan.region]


def used_zones(plan: DeploymentPlan, region: str) -> list[str]:
    """The zones of the groups in ``region`` (the region's first zone for a group with
    none), sorted: the subnets the region's network has."""
    zones = {plan.group_zone(g) or f"{region}a" for g in plan.groups
             if plan.group_region(g) == region}
    return sorted(zones)


@dataclass
class ControllerNetwork:
    """The controller's side: its region's provider, VPC (id, range), the VPC's main route
    table and the controllers' private addresses (the first's, the others' slots)."""

    provider: aws.Provider
    vpc_id: pulumi.Input[str]
    vpc_cidr: pulumi.Input[str]
    route_table_id: pulumi.Input[str]
    private_ip: pulumi.Input[str]
    #: The other controllers' fixed addresses (slots 1.., components/clouds/controllers.py).
    slot_addresses: list[str] = field(default_factory=list)


@dataclass
class ReplicaRegionArgs:
    plan: DeploymentPlan
    region: str
    #: The zones replica groups use in the region (none: the region is not used).
    zones: list[str]
    controller: ControllerNetwork
    tags: dict[str, str] = field(default_factory=dict)


class ReplicaRegion(pulumi.ComponentResource):
    """One replica region's provider, network, peering, routes and security group."""

    provider: aws.Provider | None
    #: ``{zone: subnet id}`` of the zones used.
    subnet_ids: dict[str, pulumi.Output[str]]
    security_group_id: pulumi.Output[str] | None

    def __init__(self, name: str, args: ReplicaRegionArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("skyform:aws:ReplicaRegion", name, None, opts)
        plan, region, home = args.plan, args.region, args.controller
        self.provider = None
        self.subnet_ids = {}
        self.security_group_id = None
        cidr = region_cidr(region)
        tags = {**args.tags, "skyform:region": region}
        if not args.zones:
            self.register_outputs({"cidr": cidr})
            return
        provider = aws.Provider(f"{name}-provider", region=region,
                                opts=pulumi.ResourceOptions(parent=self))
        there = pulumi.ResourceOptions(parent=self, provider=provider)
        at_home = pulumi.ResourceOptions(parent=self, provider=home.provider)
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=cidr, enable_dns_support=True,
                          enable_dns_hostnames=True, tags={**tags, "Name": name}, opts=there)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=there)
        table = aws.ec2.RouteTable(f"{name}-routes", vpc_id=vpc.id, tags=tags, opts=there)
        aws.ec2.Route(f"{name}-internet", route_table_id=table.id,
                      destination_cidr_block="0.0.0.0/0", gateway_id=gateway.id, opts=there)
        for zone in args.zones:
            subnet = aws.ec2.Subnet(
                f"{name}-{zone}", vpc_id=vpc.id, cidr_block=zone_cidr(region, zone),
                availability_zone=zone, map_public_ip_on_launch=True,
                tags={**tags, "Name": f"{name}-{zone}"}, opts=there)
            aws.ec2.RouteTableAssociation(f"{name}-{zone}", subnet_id=subnet.id,
                                          route_table_id=table.id, opts=there)
            self.subnet_ids[zone] = subnet.id
        # Across regions the peering is requested with peer_region and accepted by an
        # accepter resource in the peer's region (the provider's auto_accept works within
        # one region only).
        peering = aws.ec2.VpcPeeringConnection(
            f"{name}-peering", vpc_id=vpc.id, peer_vpc_id=home.vpc_id, peer_region=plan.region,
            tags={**tags, "Name": name}, opts=there)
        accepted = aws.ec2.VpcPeeringConnectionAccepter(
            f"{name}-accept", vpc_peering_connection_id=peering.id, auto_accept=True,
            opts=at_home)
        # Both routes name the accepted connection: they are created once it is active.
        aws.ec2.Route(f"{name}-to-controller", route_table_id=table.id,
                      destination_cidr_block=home.vpc_cidr,
                      vpc_peering_connection_id=accepted.vpc_peering_connection_id,
                      opts=there)
        aws.ec2.Route(f"{name}-from-controller", route_table_id=home.route_table_id,
                      destination_cidr_block=cidr,
                      vpc_peering_connection_id=accepted.vpc_peering_connection_id,
                      opts=at_home)
        group = aws.ec2.SecurityGroup(
            f"{name}-replica", vpc_id=vpc.id,
            description=f"skyform replicas of {plan.name} in {region}", tags=tags, opts=there)
        # Every controller by its own address: the first (its interface's) and each other's
        # fixed slot address; nothing else of the controller VPC.
        sources: list[tuple[str, pulumi.Input[str]]] = [
            ("", pulumi.Output.from_input(home.private_ip).apply(lambda ip: f"{ip}/32")),
            *((f"-slot{i}", f"{address}/32")
              for i, address in enumerate(home.slot_addresses, start=1)),
        ]
        for suffix, controller in sources:
            for lo, hi in port_ranges(plan.replica_ports):
                aws.vpc.SecurityGroupIngressRule(
                    (f"{name}-service-{lo}" if lo == hi else f"{name}-service-{lo}-{hi}")
                    + suffix,
                    security_group_id=group.id, ip_protocol="tcp", from_port=lo, to_port=hi,
                    cidr_ipv4=controller, description="the controller to the replicas' ports",
                    opts=there)
        if plan.task.num_nodes > 1:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-nodes", security_group_id=group.id, ip_protocol="-1",
                referenced_security_group_id=group.id,
                description="the nodes of a multi-node replica to each other", opts=there)
        for i, ssh in enumerate(plan.ssh_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-ssh-{i}", security_group_id=group.id, ip_protocol="tcp",
                from_port=22, to_port=22, cidr_ipv4=ssh, description="SSH", opts=there)
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress", security_group_id=group.id, ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0", description="outbound", opts=there)
        self.provider = provider
        self.security_group_id = group.id
        self.register_outputs({"cidr": cidr, "vpc_id": vpc.id,
                               "security_group_id": group.id})


def admin_rule(name: str, plan: DeploymentPlan, region: str,
               controller_security_group_id: pulumi.Input[str],
               opts: pulumi.ResourceOptions) -> aws.vpc.SecurityGroupIngressRule:
    """The controller's group admits a menu region's range on the admin port."""
    return aws.vpc.SecurityGroupIngressRule(
        name, security_group_id=controller_security_group_id, ip_protocol="tcp",
        from_port=plan.admin_port, to_port=plan.admin_port, cidr_ipv4=region_cidr(region),
        description=f"replica registration from {region} over the peering", opts=opts)


def port_ranges(ports: tuple[int, ...]) -> list[tuple[int, int]]:
    """Consecutive ports as (first, last) ranges."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(ports):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def controller_vpc(provider: aws.Provider, vpc_id: pulumi.Input[str], parent: pulumi.Resource
                   ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """The controller VPC's range and main route table (the default VPC's, which its default
    subnets use), looked up in the controller's region."""
    invoke = pulumi.InvokeOutputOptions(parent=parent, provider=provider)
    vpc = aws.ec2.get_vpc_output(id=vpc_id, opts=invoke)
    table = aws.ec2.get_route_table_output(
        vpc_id=vpc_id, filters=[{"name": "association.main", "values": ["true"]}],
        opts=invoke)
    return vpc.cidr_block, table.id


def region_image(plan: DeploymentPlan, site_key: str) -> Any:
    """The pinned AMI of a location (None: look the default up in its region)."""
    image = plan.site_images.get(site_key)
    if image == MISSING_IMAGE:
        raise PlacementError(
            f"{plan.task.source}: the fleet has a replica group at {site_key}, where the "
            "pinned machine image has no AMI; add an image_id for that region")
    return image
