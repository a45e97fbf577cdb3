"""Several load balancers on Kubernetes (``skyform:controllerReplicas``), rendered by the real
program under mocks: the Deployment, its spread, PodDisruptionBudget and rolling update, the
lease in the agent config, the Role and admission policy for the Lease, the NetworkPolicy of
the cluster port, and the stack config's checks."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pulumi
import pytest
from click.testing import CliRunner
from program_support import FIXTURES, run
from test_kubernetes_boundary import USERNAME, admitted, rbac_allows

from components.commands.synth import synth
from components.stack_config import StackConfigError
from components.synth import SynthResult, k8s_manifests

K8S_VERSION = "1.30.0"
LABELS = {"skyform-service": "t4-spot", "skyform-role": "controller"}


@pytest.fixture(scope="module")
def ha() -> SynthResult:
    return run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"})


@pytest.fixture(scope="module")
def single() -> SynthResult:
    return run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"}, controllerReplicas=1)


def _objects(result: SynthResult, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_manifests(result) if o["kind"] == kind}


def _deployment(result: SynthResult) -> dict[str, Any]:
    return _objects(result, "Deployment")["t4-spot-controller"]


def _agent_config(result: SynthResult) -> dict[str, Any]:
    files = _objects(result, "ConfigMap")["t4-spot-controller-files"]["data"]
    config: dict[str, Any] = json.loads(files["agent.json"])
    return config


def test_two_load_balancers_by_default_every_object_valid(ha: SynthResult) -> None:
    assert ha.outputs["controllerReplicas"] == 2
    spec = _deployment(ha)["spec"]
    assert spec["replicas"] == 2
    # A rolling update starts a new pod before it stops one: the endpoint always has pods.
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    for obj in k8s_manifests(ha):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_pods_spread_over_nodes_and_zones_and_a_drain_takes_one(ha: SynthResult) -> None:
    template = _deployment(ha)["spec"]["template"]
    assert template["metadata"]["labels"] == LABELS
    spread = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"] == {"matchLabels": LABELS}
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
        assert constraint["nodeTaintsPolicy"] == "Honor"
    [budget] = _objects(ha, "PodDisruptionBudget").values()
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": LABELS}}
    assert budget["metadata"]["namespace"] == "t4-spot"


def test_each_pod_names_itself_and_its_cluster_address_from_the_downward_api(
        ha: SynthResult) -> None:
    [container] = _deployment(ha)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["SKYFORM_LB_IDENTITY"]["value"] == "$(POD_NAME)"
    assert env["SKYFORM_LB_ADDRESS"]["value"] == "$(POD_IP):20001"
    # $(VAR) expands only from variables defined before it in the list.
    order = [e["name"] for e in container["env"]]
    assert order.index("POD_NAME") < order.index("SKYFORM_LB_IDENTITY")
    assert order.index("POD_IP") < order.index("SKYFORM_LB_ADDRESS")
    assert {"name": "admin", "containerPort": 20001} in container["ports"]


def test_the_agent_config_names_the_lease(ha: SynthResult) -> None:
    assert _agent_config(ha)["lease"] == {"kind": "kubernetes", "name": "t4-spot-leader",
                                          "namespace": "t4-spot"}


def test_each_pod_keeps_its_own_state_file(ha: SynthResult) -> None:
    """No shared ReadWriteOnce claim (a second pod on another node could not mount it): each
    pod's state lives as long as the pod; a new leader carries on from the stack."""
    pod = _deployment(ha)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert _agent_config(ha)["state_file"].startswith(mounts["state"] + "/")
    assert "PersistentVolumeClaim" not in {o["kind"] for o in k8s_manifests(ha)}


def test_the_role_gains_exactly_the_lease(ha: SynthResult, single: SynthResult) -> None:
    rules = _objects(ha, "Role")["t4-spot-controller"]["rules"]
    group, leases = "coordination.k8s.io", "leases"
    for verb in ("get", "update"):
        assert rbac_allows(rules, verb, group, leases, "t4-spot-leader")
        assert not rbac_allows(rules, verb, group, leases, "another-lease")
    assert rbac_allows(rules, "create", group, leases)  # create has no name to limit
    for verb in ("patch", "delete", "list", "watch", "deletecollection"):
        assert not rbac_allows(rules, verb, group, leases, "t4-spot-leader")
    single_rules = _objects(single, "Role")["t4-spot-controller"]["rules"]
    assert [r for r in rules if group not in r["apiGroups"]] == single_rules


def test_the_admission_policy_pins_the_lease_the_controller_creates(ha: SynthResult) -> None:
    [policy] = _objects(ha, "ValidatingAdmissionPolicy").values()

    def lease(name: str) -> dict[str, Any]:
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "t4-spot"},
                "spec": {"holderIdentity": "t4-spot-controller-abc"}}

    ok, failed = admitted(policy, username=USERNAME, resource="leases",
                          group="coordination.k8s.io", obj=lease("t4-spot-leader"))
    assert ok, failed
    ok, failed = admitted(policy, username=USERNAME, resource="leases",
                          group="coordination.k8s.io", obj=lease("kube-scheduler"))
    assert not ok and failed == ["the controller writes only the Lease t4-spot-leader"]


def test_the_cluster_port_is_open_pod_to_pod_in_the_namespace_never_publicly(
        ha: SynthResult, single: SynthResult) -> None:
    policy = _objects(ha, "NetworkPolicy")["t4-spot-controller"]["spec"]
    assert policy["podSelector"] == {"matchLabels": LABELS}
    [admin_rule] = [r for r in policy["ingress"] if r["ports"][0]["port"] == 20001]
    assert admin_rule["from"] == [
        {"podSelector": {"matchLabels": {"skyform-service": "t4-spot",
                                         "skyform-role": "replica"}}},
        {"podSelector": {"matchLabels": LABELS}},
    ]  # podSelector without namespaceSelector: this namespace only
    services = _objects(ha, "Service")
    public = services["t4-spot-controller"]["spec"]
    assert public["type"] == "LoadBalancer" and public["selector"] == LABELS
    assert [p["port"] for p in public["ports"]] == [30001]
    assert services["t4-spot-controller-admin"]["spec"]["type"] == "ClusterIP"
    single_policy = _objects(single, "NetworkPolicy")["t4-spot-controller"]["spec"]
    [single_admin] = [r for r in single_policy["ingress"] if r["ports"][0]["port"] == 20001]
    assert len(single_admin["from"]) == 1


def test_one_load_balancer_keeps_the_single_controller(single: SynthResult) -> None:
    assert single.outputs["controllerReplicas"] == 1
    spec = _deployment(single)["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert "topologySpreadConstraints" not in spec["template"]["spec"]
    assert "PodDisruptionBudget" not in {o["kind"] for o in k8s_manifests(single)}
    assert "t4-spot-controller-state" in _objects(single, "PersistentVolumeClaim")
    assert "lease" not in _agent_config(single)
    env = {e["name"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert "SKYFORM_LB_IDENTITY" not in env


def test_more_load_balancers_change_only_the_deployments_count(ha: SynthResult) -> None:
    """2 -> 3 is a routine change: the Deployment's replica count, and nothing else (no
    replica StatefulSet, Role, config or pod template moves, so no pod is replaced)."""
    three = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"}, controllerReplicas=3)
    before = {(o["kind"], o["metadata"]["name"]): o for o in k8s_manifests(ha)}
    after = {(o["kind"], o["metadata"]["name"]): o for o in k8s_manifests(three)}
    assert set(before) == set(after)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("Deployment", "t4-spot-controller")}
    key = ("Deployment", "t4-spot-controller")
    assert after[key]["spec"]["replicas"] == 3
    assert {**after[key]["spec"], "replicas": 2} == before[key]["spec"]
    assert three.outputs["controllerReplicas"] == 3


def test_gke_prices_count_every_load_balancer() -> None:
    two = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"}, priceTable="gke")
    three = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"}, priceTable="gke",
                controllerReplicas=3)
    one = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"}, priceTable="gke",
              controllerReplicas=1)
    step = three.outputs["hourlyCost"] - two.outputs["hourlyCost"]
    assert step > 0
    assert two.outputs["hourlyCost"] - one.outputs["hourlyCost"] == pytest.approx(step, abs=2e-4)


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_one_controller_by_default_on_vms(cloud: str) -> None:
    assert run("cpu_http.yaml", cloud).outputs["controllerReplicas"] == 1


@pytest.mark.parametrize("value", [0, 11, -2])
def test_a_bad_count_names_the_key_and_what_is_valid(value: int) -> None:
    with pytest.raises(pulumi.RunError) as raised:
        run("cpu_http.yaml", "kubernetes", controllerReplicas=value)
    cause = raised.value.__cause__
    assert isinstance(cause, StackConfigError)
    assert str(cause) == (
        "skyform:controllerReplicas: must be a whole number from 1 to 10 (the load balancers "
        f"running the agent; -1 for the cloud's default, 2 on kubernetes), got {value}")


def test_synth_shows_the_load_balancers_and_refuses_a_bad_count() -> None:
    result = CliRunner().invoke(synth, [str(FIXTURES / "cpu_http.yaml"), "--cloud",
                                        "kubernetes", "--config", "controllerReplicas=3"])
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.stdout.splitlines() if "controller (load balancers)" in line]
    assert row.split("│")[2].strip() == "3"
    bad = CliRunner().invoke(synth, [str(FIXTURES / "cpu_http.yaml"), "--cloud", "kubernetes",
                                     "--config", "controllerReplicas=two"])
    assert bad.exit_code == 2
    assert "skyform:controllerReplicas: must be a whole number from 1 to 10" in bad.stderr
    assert "got two" in bad.stderr and "Traceback" not in bad.output
