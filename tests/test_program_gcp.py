"""The real Pulumi program on GCP, run under mocks."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from program_support import CONFIG_SECRET, bash_syntax, cloud_init_schema, everything_visible, run

from components.clouds.gcp import boot_disk_type
from components.synth import MASK, SynthResult


@pytest.fixture(scope="module")
def t4() -> SynthResult:
    return run("t4_spot.yaml", "gcp", secrets={"HF_TOKEN": CONFIG_SECRET})


def base_name_of(result: SynthResult) -> str:
    """``<service>-<hash>`` as the controller VM's name shows it."""
    return str(result.named("service-controller-vm").inputs["name"]).removesuffix("-controller")


def _instances(result: SynthResult, group: str) -> list:
    return sorted((r for r in result.of_type("gcp:compute/instance:Instance")
                   if r.parent == f"service-{group}"), key=lambda r: r.name)


def test_spot_provisioning_and_gpu(t4: SynthResult) -> None:
    spot, ondemand = _instances(t4, "spot"), _instances(t4, "ondemand")
    assert len(spot) == 1 and len(ondemand) == 1
    assert spot[0].inputs["scheduling"]["provisioningModel"] == "SPOT"
    assert spot[0].inputs["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert ondemand[0].inputs["scheduling"]["provisioningModel"] == "STANDARD"
    assert ondemand[0].inputs["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert spot[0].inputs["machineType"] == "n1-standard-4"
    assert spot[0].inputs["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert re.fullmatch(r"t4-spot-[0-9a-f]{6}-spot-0", spot[0].inputs["name"])


def test_disk_size_tier_and_image(t4: SynthResult) -> None:
    params = _instances(t4, "spot")[0].inputs["bootDisk"]["initializeParams"]
    assert params["size"] == 120 and params["type"] == "pd-standard"
    assert "deeplearning-platform-release" in params["image"]
    assert [boot_disk_type(t) for t in ("low", "medium", "high", "ultra", "best")] == [
        "pd-standard", "pd-balanced", "pd-ssd", "pd-extreme", "pd-ssd"]


def test_labels_are_sanitised(t4: SynthResult) -> None:
    labels = _instances(t4, "ondemand")[0].inputs["labels"]
    assert labels["team"] == "ml"
    assert labels["group"] == "ondemand"


def test_firewall_sources(t4: SynthResult) -> None:
    rules = {r.name: r.inputs for r in t4.of_type("gcp:compute/firewall:Firewall")}
    assert rules["service-firewall-lb"]["sourceRanges"] == ["0.0.0.0/0"]
    assert rules["service-firewall-lb"]["allows"] == [{"protocol": "tcp", "ports": ["30001"]}]
    service = rules["service-firewall-service"]
    base = base_name_of(t4)
    assert service["sourceTags"] == [f"{base}-controller"]
    assert service["targetTags"] == [f"{base}-replica"]
    assert service["allows"][0]["ports"] == ["8080"]
    assert "sourceRanges" not in service
    assert "service-firewall-ssh" not in rules


def test_controller_endpoint_and_startup(t4: SynthResult, tmp_path: Path) -> None:
    vm = t4.named("service-controller-vm")
    assert "scheduling" not in vm.inputs or vm.inputs["scheduling"].get(
        "provisioningModel") != "SPOT"
    assert t4.outputs["endpoint"] == f"http://{t4.outputs['controllerAddress']}:30001"
    cloud_init_schema(tmp_path, vm.inputs["metadata"]["user-data"])
    script = _instances(t4, "spot")[0].inputs["metadataStartupScript"]
    bash_syntax(tmp_path, script)
    files = {
        m.group(2): base64.b64decode(m.group(1)).decode()
        for m in re.finditer(r"echo (\S+) \| base64 -d >(\S+)", script)
    }
    replica = files["/opt/skyform/replica.sh"]
    bash_syntax(tmp_path, replica, "replica.sh")
    assert "instance/preempted" in replica
    assert "gcloud secrets versions access" in replica
    assert "export MODEL=tiny" in files["/opt/skyform/env.sh"]
    members = {r.name: r.inputs for r in t4.of_type("gcp:projects/iAMMember:IAMMember")}
    condition = members["service-controller-instances"]["condition"]["expression"]
    assert f"instances/{base_name_of(t4)}-spot-'" in condition


def test_secrets_are_secret(t4: SynthResult) -> None:
    visible = everything_visible(t4)
    assert CONFIG_SECRET not in visible
    versions = [r for r in t4.of_type("gcp:secretmanager/secretVersion:SecretVersion")
                if r.name == "service-access-service-secrets"]
    assert versions[0].inputs["secretData"] == MASK
    assert CONFIG_SECRET in versions[0].raw_inputs["secretData"]
    for instance in t4.of_type("gcp:compute/instance:Instance"):
        assert CONFIG_SECRET not in str(instance.raw_inputs)


def test_replicas_follow_config() -> None:
    result = run("t4_spot.yaml", "gcp", replicas=4, secrets={"HF_TOKEN": "x"},
                 maxReplicas=3)
    assert len(_instances(result, "spot")) == 2
    assert len(_instances(result, "ondemand")) == 1
    assert result.outputs["replicaCount"] == 3
