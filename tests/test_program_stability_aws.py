"""AWS: no fleet churn, provider rules the mocks cannot enforce, boot order and the
controller's least-privilege grants.

The mock runtime never diffs, so these tests pin the resource options the engine acts on
(``ignoreChanges``, ``dependsOn``, ``deleteBeforeReplace``) and the inputs that would change
between two runs; the provider rules are named in each docstring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from program_support import decode_user_data, run

from components.clouds.aws import (
    DLAMI_NAME,
    DLAMI_PROPRIETARY_NAME,
    NEURON_NAME,
    replica_image_filter,
    root_volume,
)
from components.synth import SynthResult, stack_config, synthesize


@pytest.fixture(scope="module")
def gpu() -> SynthResult:
    return run("gpu_spot.yaml", "aws")


def _replicas(result: SynthResult) -> list:
    return sorted((r for r in result.of_type("aws:ec2/instance:Instance")
                   if r.name != "service-controller-vm"), key=lambda r: r.name)


def _ami_lookups(result: SynthResult) -> list[str]:
    return [f["values"][0] for token, args in result.invokes if token == "aws:ec2/getAmi:getAmi"
            for f in args["filters"] if f["name"] == "name"]


def test_a_new_image_never_replaces_a_running_vm(gpu: SynthResult) -> None:
    """``ami`` is ForceNew in the provider: a newer ``get_ami(most_recent=True)`` result would
    replace every VM, so instances ignore changes of it."""
    for replica in _replicas(gpu):
        assert "ami" in replica.options["ignoreChanges"]
    controller = gpu.named("service-controller-vm")
    assert {"ami", "userDataBase64"} <= set(controller.options["ignoreChanges"])


def test_a_newer_start_up_script_never_replaces_a_running_replica(gpu: SynthResult) -> None:
    """A changed ``user_data`` stops and starts an instance (a spot one-time instance cannot
    be stopped at all): the live generation's replicas ignore it, so a newer skyform's
    start-up script reaches only the replicas launched from then on. A YAML edit is a new
    generation (its digest), with new instances, so it still reaches every replica."""
    replicas = _replicas(gpu)
    assert replicas
    for replica in replicas:
        assert "userDataBase64" in replica.options["ignoreChanges"], replica.name


def test_image_id_config_pins_the_replica_image() -> None:
    pinned = run("gpu_spot.yaml", "aws", imageId="ami-0pinned123")
    assert {r.inputs["ami"] for r in _replicas(pinned)} == {"ami-0pinned123"}
    assert DLAMI_NAME not in _ami_lookups(pinned)  # no look-up when pinned


def test_image_per_accelerator_family(gpu: SynthResult) -> None:
    """The OSS-driver DLAMI needs Turing or later (not V100/P3); Inferentia/Trainium need the
    Neuron DLAMI (AWS DLAMI release notes, supported_ec2_instances)."""
    assert DLAMI_NAME in _ami_lookups(gpu)  # A10G: the OSS-driver DLAMI
    assert replica_image_filter("A10G")[1] == DLAMI_NAME
    assert replica_image_filter("V100")[1] == DLAMI_PROPRIETARY_NAME
    assert replica_image_filter("Inferentia2")[1] == NEURON_NAME
    assert replica_image_filter("Trainium")[1] == NEURON_NAME
    assert replica_image_filter(None)[1] == DLAMI_NAME


@pytest.mark.parametrize(("accelerator", "instance_type", "image", "deprecated"), [
    ("V100", "p3.2xlarge", DLAMI_PROPRIETARY_NAME, True),
    ("Inferentia2", "inf2.xlarge", NEURON_NAME, False),
])
def test_replicas_boot_the_image_of_their_accelerator_family(
        tmp_path: Path, accelerator: str, instance_type: str, image: str,
        deprecated: bool) -> None:
    """P3 (V100) looks up the proprietary-driver DLAMI, deprecated images included (Amazon
    Linux 2's end of support); inf2 the Neuron DLAMI."""
    service = tmp_path / "svc.yaml"
    service.write_text("service:\n  readiness_probe: /\n  replicas: 1\n"
                       f"resources:\n  accelerators: {accelerator}:1\n  ports: 8000\n"
                       "run: python3 -m http.server 8000\n")
    config, secret_keys = stack_config(service, "aws")
    result = synthesize(config, secret_keys)
    assert {r.inputs["instanceType"] for r in _replicas(result)} == {instance_type}
    lookups = {f["values"][0]: bool(args.get("includeDeprecated"))
               for token, args in result.invokes if token == "aws:ec2/getAmi:getAmi"
               for f in args["filters"] if f["name"] == "name"}
    assert lookups[image] is deprecated
    assert DLAMI_NAME not in lookups


def test_replicas_reach_the_controller_at_a_stable_address(gpu: SynthResult) -> None:
    """The controller's own network interface keeps its private IP across a replacement of the
    VM (which frees the interface first); an Elastic IP keeps the endpoint."""
    vm = gpu.named("service-controller-vm")
    assert vm.options["deleteBeforeReplace"] is True
    nic = gpu.named("service-controller-nic")
    assert nic.inputs["subnetId"] == "subnet-0synth"
    from components.synth import _ip
    nic_ip = _ip("service-controller-nic", "10.0")
    for replica in _replicas(gpu):
        assert f"http://{nic_ip}:20001" in decode_user_data(replica.inputs["userDataBase64"])
    eip = gpu.named("service-controller-eip")
    assert eip.inputs["networkInterface"] == "service-controller-nic-id"
    # Replacing the VM must not replace (re-allocate) the Elastic IP: no dependency on it.
    assert not any(u.endswith("::service-controller-vm") for u in eip.options["dependsOn"])
    assert gpu.outputs["controllerAddress"] == _ip("service-controller-eip", "203.0")


@pytest.mark.parametrize("size", [1, 6, 8, 10, 12, 32, 100, 300])
@pytest.mark.parametrize("tier", ["low", "medium", "high"])
def test_gp3_within_its_limits(tier: str, size: int) -> None:
    """gp3 (EBS volume types): 3000 IOPS / 125 MiB/s baseline at any size; at most 500 IOPS
    per GiB and 16000; at most 0.25 MiB/s per IOPS and 1000 MiB/s."""
    volume = root_volume(tier, size)
    iops, throughput = volume["iops"], volume["throughput"]
    assert volume["volume_type"] == "gp3"
    assert iops == 3000 or iops <= 500 * size
    assert 3000 <= iops <= 16000
    assert 125 <= throughput <= min(1000, iops // 4)


def test_gp3_small_disks_get_what_their_size_allows() -> None:
    assert (root_volume("medium", 8)["iops"], root_volume("medium", 8)["throughput"]) == (
        4000, 250)
    assert (root_volume("high", 10)["iops"], root_volume("high", 10)["throughput"]) == (
        5000, 1000)
    assert (root_volume("high", 6)["iops"], root_volume("high", 6)["throughput"]) == (3000, 750)
    assert (root_volume("high", 300)["iops"], root_volume("high", 300)["throughput"]) == (
        16000, 1000)


def test_root_volumes_carry_the_stack_tag(gpu: SynthResult) -> None:
    """RunInstances authorises the volume it creates against ``aws:RequestTag``: the root
    volume must be tagged at launch (``volume_tags``) for the controller's conditioned grant."""
    policy = json.loads(gpu.named("service-controller-pulumi-up").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    launch = by_sid["LaunchTaggedReplicas"]
    assert "arn:aws:ec2:us-east-1:*:volume/*" in launch["Resource"]
    stack_id = launch["Condition"]["StringEquals"]["aws:RequestTag/skyform:stack-id"]
    for replica in _replicas(gpu):
        tags = replica.inputs["volumeTags"]
        assert tags["skyform:stack"] == "synth" and tags["skyform:stack-id"] == stack_id
        assert tags["skyform:group"] == replica.inputs["tags"]["skyform:group"]


def test_spot_launch_permission(gpu: SynthResult) -> None:
    """A spot RunInstances also creates a ``spot-instances-request`` (EC2 IAM: "Launch Spot
    Instances with RunInstances"), which the provider does not tag."""
    policy = json.loads(gpu.named("service-controller-pulumi-up").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert "arn:aws:ec2:us-east-1:*:spot-instances-request/*" in by_sid[
        "LaunchFromSharedResources"]["Resource"]
    assert "Condition" not in by_sid["LaunchFromSharedResources"]
    assert by_sid["SpotServiceLinkedRole"]["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}


def test_grants_cover_targeted_up_and_refresh_and_nothing_else(gpu: SynthResult) -> None:
    """The agent's ``refresh``/``up`` target the replica groups with run_program: reads are
    ec2:Describe* (instances, volumes, attributes, and the get_ami/get_subnet invokes);
    writes only on instances/volumes tagged with this stack and a replica group."""
    policy = json.loads(gpu.named("service-controller-pulumi-up").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["Describe"]["Action"] == ["ec2:Describe*"]
    manage = by_sid["ManageOwnReplicas"]
    assert set(manage["Resource"]) == {"arn:aws:ec2:us-east-1:*:instance/*",
                                       "arn:aws:ec2:us-east-1:*:volume/*"}
    # The controller carries skyform:role, not skyform:group: it cannot terminate itself.
    controller_tags = gpu.named("service-controller-vm").inputs["tags"]
    assert "skyform:group" not in controller_tags
    readable = by_sid["ReadControllerSecrets"]["Resource"]
    assert "arn:aws:synth:::secret/service-controller-config" in readable
    writes = {a for s in policy["Statement"] for a in s["Action"]
              if not a.startswith("ec2:Describe")}
    assert writes <= {"ec2:RunInstances", "ec2:CreateTags", "ec2:DeleteTags",
                      "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances",
                      "ec2:ModifyInstanceAttribute", "iam:PassRole",
                      "iam:CreateServiceLinkedRole", "secretsmanager:GetSecretValue",
                      "s3:GetObject"}


def test_instances_depend_on_their_grants(gpu: SynthResult) -> None:
    """A VM booted before its role's policy exists cannot read its secrets: the instances
    depend on the grants they use."""
    policy_urn = gpu.named("service-access-replica").urn
    for replica in _replicas(gpu):
        assert any(urn.endswith("::service-access-replica") and "RolePolicy" in urn
                   for urn in replica.options["dependsOn"]), replica.options
    assert policy_urn  # the replica role policy exists
    controller = gpu.named("service-controller-vm").options["dependsOn"]
    assert any(urn.endswith("::service-controller-pulumi-up") for urn in controller)
