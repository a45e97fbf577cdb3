"""Multi-node replicas (num_nodes > 1) on the three clouds, run under mocks: a replica is a
group of nodes (one head), placed together, removed together, told its rank and IPs."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from program_support import bash_syntax, decode_user_data, run

from components.synth import SynthResult, k8s_manifests

K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def k8s() -> SynthResult:
    return run("multinode.yaml", "kubernetes")


def _objects(result: SynthResult, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_manifests(result) if o["kind"] == kind}


def test_kubernetes_a_statefulset_per_replica_and_valid_objects(k8s: SynthResult,
                                                                 tmp_path: Any) -> None:
    sets = _objects(k8s, "StatefulSet")
    assert set(sets) == {"multinode-ondemand-0", "multinode-ondemand-1"}
    for index, (name, sset) in enumerate(sorted(sets.items())):
        assert sset["spec"]["replicas"] == 2  # the nodes of one replica
        assert sset["spec"]["serviceName"] == name
        assert sset["spec"]["selector"]["matchLabels"]["skyform-replica"] == str(index)
        pod = sset["spec"]["template"]["spec"]
        assert "readinessProbe" not in pod["containers"][0]  # the agent probes the head
        assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
        headless = _objects(k8s, "Service")[name]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["publishNotReadyAddresses"] is True
        script = _objects(k8s, "ConfigMap")[f"{name}-files"]["data"]["replica.sh"]
        assert f"INDEX={index}" in script and 'NODE_RANK="${HOSTNAME##*-}"' in script
        assert "export SKYPILOT_NUM_NODES=2" in script
        assert f"{name}-0.{name}.multinode.svc.cluster.local" in script
        assert f"{name}-1.{name}.multinode.svc.cluster.local" in script
        bash_syntax(tmp_path, script)
    # Only the heads are replicas (what the agent routes to).
    assert [r["address"] for r in k8s.outputs["replicas"]] == [
        f"multinode-ondemand-{i}-0.multinode-ondemand-{i}.multinode.svc.cluster.local"
        for i in range(2)]
    policy = _objects(k8s, "NetworkPolicy")["multinode-replicas"]
    assert {"from": [{"podSelector": {"matchLabels": {
        "skyform-service": "multinode", "skyform-role": "replica"}}}]} in policy["spec"][
        "ingress"]
    for obj in k8s_manifests(k8s):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_aws_one_placement_group_and_ip_list_per_replica(tmp_path: Any) -> None:
    result = run("multinode.yaml", "aws")
    groups = result.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert [g.inputs["strategy"] for g in groups] == ["cluster", "cluster"]
    instances = [r for r in result.of_type("aws:ec2/instance:Instance")
                 if r.parent == "service-ondemand"]
    assert sorted(r.name for r in instances) == [
        "service-ondemand-0", "service-ondemand-0-node1",
        "service-ondemand-1", "service-ondemand-1-node1"]
    by_name = {r.name: r for r in instances}
    assert by_name["service-ondemand-1"].inputs["placementGroup"] == by_name[
        "service-ondemand-1-node1"].inputs["placementGroup"]
    # A cluster placement group is in one zone: every node of the group goes there.
    assert {by_name[n].inputs["availabilityZone"] for n in by_name} == {"us-east-1a"}
    for name, rank in (("service-ondemand-1", 0), ("service-ondemand-1-node1", 1)):
        data = decode_user_data(by_name[name].inputs["userDataBase64"])
        assert f"NODE_RANK={rank}" in data and "export SKYPILOT_NUM_NODES=2" in data
        assert "skyform/synth/multinode/nodes/ondemand-1" in data
    version = next(r for r in result.of_type("aws:secretsmanager/secretVersion:SecretVersion")
                   if r.name == "service-ondemand-1-nodes")
    ips = version.raw_inputs["secretString"].split("\n")
    assert len(ips) == 2 and ips[0] == result.outputs["replicas"][1]["address"]  # head first
    policy = json.loads(next(r for r in result.of_type("aws:iam/rolePolicy:RolePolicy")
                             if r.name == "service-access-replica").inputs["policy"])
    assert any(s["Resource"] == ["arn:aws:secretsmanager:us-east-1:*:secret:"
                                 "skyform/synth/multinode/nodes/*"]
               for s in policy["Statement"])
    assert any(r.name == "service-firewall-nodes"
               for r in result.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"))
    assert result.outputs["replicaCount"] == 2


def test_gcp_compact_placement_where_the_family_has_it() -> None:
    result = run("multinode.yaml", "gcp")
    policies = result.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    assert len(policies) == 2
    assert policies[0].inputs["groupPlacementPolicy"] == {"collocation": "COLLOCATED",
                                                          "vmCount": 2}
    instances = result.of_type("gcp:compute/instance:Instance")
    replicas = [r for r in instances if r.parent == "service-ondemand"]
    assert len(replicas) == 4 and all("resourcePolicies" in r.inputs for r in replicas)
    assert len(result.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")) >= 2



def test_gcp_no_placement_policy_for_n1(tmp_path: Any) -> None:
    # T4 runs on N1, which compact placement does not accept: the nodes go without a policy.
    from components.synth import stack_config, synthesize

    spec = tmp_path / "t4.yaml"
    spec.write_text("service:\n  readiness_probe: /\n  replicas: 1\nresources:\n"
                    "  ports: 8080\n  accelerators: T4:1\nnum_nodes: 3\nrun: serve\n")
    result = synthesize(*stack_config(spec, "gcp"))
    assert not result.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    nodes = [r for r in result.of_type("gcp:compute/instance:Instance")
             if r.parent == "service-ondemand"]
    assert len(nodes) == 3 and all("resourcePolicies" not in r.inputs for r in nodes)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
def test_scale_down_removes_whole_groups(cloud: str) -> None:
    three = {r.name for r in run("multinode.yaml", cloud, replicas=3).resources}
    two = {r.name for r in run("multinode.yaml", cloud, replicas=2).resources}
    gone = three - two
    assert two < three
    # Only replica 2's resources go, all of them: head, worker (the whole StatefulSet on
    # Kubernetes) and the group's placement and IP list.
    assert all(name.startswith("service-ondemand-2") for name in gone), gone
    if cloud == "kubernetes":
        assert {"service-ondemand-2-set", "service-ondemand-2-headless"} <= gone
    else:
        assert {"service-ondemand-2", "service-ondemand-2-node1",
                "service-ondemand-2-nodes"} <= gone
