"""The real Pulumi program on AWS, run under mocks: instances, disks, firewall, controller,
counts from stack config, and secrets that stay secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from program_support import (
    CONFIG_SECRET,
    YAML_SECRET,
    cloud_init_schema,
    decode_user_data,
    everything_visible,
    run,
)

from components.catalog import controller_offer, offer_for
from components.clouds.aws import root_volume
from components.spec import Candidate
from components.synth import MASK, SynthResult


@pytest.fixture(scope="module")
def gpu() -> SynthResult:
    return run("gpu_spot.yaml", "aws", secrets={"EXTRA_TOKEN": CONFIG_SECRET})


def _instances(result: SynthResult, group: str) -> list:
    return sorted(
        (r for r in result.of_type("aws:ec2/instance:Instance")
         if r.parent == f"service-{group}"),
        key=lambda r: r.name,
    )


def test_spot_group_uses_spot_market_and_ondemand_does_not(gpu: SynthResult) -> None:
    spot, ondemand = _instances(gpu, "spot"), _instances(gpu, "ondemand")
    # min 2 with base_ondemand_fallback_replicas 1: one spot, one on-demand.
    assert [r.name for r in spot] == ["service-spot-0"]
    assert [r.name for r in ondemand] == ["service-ondemand-0"]
    assert spot[0].inputs["instanceMarketOptions"]["marketType"] == "spot"
    assert "instanceMarketOptions" not in ondemand[0].inputs
    assert gpu.outputs["replicaCount"] == 2
    assert [(r["group"], r["spot"]) for r in gpu.outputs["replicas"]] == [
        ("spot", True), ("ondemand", False)]


def test_accelerator_maps_to_catalog_instance_type(gpu: SynthResult) -> None:
    expected = offer_for(Candidate(accelerator="A10G", accelerator_count=1, use_spot=True), "aws")
    assert expected is not None and expected.instance_type == "g5.xlarge"
    for instance in _instances(gpu, "spot") + _instances(gpu, "ondemand"):
        assert instance.inputs["instanceType"] == "g5.xlarge"
    assert all(r["instanceType"] == "g5.xlarge" for r in gpu.outputs["replicas"])


def test_disk_size_and_tier(gpu: SynthResult) -> None:
    disk = _instances(gpu, "spot")[0].inputs["rootBlockDevice"]
    assert disk["volumeSize"] == 300
    assert (disk["volumeType"], disk["iops"], disk["throughput"]) == ("gp3", 16000, 1000)
    assert root_volume("ultra", 100)["volume_type"] == "io2"
    assert root_volume("ultra", 100)["iops"] == 50000
    assert root_volume("low", 10)["iops"] == 3000


def test_image_is_the_deep_learning_ami_lookup(gpu: SynthResult) -> None:
    assert _instances(gpu, "spot")[0].inputs["ami"] == "ami-0synth0000000000"


def test_labels_become_tags(gpu: SynthResult) -> None:
    tags = _instances(gpu, "ondemand")[0].inputs["tags"]
    assert tags["team"] == "ml"
    assert tags["skyform:group"] == "ondemand" and tags["skyform:index"] == "0"


def test_firewall_sources(gpu: SynthResult) -> None:
    rules = gpu.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    by_name = {r.name: r.inputs for r in rules}
    lb = by_name["service-firewall-lb-0"]
    assert (lb["fromPort"], lb["cidrIpv4"]) == (30001, "0.0.0.0/0")
    assert lb["securityGroupId"] == "service-firewall-controller-id"
    service = by_name["service-firewall-service-8000"]
    assert service["securityGroupId"] == "service-firewall-replica-id"
    assert service["referencedSecurityGroupId"] == "service-firewall-controller-id"
    assert "cidrIpv4" not in service
    assert not [n for n in by_name if "ssh" in n], "SSH must be closed by default"


def test_ssh_and_client_cidrs_from_stack_config() -> None:
    result = run("gpu_spot.yaml", "aws", sshCidrs=["198.51.100.0/24"],
                 allowedCidrs=["203.0.113.0/24", "192.0.2.0/24"])
    rules = {r.name: r.inputs for r in result.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")}
    assert {rules["service-firewall-lb-0"]["cidrIpv4"],
            rules["service-firewall-lb-1"]["cidrIpv4"]} == {"203.0.113.0/24", "192.0.2.0/24"}
    ssh = [v for k, v in rules.items() if "ssh" in k]
    assert len(ssh) == 2 and all(r["cidrIpv4"] == "198.51.100.0/24" for r in ssh)


def test_controller_and_endpoint(gpu: SynthResult) -> None:
    controllers = gpu.of_type("skyform:aws:Controller")
    assert len(controllers) == 1
    vm = gpu.named("service-controller-vm")
    assert vm.inputs["primaryNetworkInterface"] == {
        "networkInterfaceId": "service-controller-nic-id"}
    assert "instanceMarketOptions" not in vm.inputs
    address = gpu.outputs["controllerAddress"]
    assert gpu.outputs["endpoint"] == f"http://{address}:30001"
    offer = offer_for(Candidate(accelerator="A10G", accelerator_count=1, use_spot=True), "aws")
    assert offer is not None
    expected = (controller_offer("aws").ondemand_hourly_usd + offer.spot_hourly_usd
                + offer.ondemand_hourly_usd)
    assert gpu.outputs["hourlyCost"] == pytest.approx(expected, abs=1e-3)
    assert len(gpu.outputs["replicaGroupUrns"]) == 2
    assert all("skyform:aws:ReplicaGroup" in urn for urn in gpu.outputs["replicaGroupUrns"])


def test_controller_role_is_scoped_to_the_stack(gpu: SynthResult) -> None:
    import json

    policy = json.loads(gpu.named("service-controller-pulumi-up").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    # Conditioned on the stack's unique id (backend, organization, project, stack), which
    # every instance carries: never on the bare stack name another project may share.
    stack_id = by_sid["ManageOwnReplicas"]["Condition"]["StringEquals"][
        "ec2:ResourceTag/skyform:stack-id"]
    assert re.fullmatch(r"[0-9a-f]{20}", stack_id)
    assert by_sid["ManageOwnReplicas"]["Condition"] == {
        "StringEquals": {"ec2:ResourceTag/skyform:stack-id": stack_id},
        "StringLike": {"ec2:ResourceTag/skyform:group": "*"}}
    assert all(r.inputs["tags"]["skyform:stack-id"] == stack_id
               for r in gpu.of_type("aws:ec2/instance:Instance"))
    assert by_sid["ReadControllerSecrets"]["Action"] == ["secretsmanager:GetSecretValue"]
    assert not any(s.get("Action") == "*" or s.get("Action") == ["*"]
                   for s in policy["Statement"])


@pytest.mark.parametrize(
    ("extra", "replicas", "spot", "ondemand"),
    [
        ({}, 4, 3, 1),  # desired 4: base on-demand 1
        ({}, 10, 4, 1),  # clipped to the YAML's max 5
        ({"minReplicas": 3}, None, 2, 1),  # default = min from stack config
        ({"maxReplicas": 2}, 4, 1, 1),  # stack config max overrides the YAML's 5
        ({"onDemandReplicas": 3}, 4, 1, 3),  # dynamic fallback written by the agent
    ],
)
def test_replica_count_follows_config(extra: dict, replicas: int | None, spot: int,
                                      ondemand: int) -> None:
    result = run("gpu_spot.yaml", "aws", replicas=replicas, **extra)
    assert len(_instances(result, "spot")) == spot
    assert len(_instances(result, "ondemand")) == ondemand
    assert result.outputs["replicaCount"] == spot + ondemand
    # Scale-down removes the highest index: indexes are always 0..n-1.
    assert [r.name for r in _instances(result, "spot")] == [
        f"service-spot-{i}" for i in range(spot)]


def test_secrets_are_secret(gpu: SynthResult, tmp_path: Path) -> None:
    visible = everything_visible(gpu)
    assert YAML_SECRET not in visible and CONFIG_SECRET not in visible
    assert "synth-token-" not in visible
    version = next(r for r in gpu.of_type("aws:secretsmanager/secretVersion:SecretVersion")
                   if r.name == "service-access-service-secrets")
    assert version.inputs["secretString"] == MASK
    assert YAML_SECRET in version.raw_inputs["secretString"]
    assert CONFIG_SECRET in version.raw_inputs["secretString"]
    assert gpu.named("service-access-agent-token").type == "aws:secretsmanager/secret:Secret"
    for instance in gpu.of_type("aws:ec2/instance:Instance"):
        user_data = decode_user_data(instance.raw_inputs["userDataBase64"])
        assert YAML_SECRET not in user_data and CONFIG_SECRET not in user_data
        assert "synth-token-" not in user_data
        assert "secretsmanager get-secret-value" in user_data or "controller.sh" in user_data


def test_user_data_is_valid_cloud_init(gpu: SynthResult, tmp_path: Path) -> None:
    spot = decode_user_data(_instances(gpu, "spot")[0].inputs["userDataBase64"])
    ondemand = decode_user_data(_instances(gpu, "ondemand")[0].inputs["userDataBase64"])
    controller = decode_user_data(gpu.named("service-controller-vm").inputs["userDataBase64"])
    for i, text in enumerate((spot, ondemand, controller)):
        assert text.startswith("#cloud-config")
        cloud_init_schema(tmp_path, text, f"ud-{i}.yaml")
    assert "INDEX + 1))" in spot and "INDEX + 1001))" in ondemand
    assert "SKYPILOT_NUM_GPUS_PER_NODE=1" in spot
    assert "spot/instance-action" in spot and "spot/instance-action" not in ondemand
    assert "skyform agent --config /etc/skyform/agent.json" in controller
    assert "Restart=always" in controller
