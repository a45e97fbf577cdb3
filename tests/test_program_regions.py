"""Replicas in several regions (mock runtime): on AWS each replica region gets its own
provider, VPC (a range disjoint from the controller's and every other region's), subnets,
a peering with the controller's VPC and routes both ways, and a security group admitting
the controller alone; adding a region replaces and changes nothing in the others; the
controller's grant lets its targeted ``up`` build exactly that. On GCP a replica in another
region sits on the controller's global network, behind rules that admit the controller only.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from iam_eval import Request, allowed
from program_support import decode_user_data

from components.clouds.aws_regions import region_cidr, zone_cidr
from components.commands.synth import synth as synth_command
from components.locations import zone_region
from components.synth import CapturedResource, SynthResult, stack_config, synthesize
from lb_agent.control.fleet import Site

ROOT = Path(__file__).resolve().parent.parent
SPOT_SET = ROOT / "tests" / "fixtures" / "program" / "spot_set.yaml"
MULTINODE = ROOT / "tests" / "fixtures" / "program" / "multinode.yaml"
REGIONS = ["us-west-2", "eu-west-1"]
WEST = Site("aws", "us-west-2", "us-west-2b", 1, "A10G", "g5.xlarge", 0.38)
WEST_C = Site("aws", "us-west-2", "us-west-2c", 0, "L4", "g6.xlarge", 0.35)
EU = Site("aws", "eu-west-1", "eu-west-1a", 1, "A10G", "g5.xlarge", 0.4)
ACCOUNT = "123456789012"


def run(service: Path, cloud: str, **extra: Any) -> SynthResult:
    config, secrets = stack_config(service, cloud, extra=extra)
    return synthesize(config, secrets)


def fleet_at(first: SynthResult, *sites: tuple[Site, str, int]) -> str:
    digest = first.outputs["fleet"]["generations"][0]["digest"]
    return json.dumps({"version": 1, "generations": [{
        "generation": 1, "digest": digest, "spot": 1, "ondemand": 0,
        "groups": [{"market": kind, "count": n, "location": site.to_json()}
                   for site, kind, n in sites]}]})


@pytest.fixture(scope="module")
def first() -> SynthResult:
    return run(SPOT_SET, "aws", regions=REGIONS)


@pytest.fixture(scope="module")
def west(first: SynthResult) -> SynthResult:
    """A fleet in the controller's region and us-west-2."""
    return run(SPOT_SET, "aws", regions=REGIONS,
               fleet=fleet_at(first, (WEST, "spot", 2), (WEST_C, "ondemand", 1)))


@pytest.fixture(scope="module")
def both(first: SynthResult) -> SynthResult:
    """The same fleet plus a group in eu-west-1."""
    return run(SPOT_SET, "aws", regions=REGIONS, fleet=fleet_at(
        first, (WEST, "spot", 2), (WEST_C, "ondemand", 1), (EU, "spot", 1)))


def provider_name(r: CapturedResource) -> str:
    """The logical name of the provider a resource uses (``<urn>::<id>``)."""
    return str(r.options["provider"]).split("::")[-2]


def region_of(result: SynthResult, r: CapturedResource) -> str:
    provider = result.named(provider_name(r))
    return str(provider.inputs["region"])


def children(result: SynthResult, parent: str) -> list[CapturedResource]:
    return [r for r in result.resources if r.parent == parent]


def replicas(result: SynthResult) -> dict[str, CapturedResource]:
    return {r.name: r for r in result.of_type("aws:ec2/instance:Instance")
            if "skyform:group" in r.inputs["tags"]}


def test_the_aws_menu_spans_every_region_the_stack_and_the_candidates_allow(
        first: SynthResult, tmp_path: Path) -> None:
    regions = {loc["region"] for loc in first.outputs["locations"]}
    assert regions == {"us-east-1", *REGIONS}
    west_zones = {loc["zone"] for loc in first.outputs["locations"]
                  if loc["region"] == "us-west-2"}
    assert west_zones == {"us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"}
    # A candidate's own region pin places it there (and only there).
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(SPOT_SET.read_text().replace(
        "  accelerators: {L4, A10G, A100}\n",
        "  any_of:\n    - accelerators: L4\n      region: us-west-2\n"
        "    - accelerators: A10G\n"))
    locs = run(pinned, "aws", region="us-east-1").outputs["locations"]
    l4 = {loc["region"] for loc in locs if loc["accelerator"] == "L4" and not loc["first"]}
    a10g = {loc["region"] for loc in locs if loc["accelerator"] == "A10G"}
    assert l4 == {"us-west-2"} and a10g == {"us-east-1"}


def test_a_zone_pin_places_in_that_zone_of_its_region(tmp_path: Path) -> None:
    pinned = tmp_path / "zone.yaml"
    pinned.write_text(SPOT_SET.read_text().replace(
        "  accelerators: {L4, A10G, A100}\n",
        "  any_of:\n    - accelerators: A10G\n      infra: aws/eu-west-1/eu-west-1b\n"
        "    - accelerators: L4\n"))
    locs = run(pinned, "aws", region="us-east-1").outputs["locations"]
    assert {(loc["region"], loc["zone"]) for loc in locs if loc["accelerator"] == "A10G"} == {
        ("eu-west-1", "eu-west-1b")}
    assert zone_region("aws", "us-west-2b") == "us-west-2"
    assert zone_region("aws", "us-east-1-bos-1a") == "us-east-1"  # a Local Zone
    assert zone_region("gcp", "us-east1-c") == "us-east1"


def test_a_pinned_ami_places_only_in_its_region() -> None:
    """An AMI id exists in one region: skyform:imageId keeps replicas in the controller's."""
    locs = run(SPOT_SET, "aws", regions=REGIONS,
               imageId="ami-0123456789abcdef0").outputs["locations"]
    assert {loc["region"] for loc in locs} == {"us-east-1"}


def test_each_replica_region_has_its_provider_and_its_groups_use_it(west: SynthResult) -> None:
    providers = {r.name: r.inputs["region"] for r in west.of_type("pulumi:providers:aws")}
    assert providers == {"service-aws": "us-east-1",
                         "service-region-us-west-2-provider": "us-west-2"}
    # The provider is a child of its region's component.
    assert west.named("service-region-us-west-2-provider").parent == "service-region-us-west-2"
    vms = replicas(west)
    for name, vm in vms.items():
        where = vm.inputs.get("availabilityZone")
        region = "us-west-2" if where and where.startswith("us-west-2") else "us-east-1"
        assert region_of(west, vm) == region, name
    assert {vm.inputs["availabilityZone"] for name, vm in vms.items()
            if region_of(west, vm) == "us-west-2"} == {"us-west-2b", "us-west-2c"}
    # Replicas of the controller's region keep the default VPC and the stack's group.
    home = vms["service-spot-0"]
    assert "subnetId" not in home.inputs
    assert home.raw_inputs["vpcSecurityGroupIds"] == ["service-firewall-replica-id"]


def test_the_replica_image_is_looked_up_in_each_region(west: SynthResult) -> None:
    amis = [(provider.split("::")[-2] if provider else "", args["filters"][0]["values"][0])
            for (token, args), provider in zip(west.invokes, west.invoke_providers, strict=True)
            if token == "aws:ec2/getAmi:getAmi" and args["owners"] == ["amazon"]]
    # One lookup per (region, image family): the replica regions' through their provider.
    assert sorted(amis) == sorted(set(amis))
    assert {p for p, _ in amis} == {"service-aws", "service-region-us-west-2-provider"}


def test_a_region_network_peers_with_the_controller_and_routes_both_ways(
        west: SynthResult) -> None:
    prefix = "service-region-us-west-2"
    vpc = west.named(f"{prefix}-vpc")
    assert vpc.inputs["cidrBlock"] == region_cidr("us-west-2") == "10.103.0.0/16"
    assert region_of(west, vpc) == "us-west-2"
    subnets = {r.inputs["availabilityZone"]: r for r in west.of_type("aws:ec2/subnet:Subnet")}
    assert set(subnets) == {"us-west-2b", "us-west-2c"}, "a subnet per zone used, no more"
    for zone, subnet in subnets.items():
        assert subnet.inputs["cidrBlock"] == zone_cidr("us-west-2", zone)
        assert ipaddress.ip_network(subnet.inputs["cidrBlock"]).subnet_of(
            ipaddress.ip_network(vpc.inputs["cidrBlock"]))
    vms = replicas(west)
    for vm in vms.values():
        zone = vm.inputs.get("availabilityZone")
        if zone in subnets:
            assert vm.raw_inputs["subnetId"] == f"{prefix}-{zone}-id"
            assert vm.raw_inputs["vpcSecurityGroupIds"] == [f"{prefix}-replica-id"]
    peering = west.named(f"{prefix}-peering")
    assert region_of(west, peering) == "us-west-2"
    firewall_vpc = "vpc-synth"  # the controller's security group's VPC (the default VPC)
    assert peering.inputs["vpcId"] == f"{prefix}-vpc-id"
    assert peering.inputs["peerVpcId"] == firewall_vpc
    assert peering.inputs["peerRegion"] == "us-east-1" and "autoAccept" not in peering.inputs
    accept = west.named(f"{prefix}-accept")
    assert region_of(west, accept) == "us-east-1"
    assert accept.inputs == {"vpcPeeringConnectionId": f"{prefix}-peering-id",
                             "autoAccept": True}
    routes = {r.name: r for r in west.of_type("aws:ec2/route:Route")}
    out = routes[f"{prefix}-to-controller"]
    back = routes[f"{prefix}-from-controller"]
    assert (region_of(west, out), out.inputs["routeTableId"]) == ("us-west-2",
                                                                  f"{prefix}-routes-id")
    assert out.inputs["destinationCidrBlock"] == "172.31.0.0/16"  # the controller's VPC
    assert (region_of(west, back), back.inputs["routeTableId"]) == ("us-east-1",
                                                                    "rtb-0synth")
    assert back.inputs["destinationCidrBlock"] == vpc.inputs["cidrBlock"]
    for route in (out, back):
        assert route.inputs["vpcPeeringConnectionId"] == f"{prefix}-peering-id"
        assert accept.urn in route.options["dependsOn"], "routes wait for the acceptance"
    assert routes[f"{prefix}-internet"].inputs["gatewayId"] == f"{prefix}-igw-id"
    # Every subnet uses the region's table (internet out, the controller over the peering).
    assoc = {r.inputs["subnetId"]: r.inputs["routeTableId"]
             for r in west.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")}
    assert assoc == {f"{prefix}-{z}-id": f"{prefix}-routes-id" for z in subnets}
    # The controller's main route table is looked up in the default VPC.
    [lookup] = [a for t, a in west.invokes if t == "aws:ec2/getRouteTable:getRouteTable"]
    assert lookup["vpcId"] == firewall_vpc
    assert lookup["filters"] == [{"name": "association.main", "values": ["true"]}]


def test_a_region_security_group_admits_the_controller_only(west: SynthResult) -> None:
    prefix = "service-region-us-west-2"
    group = f"{prefix}-replica-id"
    ingress = [r for r in west.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
               if r.raw_inputs["securityGroupId"] == group]
    [rule] = ingress
    assert rule.inputs["cidrIpv4"].endswith("/32")
    address = rule.inputs["cidrIpv4"].removesuffix("/32")
    # The address every replica registers with: the controller's private one.
    boot = decode_user_data(replicas(west)["service-spot-0"].raw_inputs["userDataBase64"])
    assert f"http://{address}:20001" in boot
    assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (8000, 8000)
    assert "referencedSecurityGroupId" not in rule.inputs
    egress = [r for r in west.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
              if r.raw_inputs["securityGroupId"] == group]
    assert [r.inputs["cidrIpv4"] for r in egress] == ["0.0.0.0/0"]
    # The controller's group admits each menu region's range on the admin port, nothing
    # else of those ranges.
    controller_rules = {
        r.inputs.get("cidrIpv4"): r for r in west.of_type(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.raw_inputs["securityGroupId"] == "service-firewall-controller-id"}
    for region in REGIONS:
        rule = controller_rules[region_cidr(region)]
        assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (20001, 20001)


def test_ranges_never_overlap_the_controller_or_each_other() -> None:
    from components.clouds.aws_regions import REGION_OCTETS

    nets = [ipaddress.ip_network(region_cidr(r)) for r in [*REGION_OCTETS, "xx-new-9"]]
    default_vpc = ipaddress.ip_network("172.31.0.0/16")
    assert not any(n.overlaps(default_vpc) for n in nets)
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    zones = [zone_cidr("us-east-1", f"us-east-1{z}") for z in "abcdef"]
    assert len(set(zones)) == 6


def test_an_unused_region_creates_nothing(west: SynthResult) -> None:
    """eu-west-1 is on the menu but no group runs there: its component has no child, and no
    provider or resource of the plan is in that region."""
    assert west.named("service-region-eu-west-1").type == "skyform:aws:ReplicaRegion"
    assert children(west, "service-region-eu-west-1") == []
    assert "eu-west-1" not in {r.inputs.get("region") for r in
                               west.of_type("pulumi:providers:aws")}
    # A stack whose menu has only the controller's region declares no region and looks
    # nothing up.
    alone = run(SPOT_SET, "aws")
    assert alone.of_type("skyform:aws:ReplicaRegion") == []
    assert not [t for t, _ in alone.invokes if t in (
        "aws:ec2/getVpc:getVpc", "aws:ec2/getRouteTable:getRouteTable")]


def _by_urn(result: SynthResult) -> dict[str, CapturedResource]:
    return {r.urn: r for r in result.resources}


def test_adding_a_region_changes_nothing_in_the_others(west: SynthResult,
                                                       both: SynthResult) -> None:
    before, after = _by_urn(west), _by_urn(both)
    assert set(before) <= set(after), "nothing is removed"
    changed = [urn for urn, r in before.items()
               if (r.raw_inputs, r.options.get("provider"), r.parent) != (
                   after[urn].raw_inputs, after[urn].options.get("provider"), after[urn].parent)]
    assert changed == []
    added = {after[u].name for u in set(after) - set(before)}
    assert added and all(n.startswith(("service-region-eu-west-1", f"service-spot-{EU.key}"))
                         for n in added), added
    eu = [after[u] for u in set(after) - set(before) if after[u].type != "pulumi:providers:aws"
          and not after[u].type.startswith("skyform:")]
    assert eu and all(region_of(both, r) == "eu-west-1" for r in eu
                      if r.type != "aws:ec2/vpcPeeringConnectionAccepter:"
                      "VpcPeeringConnectionAccepter" and not r.name.endswith("-from-controller"))
    # The new region's range is its own.
    assert both.named("service-region-eu-west-1-vpc").inputs["cidrBlock"] == "10.106.0.0/16"


def test_a_stack_gaining_regions_keeps_every_resource(first: SynthResult) -> None:
    """skyform:regions added to a deployed stack: only the controller's grant widens and
    the controller's group gains the regions' admin rules; no resource changes otherwise."""
    alone = run(SPOT_SET, "aws")
    before, after = _by_urn(alone), _by_urn(first)
    assert set(before) <= set(after)
    changed = {before[u].name for u in before if before[u].raw_inputs != after[u].raw_inputs}
    assert changed == {"service-controller-pulumi-up"}


def test_the_agent_targets_the_regions_with_the_groups(west: SynthResult) -> None:
    urns = west.outputs["replicaGroupUrns"]
    regions = [u for u in urns if "skyform:aws:ReplicaRegion" in u]
    assert sorted(u.rsplit("::", 1)[1] for u in regions) == [
        "service-region-eu-west-1", "service-region-us-west-2"]
    assert f"skyform:aws:ReplicaGroup::service-spot-{WEST.key}" in " ".join(urns)


def test_multi_node_replicas_in_a_region_keep_their_secret_home() -> None:
    first = run(MULTINODE, "aws", regions=["us-west-2"])
    site = Site("aws", "us-west-2", "us-west-2a", 0, first.outputs["locations"][0][
        "accelerator"], first.outputs["locations"][0]["instance_type"], 1.0)
    result = run(MULTINODE, "aws", regions=["us-west-2"],
                 fleet=fleet_at(first, (site, "ondemand", 1)))
    away = f"service-ondemand-{site.key}-0"
    secret = result.named(f"{away}-nodes")
    assert region_of(result, secret) == "us-east-1", "secrets live in the controller's region"
    assert region_of(result, result.named(away)) == "us-west-2"
    nodes = [r for r in result.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.name == "service-region-us-west-2-nodes"]
    assert nodes and nodes[0].raw_inputs["referencedSecurityGroupId"] == \
        "service-region-us-west-2-replica-id"


def _policy(result: SynthResult) -> dict[str, Any]:
    return json.loads(result.named("service-controller-pulumi-up").raw_inputs["policy"])


def test_the_controllers_grant_builds_a_region_and_nothing_else(west: SynthResult) -> None:
    policy = _policy(west)
    stack_id = replicas(west)["service-spot-0"].inputs["tags"]["skyform:stack-id"]
    mine = {"aws:RequestTag/skyform:stack-id": stack_id}
    tagged = {"ec2:ResourceTag/skyform:stack-id": stack_id}
    other = {"ec2:ResourceTag/skyform:stack-id": "0" * 20}

    def arn(region: str, kind: str) -> str:
        return f"arn:aws:ec2:{region}:{ACCOUNT}:{kind}"

    w = "us-west-2"
    home_vpc = arn("us-east-1", "vpc/vpc-synth")
    calls = [
        Request("ec2:CreateVpc", arn(w, "vpc/*"), mine),
        Request("ec2:CreateTags", arn(w, "vpc/vpc-1"), {"ec2:CreateAction": "CreateVpc"}),
        Request("ec2:ModifyVpcAttribute", arn(w, "vpc/vpc-1"), tagged),
        Request("ec2:CreateInternetGateway", arn(w, "internet-gateway/*"), mine),
        Request("ec2:AttachInternetGateway", arn(w, "internet-gateway/igw-1"), tagged),
        Request("ec2:CreateSubnet", arn(w, "subnet/*"), mine),
        Request("ec2:CreateSubnet", arn(w, "vpc/vpc-1"), tagged),
        Request("ec2:CreateRouteTable", arn(w, "route-table/*"), mine),
        Request("ec2:CreateRoute", arn(w, "route-table/rtb-1"), tagged),
        Request("ec2:AssociateRouteTable", arn(w, "subnet/subnet-1"), tagged),
        Request("ec2:CreateSecurityGroup", arn(w, "security-group/*"), mine),
        Request("ec2:RevokeSecurityGroupEgress", arn(w, "security-group/sg-1"), tagged),
        Request("ec2:AuthorizeSecurityGroupIngress", arn(w, "security-group/sg-1"), tagged),
        Request("ec2:CreateVpcPeeringConnection", arn(w, "vpc-peering-connection/*"), mine),
        Request("ec2:CreateVpcPeeringConnection", home_vpc),
        Request("ec2:AcceptVpcPeeringConnection", arn("us-east-1", "vpc-peering-connection/p"),
                {"ec2:AccepterVpc": home_vpc}),
        Request("ec2:AcceptVpcPeeringConnection", home_vpc),
        Request("ec2:CreateRoute", arn("us-east-1", "route-table/rtb-0synth")),
        Request("ec2:RunInstances", arn(w, "instance/*"), mine),
        Request("ec2:RunInstances", arn(w, "subnet/subnet-1"), tagged),
        Request("ec2:RunInstances", arn(w, "security-group/sg-1"), tagged),
        Request("ec2:RunInstances", arn(w, "network-interface/*")),
        Request("ec2:RunInstances", f"arn:aws:ec2:{w}::image/ami-1"),
        Request("ec2:TerminateInstances", arn(w, "instance/i-1"),
                {**tagged, "ec2:ResourceTag/skyform:group": "spot-x"}),
        Request("ec2:DeleteVpc", arn(w, "vpc/vpc-1"), tagged),
    ]
    refused = [str(c) for c in calls if not allowed(policy, c)]
    assert refused == []
    denied = [
        Request("ec2:CreateVpc", arn(w, "vpc/*"), {"aws:RequestTag/skyform:stack-id": "x"}),
        Request("ec2:CreateVpc", arn(w, "vpc/*")),
        Request("ec2:DeleteVpc", arn(w, "vpc/vpc-other"), other),
        Request("ec2:AuthorizeSecurityGroupIngress", arn(w, "security-group/sg-x"), other),
        Request("ec2:CreateRoute", arn(w, "route-table/rtb-x"), other),
        Request("ec2:RunInstances", arn(w, "subnet/subnet-x"), other),
        Request("ec2:RunInstances", arn(w, "security-group/sg-x")),
        # The controller's own group, another route table of its region, other peerings.
        Request("ec2:AuthorizeSecurityGroupIngress",
                arn("us-east-1", "security-group/service-firewall-controller-id")),
        Request("ec2:CreateRoute", arn("us-east-1", "route-table/rtb-other")),
        Request("ec2:AcceptVpcPeeringConnection", arn("us-east-1", "vpc-peering-connection/p"),
                {"ec2:AccepterVpc": arn("us-east-1", "vpc/vpc-other")}),
        # A region not on the menu.
        Request("ec2:CreateVpc", arn("ap-south-1", "vpc/*"), mine),
        Request("ec2:RunInstances", arn("ap-south-1", "instance/*"), mine),
        Request("ec2:RunInstances", "arn:aws:ec2:ap-south-1::image/ami-1"),
    ]
    let_through = [str(c) for c in denied if allowed(policy, c)]
    assert let_through == []


def test_synth_lists_the_regions() -> None:
    out = CliRunner(env={"COLUMNS": "200"}).invoke(
        synth_command, [str(SPOT_SET), "--cloud", "aws", "--config",
                        'regions=["us-west-2","eu-west-1"]'], terminal_width=200)
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "Regions (where replicas may run)" in text
    table = text[text.index("Regions (where replicas may run)"):]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines()
            if line.startswith("│") and ("VPC" in line or "controller's" in line)}
    assert set(rows) == {"us-east-1", "us-west-2", "eu-west-1"}
    assert "controller here" in rows["us-east-1"]
    assert "VPC 10.103.0.0/16, peered (on first placement)" in rows["us-west-2"]
    assert "VPC 10.106.0.0/16, peered (on first placement)" in rows["eu-west-1"]


def test_gcp_a_replica_in_another_region_is_on_the_controllers_network_behind_its_rules(
        ) -> None:
    first = run(SPOT_SET, "gcp", regions=["us-east1"])
    east = Site("gcp", "us-east1", "us-east1-c", 0, "L4", "g2-standard-4", 0.28)
    digest = first.outputs["fleet"]["generations"][0]["digest"]
    fleet = json.dumps({"version": 1, "generations": [{
        "generation": 1, "digest": digest, "spot": 1, "ondemand": 0,
        "groups": [{"market": "spot", "count": 1, "location": east.to_json()}]}]})
    result = run(SPOT_SET, "gcp", regions=["us-east1"], fleet=fleet)
    vms = {r.name: r for r in result.of_type("gcp:compute/instance:Instance")}
    away = vms[f"service-spot-{east.key}-0"]
    controller = vms["service-controller-vm"]
    # The same (auto-mode, global) network as the controller, no subnetwork named: the
    # instance gets the subnet of its zone's region.
    [nic] = away.inputs["networkInterfaces"]
    assert nic["network"] == controller.inputs["networkInterfaces"][0]["network"]
    assert "subnetwork" not in nic and away.inputs["zone"] == "us-east1-c"
    replica_tag = away.inputs["tags"][0]
    controller_tag = controller.inputs["tags"][0]
    rules = [r.inputs for r in result.of_type("gcp:compute/firewall:Firewall")
             if replica_tag in r.inputs.get("targetTags", [])]
    allows = [r for r in rules if "allows" in r]
    # Every rule that admits anything to a replica admits the controller (or, multi-node, the
    # replica's nodes; ssh only when sshCidrs is set): none here but the controller's.
    assert [r["sourceTags"] for r in allows] == [[controller_tag]]
    assert all("sourceRanges" not in r for r in allows)
    [deny] = [r for r in rules if "denies" in r]
    assert deny["denies"] == [{"protocol": "all"}] and deny["sourceRanges"] == ["0.0.0.0/0"]
    # Below skyform's allow rules (1000), above the default network's own (65534).
    assert 1000 < deny["priority"] < 65534
    assert all(r.get("priority", 1000) == 1000 for r in allows)
