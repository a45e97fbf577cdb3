"""Controller slots on VMs (components/clouds/controllers.py), run under mocks: every
controller gets a stable reserved private address (the first its own interface's or
reserved address, the others a fixed slot address in a controller subnet of the stack), the
replicas' start-up names every slot whatever ``skyform:controllerReplicas`` is and is byte
for byte the same when the count changes or a controller is replaced, and the replicas admit
the controllers and nothing else of the controllers' network."""

from __future__ import annotations

import base64
import ipaddress
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from program_support import bash_syntax, cloud_init_schema, decode_user_data, run

from components.clouds.common import DeploymentPlan
from components.clouds.controllers import (
    AWS_SLOT_POOL,
    GCP_SLOT_POOL,
    controller_zones,
    slot,
    slot_addresses,
)
from components.stack_config import MAX_CONTROLLER_REPLICAS
from components.synth import CapturedResource, SynthResult, _ip

ROOT = Path(__file__).resolve().parent.parent
SPOT_SET = ROOT / "tests" / "fixtures" / "program" / "spot_set.yaml"
SECRETS = {"HF_TOKEN": "hf-x"}


def _aws(count: int | None = None, **extra: Any) -> SynthResult:
    if count is not None:
        extra["controllerReplicas"] = count
    return run("gpu_spot.yaml", "aws", **extra)


def _gcp(count: int | None = None, **extra: Any) -> SynthResult:
    if count is not None:
        extra["controllerReplicas"] = count
    return run("t4_spot.yaml", "gcp", secrets=SECRETS, **extra)


@pytest.fixture(scope="module")
def aws_one() -> SynthResult:
    return _aws()


@pytest.fixture(scope="module")
def aws_three() -> SynthResult:
    return _aws(3)


@pytest.fixture(scope="module")
def gcp_one() -> SynthResult:
    return _gcp()


@pytest.fixture(scope="module")
def gcp_three() -> SynthResult:
    return _gcp(3)


@pytest.fixture(scope="module")
def aws_ten() -> SynthResult:
    return _aws(10)


@pytest.fixture(scope="module")
def gcp_ten() -> SynthResult:
    return _gcp(10)


def _aws_slots(ten: SynthResult) -> list[str]:
    """Slots 1..9's addresses, as the ten controllers' interfaces hold them."""
    return [ten.named(f"service-controller-{i}-nic").inputs["privateIps"][0]
            for i in range(1, MAX_CONTROLLER_REPLICAS)]


def _gcp_slots(ten: SynthResult) -> list[str]:
    return [ten.named(f"service-controller-{i}-internal").inputs["address"]
            for i in range(1, MAX_CONTROLLER_REPLICAS)]


def _aws_replicas(result: SynthResult) -> dict[str, CapturedResource]:
    return {r.name: r for r in result.of_type("aws:ec2/instance:Instance")
            if "skyform:group" in r.inputs["tags"]}


def _aws_boots(result: SynthResult) -> dict[str, str]:
    return {name: decode_user_data(r.raw_inputs["userDataBase64"])
            for name, r in _aws_replicas(result).items()}


def _gcp_boots(result: SynthResult) -> dict[str, str]:
    return {r.name: r.raw_inputs["metadataStartupScript"]
            for r in result.of_type("gcp:compute/instance:Instance")
            if r.parent != "service-controller"}


def _urls(script_files: str) -> list[str]:
    [line] = re.findall(r"^CONTROLLER_URLS=\((.*)\)$", script_files, re.M)
    return line.split(" ")


def _aws_replica_script(boot: str) -> str:
    """replica.sh of a replica's cloud-init (its write_files entry, base64 or plain)."""
    import yaml

    doc = yaml.safe_load(boot)
    [entry] = [f for f in doc["write_files"] if f["path"].endswith("/replica.sh")]
    content = entry["content"]
    return base64.b64decode(content).decode() if entry.get("encoding") == "b64" else content


def _gcp_replica_script(startup: str) -> str:
    return "".join(base64.b64decode(m).decode()
                   for m in re.findall(r"echo (\S+) \| base64 -d", startup))


# -- the layout ------------------------------------------------------------------------
@pytest.mark.parametrize(("cloud", "pool"), [("aws", AWS_SLOT_POOL), ("gcp", GCP_SLOT_POOL)])
def test_slot_addresses_are_fixed_distinct_and_usable(cloud: str, pool: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from components.clouds import controllers

    monkeypatch.setattr(controllers, "stack_identity",
                        lambda plan: hashlib.sha256(plan.stack.encode()).hexdigest()[:20])
    plan = cast(DeploymentPlan, SimpleNamespace(cloud=cloud, stack="prod", backend_url=None))
    slots = [slot(plan, i) for i in range(1, MAX_CONTROLLER_REPLICAS)]
    addresses = [ipaddress.ip_address(s.address) for s in slots]
    assert len(set(addresses)) == MAX_CONTROLLER_REPLICAS - 1
    for s, address in zip(slots, addresses, strict=True):
        subnet = ipaddress.ip_network(s.subnet)
        assert subnet.prefixlen == 28 and subnet.subnet_of(ipaddress.ip_network(pool))
        # Not an address the cloud keeps for itself: AWS the first four and the last, GCP
        # the first two and the last two of a subnet.
        offset = int(address) - int(subnet.network_address)
        assert (4 if cloud == "aws" else 2) <= offset <= (14 if cloud == "aws" else 13)
    if cloud == "aws":  # a subnet lives in one zone: one per slot
        assert len({s.subnet for s in slots}) == len(slots)
    else:  # a regional subnet holds them all
        assert len({s.subnet for s in slots}) == 1
    # The same stack always gets the same; another stack another block.
    assert slot_addresses(plan) == [s.address for s in slots]
    other = cast(DeploymentPlan, SimpleNamespace(cloud=cloud, stack="staging", backend_url=None))
    assert set(slot_addresses(other)).isdisjoint(slot_addresses(plan))
    with pytest.raises(ValueError, match=r"slots are 1\.\.9"):
        slot(plan, 0)


# -- AWS -------------------------------------------------------------------------------
def test_aws_every_controller_has_a_reserved_address(aws_three: SynthResult,
                                                     aws_ten: SynthResult) -> None:
    nics = {r.name: r for r in aws_three.of_type("aws:ec2/networkInterface:NetworkInterface")}
    subnets = {r.name: r for r in aws_three.of_type("aws:ec2/subnet:Subnet")}
    vms = {r.name: r for r in aws_three.of_type("aws:ec2/instance:Instance")
           if r.parent == "service-controller"}
    # The first keeps its own interface in its zone's default subnet (as with one).
    first = nics["service-controller-nic"]
    assert first.inputs["subnetId"] == "subnet-0synth"
    assert "privateIps" not in first.inputs
    zones = controller_zones(cast(DeploymentPlan, SimpleNamespace(
        cloud="aws", region="us-east-1", zone=None)), 3)
    slots = _aws_slots(aws_ten)
    assert len(set(slots)) == len(slots)
    for index in (1, 2):
        nic = nics[f"service-controller-{index}-nic"]
        # The same address whatever the count: slot ``index``'s.
        assert nic.inputs["privateIps"] == [slots[index - 1]]
        assert nic.inputs["subnetId"] == f"service-controller-{index}-subnet-id"
        # A fixed address: the old interface is deleted before its replacement is made.
        assert nic.options["deleteBeforeReplace"] is True
        subnet = subnets[f"service-controller-{index}-subnet"].inputs
        network = ipaddress.ip_network(subnet["cidrBlock"])
        assert network.prefixlen == 28
        assert network.subnet_of(ipaddress.ip_network(AWS_SLOT_POOL))
        assert ipaddress.ip_address(slots[index - 1]) in network
        assert subnet["availabilityZone"] == zones[index]
        assert subnet["vpcId"] == "vpc-synth"  # the default VPC, the controllers' group's
        vm = vms[f"service-controller-{index}-vm"].inputs
        assert vm["primaryNetworkInterface"] == {
            "networkInterfaceId": f"service-controller-{index}-nic-id"}
        assert vm["availabilityZone"] == zones[index]
    # Only the controllers that exist have a subnet.
    assert set(subnets) == {"service-controller-1-subnet", "service-controller-2-subnet"}
    assert len(aws_ten.of_type("aws:ec2/subnet:Subnet")) == 9


def test_aws_user_data_names_every_slot_whatever_the_count(aws_one: SynthResult,
                                                            aws_three: SynthResult,
                                                            aws_ten: SynthResult,
                                                            tmp_path: Path) -> None:
    one, three, ten = _aws_boots(aws_one), _aws_boots(aws_three), _aws_boots(aws_ten)
    assert one and one == three == ten  # byte for byte: no replica is replaced
    first = _ip("service-controller-nic", "10.0")  # the first controller's interface
    for name, boot in three.items():
        assert _urls(_aws_replica_script(boot)) == [
            f"http://{a}:20001" for a in (first, *_aws_slots(aws_ten))], name
        cloud_init_schema(tmp_path, boot, f"{name}.yaml")
    bash_syntax(tmp_path, _aws_replica_script(next(iter(three.values()))))


def test_aws_replacing_a_controller_changes_no_replica(aws_three: SynthResult) -> None:
    """What replaces a controller VM (another instance type; ``--replace`` recreates it
    from the same inputs) reaches no replica's inputs: they name addresses, not VMs."""
    bigger = _aws(3, controllerInstanceType="m7i.2xlarge")
    assert bigger.named("service-controller-1-vm").inputs["instanceType"] == "m7i.2xlarge"
    assert aws_three.named("service-controller-1-vm").inputs["instanceType"] != "m7i.2xlarge"
    assert _aws_boots(bigger) == _aws_boots(aws_three)
    for replica in _aws_replicas(aws_three).values():
        assert not any("service-controller" in u and u.endswith("-vm")
                       for u in replica.options["dependsOn"]), replica.name


def test_aws_replicas_admit_the_controllers_only(aws_three: SynthResult) -> None:
    rules = [r.inputs for r in aws_three.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs["securityGroupId"] == "service-firewall-replica-id"]
    # In the controllers' region: by the controllers' security group, which every
    # controller's interface (and nothing else) carries.
    assert {r.get("referencedSecurityGroupId") or r.get("cidrIpv4") for r in rules} == {
        "service-firewall-controller-id"}
    nics = aws_three.of_type("aws:ec2/networkInterface:NetworkInterface")
    assert len(nics) == 3
    assert all(n.inputs["securityGroups"] == ["service-firewall-controller-id"] for n in nics)


@pytest.fixture(scope="module")
def aws_regions_three() -> SynthResult:
    from test_program_regions import WEST, WEST_C, fleet_at
    from test_program_regions import run as regions_run

    first = regions_run(SPOT_SET, "aws", regions=["us-west-2"], controllerReplicas=3)
    return regions_run(SPOT_SET, "aws", regions=["us-west-2"], controllerReplicas=3,
                       fleet=fleet_at(first, (WEST, "spot", 2), (WEST_C, "ondemand", 1)))


def test_aws_a_replica_region_admits_each_controller_by_its_address(
        aws_regions_three: SynthResult) -> None:
    group = "service-region-us-west-2-replica-id"
    rules = {r.name: r.inputs for r in aws_regions_three.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.raw_inputs["securityGroupId"] == group}
    controllers = [_ip("service-controller-nic", "10.0"),
                   *(aws_regions_three.named(f"service-controller-{i}-nic")
                     .inputs["privateIps"][0] for i in (1, 2))]
    assert sorted(r["cidrIpv4"] for r in rules.values()) == sorted(
        f"{a}/32" for a in controllers)
    assert all((r["fromPort"], r["toPort"]) == (8000, 8000) for r in rules.values())
    assert not any("referencedSecurityGroupId" in r for r in rules.values())
    # The first controller's rule keeps its one-controller name: nothing is replaced.
    assert rules["service-region-us-west-2-service-8000"]["cidrIpv4"] == \
        f"{controllers[0]}/32"
    # Every replica, here or there, names the same controllers, these first.
    urls = {tuple(_urls(_aws_replica_script(b)))
            for b in _aws_boots(aws_regions_three).values()}
    [names] = urls
    assert list(names[:3]) == [f"http://{a}:20001" for a in controllers]


# -- GCP -------------------------------------------------------------------------------
def test_gcp_every_controller_has_a_reserved_address(gcp_three: SynthResult,
                                                     gcp_ten: SynthResult) -> None:
    vms = {r.name: r.inputs for r in gcp_three.of_type("gcp:compute/instance:Instance")
           if r.parent == "service-controller"}
    subnet = gcp_three.named("service-controller-slots").inputs
    network = ipaddress.ip_network(subnet["ipCidrRange"])
    assert network.prefixlen == 28
    assert network.subnet_of(ipaddress.ip_network(GCP_SLOT_POOL))
    assert (subnet["network"], subnet["region"]) == ("default", "us-central1")
    assert vms["service-controller-vm"]["networkInterfaces"][0]["networkIp"] == _ip(
        "service-controller-internal", "10.128")
    slots = _gcp_slots(gcp_ten)
    assert len(set(slots)) == len(slots)
    assert all(ipaddress.ip_address(a) in network for a in slots)
    for index in (1, 2):
        reserved = gcp_three.named(f"service-controller-{index}-internal")
        assert reserved.inputs["address"] == slots[index - 1]
        assert reserved.inputs["addressType"] == "INTERNAL"
        assert reserved.options["deleteBeforeReplace"] is True
        nic = vms[f"service-controller-{index}-vm"]["networkInterfaces"][0]
        assert nic["networkIp"] == slots[index - 1]


def test_gcp_startup_names_every_slot_whatever_the_count(gcp_one: SynthResult,
                                                         gcp_three: SynthResult,
                                                         gcp_ten: SynthResult,
                                                         tmp_path: Path) -> None:
    one, three, ten = _gcp_boots(gcp_one), _gcp_boots(gcp_three), _gcp_boots(gcp_ten)
    assert one and one == three == ten
    first = _ip("service-controller-internal", "10.128")
    for name, startup in three.items():
        script = _gcp_replica_script(startup)
        assert _urls(script) == [f"http://{a}:20001" for a in (first, *_gcp_slots(gcp_ten))]
        bash_syntax(tmp_path, startup, f"{name}.sh")
    assert not gcp_one.of_type("gcp:compute/subnetwork:Subnetwork")  # one: no slot subnet


def test_gcp_replicas_admit_the_controllers_tag_only(gcp_three: SynthResult) -> None:
    rules = {r.name: r.inputs for r in gcp_three.of_type("gcp:compute/firewall:Firewall")}
    service = rules["service-firewall-service"]
    tags = {tuple(r.inputs["tags"]) for r in gcp_three.of_type("gcp:compute/instance:Instance")
            if r.parent == "service-controller"}
    assert tags == {tuple(service["sourceTags"])}  # every controller, by its tag
    assert "sourceRanges" not in service
    replica_tag = service["targetTags"]
    # Nothing else reaches the replicas: the only rule allowing anything to them is this.
    allowing = [name for name, r in rules.items()
                if r.get("targetTags") == replica_tag and "allows" in r]
    assert allowing == ["service-firewall-service"]
