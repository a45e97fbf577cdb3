"""GCP: names unique per stack, boot disk types per machine series, no fleet churn, boot order
and the controller's least-privilege grants.

The mock runtime never diffs or enforces GCP's rules: the tests pin the resource options the
engine acts on and the names/disk types GCP would accept; each rule is named in a docstring."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pulumi
import pytest
from program_support import CONFIG_SECRET, FIXTURES

from components.clouds.gcp import (
    CONTROLLER_PERMISSIONS,
    base_name,
    boot_disk,
    instance_condition,
    instance_name,
)
from components.errors import PlacementError
from components.synth import SynthResult, _ip, stack_config, synthesize


def _run(stack: str = "synth", **extra: Any) -> SynthResult:
    config, secret_keys = stack_config(FIXTURES / "t4_spot.yaml", "gcp",
                                       secrets={"HF_TOKEN": CONFIG_SECRET}, extra=extra)
    return synthesize(config, secret_keys, stack=stack)


@pytest.fixture(scope="module")
def t4() -> SynthResult:
    return _run()


def _global_names(result: SynthResult) -> set[str]:
    names: set[str] = set()
    for r in result.resources:
        if r.type == "gcp:compute/instance:Instance":
            names.add(r.inputs["name"])
            names.update(r.inputs.get("tags") or [])
        elif r.type == "gcp:serviceaccount/account:Account":
            names.add(r.inputs["accountId"])
        elif r.type == "gcp:secretmanager/secret:Secret":
            names.add(r.inputs["secretId"])
        elif r.type == "gcp:compute/address:Address":
            names.add(r.inputs["name"])
    return names


def test_two_stacks_of_one_service_share_no_global_name(t4: SynthResult) -> None:
    other = _run(stack="staging")
    mine, theirs = _global_names(t4), _global_names(other)
    assert len(mine) >= 10
    assert not mine & theirs
    # One stack's firewall rules name only its own tags.
    for rule in other.of_type("gcp:compute/firewall:Firewall"):
        for tag in (rule.inputs.get("sourceTags") or []) + (rule.inputs.get("targetTags") or []):
            assert tag in theirs and tag not in mine


def test_names_fit_gcp_limits(t4: SynthResult) -> None:
    """Service account ids: 6-30 of [a-z0-9-], starting with a letter; instance names, tags,
    addresses: RFC 1035, at most 63."""
    for r in t4.of_type("gcp:serviceaccount/account:Account"):
        assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", r.inputs["accountId"])
    long = SimpleNamespace(name="a" * 30, stack="production-eu-west")
    assert len(instance_name(long, "ondemand", 999)) <= 63  # type: ignore[arg-type]


def _plan(name: str, stack: str = "prod") -> Any:
    return SimpleNamespace(name=name, stack=stack)


def _prefixes(condition: str) -> list[str]:
    return re.findall(r"startsWith\('([^']+)'\)", condition)


def test_iam_condition_matches_only_this_stacks_replicas() -> None:
    """Services whose names share a prefix (``llm`` and ``llm-big``), and two stacks of one
    service, never match each other's condition; nor does the controller's own VM."""
    llm, big, llm_dev = _plan("llm"), _plan("llm-big"), _plan("llm", "dev")
    prefixes = _prefixes(instance_condition("p", "z", llm))
    assert len(prefixes) == 4 and all(p.endswith("-") for p in prefixes)

    def covered(name: str) -> bool:
        return any(f"projects/p/zones/z/instances/{name}".startswith(p) for p in prefixes)

    assert covered(instance_name(llm, "spot", 0)) and covered(instance_name(llm, "ondemand", 3))
    assert not covered(instance_name(big, "spot", 0))
    assert not covered(instance_name(llm_dev, "spot", 0))
    assert not covered(f"{base_name(llm)}-controller")


@pytest.mark.parametrize(("tier", "machine", "kind"), [
    ("medium", "a3-ultragpu-8g", "hyperdisk-balanced"),
    ("high", "a4-highgpu-8g", "hyperdisk-balanced"),
    ("ultra", "a4-highgpu-8g", "hyperdisk-balanced"),
    ("low", "a3-ultragpu-8g", "hyperdisk-balanced"),
    ("medium", "g2-standard-4", "pd-balanced"),
    ("high", "a3-highgpu-8g", "pd-ssd"),
    ("low", "n1-standard-4", "pd-standard"),
    ("low", "a2-highgpu-1g", "pd-standard"),
    ("ultra", "n2-standard-64", "pd-extreme"),
    ("best", "g2-standard-4", "pd-ssd"),
])
def test_boot_disk_type_per_machine_series(tier: str, machine: str, kind: str) -> None:
    """GCP machine series comparison: A3 Ultra and A4 boot only from Hyperdisk (balanced);
    the other GPU series take Persistent Disk."""
    assert boot_disk(tier, machine, 100)["type"] == kind


@pytest.mark.parametrize(("tier", "machine"), [
    ("ultra", "a2-highgpu-1g"), ("ultra", "g2-standard-4"), ("ultra", "a3-highgpu-8g"),
    ("ultra", "n1-standard-8"), ("low", "g2-standard-4"), ("low", "a3-highgpu-8g"),
])
def test_unsupported_tier_and_machine_is_refused(tier: str, machine: str) -> None:
    """pd-extreme: N2 with 64+ vCPUs, M1/M2/M3 only (never GPU machines); pd-standard: not on
    G2 or A3."""
    with pytest.raises(PlacementError, match=f"disk_tier: {tier} .* {machine}"):
        boot_disk(tier, machine, 100)


def test_program_refuses_an_unsupported_tier_with_the_file(tmp_path: Path) -> None:
    service = tmp_path / "l4.yaml"
    service.write_text("service:\n  readiness_probe: /\n  replicas: 1\n"
                       "resources:\n  accelerators: L4:1\n  disk_tier: low\n  ports: 8000\n"
                       "run: python3 -m http.server 8000\n")
    config, secret_keys = stack_config(service, "gcp")
    with pytest.raises(pulumi.RunError) as caught:
        synthesize(config, secret_keys)
    assert isinstance(caught.value.__cause__, PlacementError)
    message = str(caught.value)
    assert str(service) in message or "l4.yaml" in message
    assert "resources.disk_tier: low (pd-standard) is not supported on GCP machine type g2-" \
        in message
    assert "use disk_tier: medium" in message


def test_a_new_image_never_replaces_a_vm(t4: SynthResult) -> None:
    for vm in t4.of_type("gcp:compute/instance:Instance"):
        assert "bootDisk.initializeParams.image" in vm.options["ignoreChanges"], vm.name


def test_a_newer_start_up_script_never_replaces_a_running_replica(t4: SynthResult) -> None:
    """``metadata_startup_script`` is ForceNew in the provider: the live generation's
    replicas ignore it, so a newer skyform's start-up script reaches only the replicas
    launched from then on (a YAML edit is a new generation with new instances)."""
    replicas = [vm for vm in t4.of_type("gcp:compute/instance:Instance")
                if "controller" not in vm.name]
    assert replicas
    for vm in replicas:
        assert "metadataStartupScript" in vm.options["ignoreChanges"], vm.name


def test_image_id_config_pins_the_replica_image() -> None:
    pinned = _run(imageId="projects/my-proj/global/images/my-image-v3")
    replicas = [r for r in pinned.of_type("gcp:compute/instance:Instance")
                if r.name != "service-controller-vm"]
    assert {r.inputs["bootDisk"]["initializeParams"]["image"] for r in replicas} == {
        "projects/my-proj/global/images/my-image-v3"}


def test_controller_has_reserved_addresses(t4: SynthResult) -> None:
    """A reserved static internal address (address_type INTERNAL) is what replicas call; it
    and the external address survive a replacement of the VM (delete before replace)."""
    internal = t4.named("service-controller-internal")
    assert internal.inputs["addressType"] == "INTERNAL"
    ip = _ip("service-controller-internal", "10.128")
    vm = t4.named("service-controller-vm")
    assert vm.inputs["networkInterfaces"][0]["networkIp"] == ip
    assert vm.inputs["networkInterfaces"][0]["accessConfigs"] == [
        {"natIp": _ip("service-controller-external", "34.1")}]
    assert vm.options["deleteBeforeReplace"] is True
    for replica in t4.of_type("gcp:compute/instance:Instance"):
        if replica.name != "service-controller-vm":
            script = replica.inputs["metadataStartupScript"]
            files = "".join(base64.b64decode(m).decode()
                            for m in re.findall(r"echo (\S+) \| base64 -d", script))
            assert f"CONTROLLER_URLS=(http://{ip}:20001 " in files


def test_instances_depend_on_their_grants(t4: SynthResult) -> None:
    for vm in t4.of_type("gcp:compute/instance:Instance"):
        deps = vm.options["dependsOn"]
        if vm.name == "service-controller-vm":
            assert any(u.endswith("::service-controller-instances") for u in deps)
            assert any(u.endswith("::service-controller-config") and "SecretIamMember" in u
                       for u in deps)
        else:
            assert any(u.endswith("::service-access-replica-credentials-replica")
                       for u in deps)
            assert not any(u.endswith("::service-access-agent-token-replica") for u in deps)
            assert any(u.endswith("::service-access-service-secrets-replica") for u in deps)


def test_controller_grants(t4: SynthResult) -> None:
    """Targeted up/refresh of the replica groups: the controller's custom role conditioned on this
    stack's replica instances and disks; act as the replica service account; read its
    secrets."""
    members = {r.name: r.inputs for r in t4.of_type("gcp:projects/iAMMember:IAMMember")}
    grant = members["service-controller-instances"]
    [role] = t4.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")
    assert grant["role"] == f"projects/{role.inputs['project']}/roles/{role.inputs['roleId']}"
    assert role.inputs["permissions"] == sorted(CONTROLLER_PERMISSIONS)
    expression = grant["condition"]["expression"]
    assert f"/disks/{base_name_of(t4)}-spot-'" in expression
    accessors = {r.name for r in t4.of_type(
        "gcp:secretmanager/secretIamMember:SecretIamMember") if r.name.startswith(
        "service-controller-")}
    assert accessors == {"service-controller-token", "service-controller-config",
                         "service-controller-service-secrets"}


def base_name_of(result: SynthResult) -> str:
    return str(result.named("service-controller-vm").inputs["name"]).removesuffix("-controller")


def test_configured_project_needs_no_project_lookup(t4: SynthResult) -> None:
    """With ``gcp:project`` set the program makes no ``getProject`` invoke, so the agent's
    run_program refresh/up needs no resourcemanager.projects.get."""
    assert any(token == "gcp:organizations/getProject:getProject" for token, _ in t4.invokes)
    pinned = _run(**{"gcp:project": "my-proj"})
    assert not any(token == "gcp:organizations/getProject:getProject"
                   for token, _ in pinned.invokes)
    members = {r.name: r.inputs for r in pinned.of_type("gcp:projects/iAMMember:IAMMember")}
    assert "projects/my-proj/zones/" in members["service-controller-instances"]["condition"][
        "expression"]
