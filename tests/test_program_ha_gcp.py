"""Several controllers on GCP (``skyform:controllerReplicas`` >= 2), run under mocks: the
controllers spread over the region's zones, one unmanaged instance group per zone behind a
regional external passthrough load balancer (health check on the agent's ``/health``),
the endpoint is its forwarding rule's address, Google's probe ranges reach the controllers'
admin port only, and every controller's agent config shares the GCS lease. With 1 the
stack is the one-controller stack, resource for resource."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from program_support import run

from components.clouds.gcp_lb import HEALTH_CHECK_RANGES, HEALTH_PATH
from components.synth import SynthResult, _ip

SECRETS = {"HF_TOKEN": "hf-x"}


@pytest.fixture(scope="module")
def three() -> SynthResult:
    return run("t4_spot.yaml", "gcp", secrets=SECRETS, controllerReplicas=3)


@pytest.fixture(scope="module")
def one() -> SynthResult:
    return run("t4_spot.yaml", "gcp", secrets=SECRETS)


def _controllers(result: SynthResult) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in result.of_type("gcp:compute/instance:Instance")
            if r.parent == "service-controller"}


def _config(result: SynthResult) -> dict[str, Any]:
    [version] = [r for r in result.of_type("gcp:secretmanager/secretVersion:SecretVersion")
                 if r.name == "service-controller-config"]
    loaded: dict[str, Any] = json.loads(version.raw_inputs["secretData"])
    return loaded


def _link(vm: dict[str, Any]) -> str:
    return ("https://www.googleapis.com/compute/v1/projects/synth-project/zones/"
            f"{vm['zone']}/instances/{vm['name']}")


def test_controllers_spread_over_the_zones(three: SynthResult) -> None:
    vms = _controllers(three)
    assert sorted(vms) == ["service-controller-1-vm", "service-controller-2-vm",
                           "service-controller-vm"]
    assert vms["service-controller-vm"]["zone"] == "us-central1-a"
    assert {vms["service-controller-1-vm"]["zone"], vms["service-controller-2-vm"]["zone"]} \
        == {"us-central1-b", "us-central1-c"}
    tags = {tuple(v["tags"]) for v in vms.values()}
    assert len(tags) == 1  # one network tag: the firewall rules cover every controller
    accounts = {v["serviceAccount"]["email"] for v in vms.values()}
    assert len(accounts) == 1
    # The others' external addresses are ephemeral (egress only); internal ones reserved:
    # their slot's fixed address in the controllers' subnet (controllers.slot).
    for name in ("service-controller-1-vm", "service-controller-2-vm"):
        nic = vms[name]["networkInterfaces"][0]
        assert nic["accessConfigs"] == [{}]
        address = three.named(name.replace("-vm", "-internal")).inputs
        assert nic["networkIp"] == address["address"]
        assert nic["subnetwork"] == address["subnetwork"] == "service-controller-slots-id"
        assert ipaddress.ip_address(nic["networkIp"]) in ipaddress.ip_network(
            three.named("service-controller-slots").inputs["ipCidrRange"])


def test_the_load_balancer_holds_every_controller(three: SynthResult) -> None:
    vms = _controllers(three)
    groups = three.of_type("gcp:compute/instanceGroup:InstanceGroup")
    assert sorted(g.inputs["zone"] for g in groups) == ["us-central1-a", "us-central1-b",
                                                        "us-central1-c"]
    members = [link for g in groups for link in g.inputs["instances"]]
    assert sorted(members) == sorted(_link(v) for v in vms.values())
    for group in groups:
        assert all(f"/zones/{group.inputs['zone']}/" in m for m in group.inputs["instances"])
    [check] = three.of_type("gcp:compute/regionHealthCheck:RegionHealthCheck")
    assert check.inputs["httpHealthCheck"] == {"port": 20001, "requestPath": HEALTH_PATH}
    assert check.inputs["region"] == "us-central1"
    [backend] = three.of_type("gcp:compute/regionBackendService:RegionBackendService")
    assert (backend.inputs["loadBalancingScheme"], backend.inputs["protocol"]) == (
        "EXTERNAL", "TCP")
    assert backend.inputs["healthChecks"] == "service-nlb-health-id"
    assert sorted(b["group"] for b in backend.inputs["backends"]) == sorted(
        "https://www.googleapis.com/compute/v1/projects/synth-project/zones/"
        f"{g.inputs['zone']}/instanceGroups/{g.inputs['name']}" for g in groups)
    assert {b["balancingMode"] for b in backend.inputs["backends"]} == {"CONNECTION"}
    [rule] = three.of_type("gcp:compute/forwardingRule:ForwardingRule")
    assert (rule.inputs["loadBalancingScheme"], rule.inputs["ipProtocol"],
            rule.inputs["ports"]) == ("EXTERNAL", "TCP", ["30001"])
    assert rule.inputs["backendService"].endswith(
        f"/regions/us-central1/backendServices/{backend.inputs['name']}")


def test_endpoint_is_the_forwarding_rules_address(three: SynthResult) -> None:
    [rule] = three.of_type("gcp:compute/forwardingRule:ForwardingRule")
    [address] = [r for r in three.of_type("gcp:compute/address:Address")
                 if r.name == "service-nlb-address"]
    assert address.inputs["addressType"] == "EXTERNAL"
    ip = _ip("service-nlb-address", "34.1")
    assert rule.inputs["ipAddress"] == ip
    assert three.outputs["controllerAddress"] == ip
    assert three.outputs["endpoint"] == f"http://{ip}:30001"
    # Not the first controller's own address any more.
    assert ip != _ip("service-controller-external", "34.1")


def test_firewall_admits_probes_and_peers_to_the_admin_port_only(three: SynthResult) -> None:
    rules = {r.name: r.inputs for r in three.of_type("gcp:compute/firewall:Firewall")}
    tag = next(iter(_controllers(three).values()))["tags"][0]
    probes = rules["service-nlb-health-checks"]
    assert probes["sourceRanges"] == list(HEALTH_CHECK_RANGES)
    assert "130.211.0.0/22" not in probes["sourceRanges"]
    assert probes["targetTags"] == [tag]
    assert probes["allows"] == [{"protocol": "tcp", "ports": ["20001"]}]
    peers = rules["service-nlb-controllers-admin"]
    assert peers["sourceTags"] == peers["targetTags"] == [tag]
    assert peers["allows"] == [{"protocol": "tcp", "ports": ["20001"]}]
    # Clients reach the controllers' public port through the passthrough balancer with
    # their own addresses: the one allowedCidrs rule, unchanged.
    assert rules["service-firewall-lb"]["sourceRanges"] == ["0.0.0.0/0"]
    assert rules["service-firewall-lb"]["targetTags"] == [tag]


def test_every_controller_shares_the_gcs_lease(three: SynthResult) -> None:
    assert _config(three)["agent"]["lease"] == {
        "kind": "gcs", "bucket": "service-access-files", "name": "lease/t4-spot.json"}
    roles = {r.name: r.inputs for r in three.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")}
    assert roles["service-controller-lease-role"]["permissions"] == [
        "storage.objects.create", "storage.objects.delete", "storage.objects.get"]
    [binding] = [r.inputs for r in three.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
                 if r.name == "service-controller-lease"]
    assert binding["condition"]["expression"] == (
        "resource.name == 'projects/_/buckets/service-access-files/objects/lease/t4-spot.json'")
    assert binding["role"].endswith(roles["service-controller-lease-role"]["roleId"])


def test_one_controller_is_the_stack_without_a_load_balancer(one: SynthResult) -> None:
    explicit = run("t4_spot.yaml", "gcp", secrets=SECRETS, controllerReplicas=1)

    def plan(result: SynthResult) -> list[str]:
        return sorted(json.dumps([r.type, r.name, r.parent, r.raw_inputs], sort_keys=True,
                                 default=str) for r in result.resources)

    assert plan(explicit) == plan(one)
    assert not [r for r in one.resources if r.name.startswith("service-nlb")
                or r.name.startswith("service-controller-lease")]
    assert sorted(_controllers(one)) == ["service-controller-vm"]
    assert "lease" not in _config(one)["agent"]
    assert one.outputs["endpoint"] == \
        f"http://{_ip('service-controller-external', '34.1')}:30001"


def test_synth_shows_the_load_balancer() -> None:
    from click.testing import CliRunner
    from program_support import FIXTURES

    from components.commands.synth import synth

    shown = CliRunner().invoke(synth, [str(FIXTURES / "cpu_http.yaml"), "--cloud", "gcp",
                                       "--config", "controllerReplicas=2", "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    types = {r["type"] for r in doc["resources"]}
    assert {"skyform:gcp:NetworkLoadBalancer", "gcp:compute/forwardingRule:ForwardingRule",
            "gcp:compute/regionBackendService:RegionBackendService"} <= types
    [rule] = [r for r in doc["resources"]
              if r["type"] == "gcp:compute/forwardingRule:ForwardingRule"]
    assert doc["outputs"]["endpoint"] == f"http://{rule['inputs']['ipAddress']}:30001"


def test_going_from_one_to_three_controllers_replaces_nothing(one: SynthResult,
                                                             three: SynthResult) -> None:
    """Adding controllers adds resources; of the existing ones only the controller config
    (a new secret version, as every commit writes) changes: the first controller, its
    reserved addresses, its grants and the replicas stay."""
    by_key = {(r.type, r.name): r for r in three.resources}
    assert [(r.type, r.name) for r in one.resources if (r.type, r.name) not in by_key] == []
    changed = {r.name for r in one.resources
               if json.dumps(r.raw_inputs, sort_keys=True, default=str)
               != json.dumps(by_key[(r.type, r.name)].raw_inputs, sort_keys=True, default=str)}
    assert changed == {"service-controller-config"}
