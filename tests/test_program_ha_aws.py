"""Several controllers on AWS (``skyform:controllerReplicas`` >= 2), run under mocks: the
controllers spread over the region's zones behind an internet-facing NLB whose target group
holds every controller, the endpoint is the NLB, the security groups let the NLB (and only
the controllers) in, and every controller's agent config shares the S3 lease. With 1 the
stack is the one-controller stack, resource for resource."""

from __future__ import annotations

import json
from typing import Any

import pytest
from program_support import run

from components.clouds.aws_lb import HEALTH_PATH
from components.synth import SynthResult

BACKEND = "s3://state-bucket/team"


@pytest.fixture(scope="module")
def three() -> SynthResult:
    return run("gpu_spot.yaml", "aws", controllerReplicas=3, backendUrl=BACKEND)


@pytest.fixture(scope="module")
def one() -> SynthResult:
    return run("gpu_spot.yaml", "aws", backendUrl=BACKEND)


def _controllers(result: SynthResult) -> list[Any]:
    return sorted((r for r in result.of_type("aws:ec2/instance:Instance")
                   if r.parent == "service-controller"), key=lambda r: r.name)


def _config(result: SynthResult) -> dict[str, Any]:
    [version] = [r for r in result.of_type("aws:secretsmanager/secretVersion:SecretVersion")
                 if r.name == "service-controller-config"]
    loaded: dict[str, Any] = json.loads(version.raw_inputs["secretString"])
    return loaded


def _ingress(result: SynthResult) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in result.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")}


def test_controllers_spread_over_the_zones_and_share_role_and_group(three: SynthResult) -> None:
    vms = _controllers(three)
    assert [v.name for v in vms] == ["service-controller-1-vm", "service-controller-2-vm",
                                     "service-controller-vm"]
    by_name = {v.name: v.inputs for v in vms}
    # The first keeps the one controller's zone; the others take the region's next zones.
    assert by_name["service-controller-vm"]["availabilityZone"] == "us-east-1a"
    assert {by_name["service-controller-1-vm"]["availabilityZone"],
            by_name["service-controller-2-vm"]["availabilityZone"]} == {"us-east-1b",
                                                                        "us-east-1c"}
    assert {v["iamInstanceProfile"] for v in by_name.values()} == {"service-controller-profile"}
    nics = {r.name: r.inputs for r in three.of_type(
        "aws:ec2/networkInterface:NetworkInterface")}
    assert {n["securityGroups"][0] for n in nics.values()} == {
        "service-firewall-controller-id"}
    assert len({n["subnetId"] for n in nics.values()}) == 3
    assert len(three.of_type("aws:ec2/eip:Eip")) == 3  # each controller's own egress address


def test_the_nlb_forwards_to_every_controller(three: SynthResult) -> None:
    [nlb] = three.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert nlb.inputs["loadBalancerType"] == "network"
    assert nlb.inputs["internal"] is False  # internet-facing, as the Elastic IP endpoint was
    assert nlb.inputs["securityGroups"] == ["service-nlb-sg-id"]
    assert len(set(nlb.inputs["subnets"])) == 3  # one per controller zone
    assert len(nlb.inputs["name"]) <= 32
    [targets] = three.of_type("aws:lb/targetGroup:TargetGroup")
    assert (targets.inputs["protocol"], targets.inputs["port"],
            targets.inputs["targetType"]) == ("TCP", 30001, "instance")
    check = targets.inputs["healthCheck"]
    assert (check["protocol"], check["port"], check["path"]) == ("HTTP", "20001", HEALTH_PATH)
    [listener] = three.of_type("aws:lb/listener:Listener")
    assert (listener.inputs["port"], listener.inputs["protocol"]) == (30001, "TCP")
    assert listener.inputs["loadBalancerArn"] == (
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/service-nlb/"
        "0123456789abcdef")
    assert listener.inputs["defaultActions"] == [
        {"type": "forward", "targetGroupArn": "arn:aws:synth:::targetgroup/service-nlb-targets"}]
    attached = {a.inputs["targetId"] for a in three.of_type(
        "aws:lb/targetGroupAttachment:TargetGroupAttachment")}
    assert attached == {f"{v.name}-id" for v in _controllers(three)}


def test_endpoint_is_the_load_balancer(three: SynthResult) -> None:
    [nlb] = three.of_type("aws:lb/loadBalancer:LoadBalancer")
    endpoint = three.outputs["endpoint"]
    host = endpoint.removeprefix("http://").removesuffix(":30001")
    assert host.startswith(nlb.inputs["name"]) and host.endswith(".elb.us-east-1.amazonaws.com")
    assert three.outputs["controllerAddress"] == host


def test_security_groups_let_the_nlb_and_the_controllers_in(three: SynthResult) -> None:
    rules = _ingress(three)
    clients = rules["service-nlb-clients-0"]
    assert (clients["securityGroupId"], clients["fromPort"], clients["cidrIpv4"]) == (
        "service-nlb-sg-id", 30001, "0.0.0.0/0")
    for port in (30001, 20001):  # traffic and health checks, from the NLB's group only
        rule = rules[f"service-nlb-from-lb-{port}"]
        assert rule["securityGroupId"] == "service-firewall-controller-id"
        assert rule["referencedSecurityGroupId"] == "service-nlb-sg-id"
        assert rule["fromPort"] == rule["toPort"] == port
    peers = rules["service-nlb-controllers-admin"]
    assert peers["referencedSecurityGroupId"] == peers["securityGroupId"] == \
        "service-firewall-controller-id"
    # The replicas still admit only the controllers' group (now every controller).
    replica_sources = {r.get("referencedSecurityGroupId") or r.get("cidrIpv4")
                       for r in rules.values()
                       if r["securityGroupId"] == "service-firewall-replica-id"}
    assert replica_sources == {"service-firewall-controller-id"}
    egress = {r.name: r.inputs for r in three.of_type(
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        if r.inputs["securityGroupId"] == "service-nlb-sg-id"}
    assert {e["referencedSecurityGroupId"] for e in egress.values()} == {
        "service-firewall-controller-id"}


def test_every_controller_shares_the_s3_lease(three: SynthResult) -> None:
    config = _config(three)
    assert config["agent"]["lease"] == {"kind": "s3", "bucket": "service-access-files",
                                        "name": "lease/llm-spot.json"}
    policy = json.loads(three.named("service-controller-pulumi-up").raw_inputs["policy"])
    [lease] = [s for s in policy["Statement"] if s.get("Sid") == "LeaderLease"]
    assert lease["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert lease["Resource"] == "arn:aws:s3:::service-access-files/lease/llm-spot.json"


def test_one_controller_is_the_stack_without_a_load_balancer(one: SynthResult) -> None:
    explicit = run("gpu_spot.yaml", "aws", controllerReplicas=1, backendUrl=BACKEND)
    def plan(result: SynthResult) -> list[str]:
        return sorted(json.dumps([r.type, r.name, r.parent, r.raw_inputs], sort_keys=True,
                                 default=str) for r in result.resources)

    assert plan(explicit) == plan(one)
    assert not [r for r in one.resources if r.type.startswith("aws:lb/")
                or r.type == "skyform:aws:NetworkLoadBalancer"]
    assert [v.name for v in _controllers(one)] == ["service-controller-vm"]
    config = _config(one)
    assert "lease" not in config["agent"]
    policy = json.loads(one.named("service-controller-pulumi-up").raw_inputs["policy"])
    assert "LeaderLease" not in {s.get("Sid") for s in policy["Statement"]}
    assert one.outputs["endpoint"] == f"http://{one.outputs['controllerAddress']}:30001"


def test_zero_controllers_is_refused_with_the_key() -> None:
    with pytest.raises(Exception,
                       match=r"skyform:controllerReplicas: must be a whole number from 1 to 10"):
        run("gpu_spot.yaml", "aws", controllerReplicas=0)


def test_synth_shows_the_load_balancer_and_refuses_zero() -> None:
    from click.testing import CliRunner
    from program_support import FIXTURES

    from components.commands.synth import synth

    shown = CliRunner().invoke(synth, [str(FIXTURES / "cpu_http.yaml"), "--cloud", "aws",
                                       "--config", "controllerReplicas=2"])
    assert shown.exit_code == 0, shown.output
    for what in ("skyform:aws:NetworkLoadBalancer", "aws:lb/loadBalancer:LoadBalancer",
                 "aws:lb/targetGroup:TargetGroup", "service-controller-1-vm"):
        assert what in shown.stdout
    refused = CliRunner().invoke(synth, [str(FIXTURES / "cpu_http.yaml"), "--cloud", "aws",
                                         "--config", "controllerReplicas=0"])
    assert refused.exit_code == 2
    assert "skyform:controllerReplicas: must be a whole number from 1 to 10" in refused.stderr
    assert "Traceback" not in refused.output


def test_controller_zones_start_home_and_wrap_around() -> None:
    from types import SimpleNamespace
    from typing import cast

    from components.clouds.common import DeploymentPlan
    from components.clouds.controllers import controller_zones

    def zones(region: str, zone: str | None, count: int, cloud: str = "aws") -> list[str]:
        # controller_zones reads the plan's cloud, region and zone only.
        plan = cast(DeploymentPlan, SimpleNamespace(cloud=cloud, region=region, zone=zone))
        return controller_zones(plan, count)

    assert zones("us-east-1", None, 1) == ["us-east-1a"]
    assert zones("us-east-2", None, 4) == ["us-east-2a", "us-east-2b", "us-east-2c",
                                           "us-east-2a"]
    assert zones("us-east-2", "us-east-2b", 3) == ["us-east-2b", "us-east-2a", "us-east-2c"]
    assert zones("us-central1", None, 2, "gcp") == ["us-central1-a", "us-central1-b"]
    # A region the zone table does not list: every controller in its default zone.
    assert zones("ap-south-2", None, 2) == ["ap-south-2a", "ap-south-2a"]


def _changed(one: SynthResult, several: SynthResult) -> set[str]:
    """Names of the one-controller plan's resources whose inputs differ in ``several``;
    every one of its resources must still be there, under the same name and type."""
    by_key = {(r.type, r.name): r for r in several.resources}
    missing = [(r.type, r.name) for r in one.resources if (r.type, r.name) not in by_key]
    assert missing == []
    return {r.name for r in one.resources
            if json.dumps(r.raw_inputs, sort_keys=True, default=str)
            != json.dumps(by_key[(r.type, r.name)].raw_inputs, sort_keys=True, default=str)}


def test_going_from_one_to_three_controllers_replaces_nothing(one: SynthResult,
                                                             three: SynthResult) -> None:
    """Adding controllers adds resources; of the existing ones only the controller config
    (a new secret version, as every commit writes) and the role policy (updated in place)
    change: the first controller, its interface and address, the replicas stay."""
    assert _changed(one, three) == {"service-controller-config", "service-controller-pulumi-up"}
    vm_one, vm_three = one.named("service-controller-vm"), three.named("service-controller-vm")
    assert vm_one.options["ignoreChanges"] == vm_three.options["ignoreChanges"]


def test_hourly_cost_counts_every_controller(one: SynthResult, three: SynthResult) -> None:
    from components.catalog import controller_offer

    price = controller_offer("aws").ondemand_hourly_usd
    assert price is not None
    assert three.outputs["hourlyCost"] == pytest.approx(one.outputs["hourlyCost"] + 2 * price,
                                                        abs=1e-3)
