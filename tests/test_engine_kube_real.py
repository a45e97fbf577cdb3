"""The Kubernetes example deployed for real: the Pulumi engine and the Kubernetes provider
(not in render mode) against the test control plane (tests/kube_cluster.py), every object
created, updated and deleted by a real API server, and the controller's least privilege
proven by that server.

The user's side runs with the admin's kubeconfig (``KUBECONFIG``, as a user's machine does);
the agent's targeted ``up`` runs with a kubeconfig holding a token the TokenRequest API issued
for the controller's ServiceAccount, which is how the controller pod reaches the API server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from engine_support import AGENT_TOKEN, EngineProject
from kube_cluster import KubeCluster

from lb_agent.control.deployers.workspace import open_stack

pytestmark = [pytest.mark.engine, pytest.mark.kube, pytest.mark.timeout(1800)]

K8S_STACK = "kubernetes-example"
SERVICE = "hello"


def _project(tmp_path: Path, cluster: KubeCluster, namespace: str) -> EngineProject:
    """The example stack as the README sets it up, pointed at the test cluster by the
    environment's KUBECONFIG (nothing about the cluster in the stack file)."""
    project = EngineProject.create(tmp_path)
    project.env["KUBECONFIG"] = str(cluster.admin_kubeconfig)
    project.cli("stack", "init", K8S_STACK)
    project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
    project.cli("config", "set", "skyform:namespace", namespace)
    return project


def _changes(result: Any) -> dict[str, int]:
    """The steps of an update that touch resources (see test_engine_kubernetes)."""
    return {k: v for k, v in (result.summary.resource_changes or {}).items()
            if v and k not in ("read", "discard")}


def _set_fleet(project: EngineProject, digest: str, ondemand: int) -> None:
    """What the agent writes into its stack file before its targeted up."""
    project.cli("config", "set", "skyform:fleet", json.dumps({"version": 1, "generations": [
        {"generation": 1, "digest": digest, "spot": 0, "ondemand": ondemand}]}))


def _statefulset(cluster: KubeCluster, namespace: str) -> dict[str, Any]:
    got: dict[str, Any] = cluster.api(
        "GET", f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{SERVICE}-ondemand")
    return got


def _ready_replicas(cluster: KubeCluster, namespace: str, count: int) -> None:
    """Wait until the replica StatefulSet has ``count`` Ready pods (it carries
    ``pulumi.com/skipAwait``: the provider does not wait for them, the agent probes)."""
    def ready() -> bool:
        sts = _statefulset(cluster, namespace)
        status = sts.get("status", {})
        return bool(sts["spec"]["replicas"] == count == status.get("readyReplicas", 0)
                    == status.get("currentReplicas", 0))

    cluster.wait_for(f"{count} ready replicas", ready, namespace=namespace)


def _uids(cluster: KubeCluster, namespace: str) -> dict[str, str]:
    """Every object skyform made in the namespace by kind/name, with its UID: a replaced
    object comes back with a new one."""
    out: dict[str, str] = {}
    for kind, path in (("StatefulSet", "/apis/apps/v1/namespaces/{ns}/statefulsets"),
                       ("Deployment", "/apis/apps/v1/namespaces/{ns}/deployments"),
                       ("Service", "/api/v1/namespaces/{ns}/services"),
                       ("ConfigMap", "/api/v1/namespaces/{ns}/configmaps"),
                       ("Secret", "/api/v1/namespaces/{ns}/secrets"),
                       ("Role", "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles")):
        for obj in cluster.api("GET", path.format(ns=namespace))["items"]:
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "skyform":
                out[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["uid"]
    return out


def test_the_example_deploys_is_stable_scales_in_place_and_destroys(
    tmp_path: Path, kube_cluster: KubeCluster,
) -> None:
    ns = "hello-real"
    project = _project(tmp_path, kube_cluster, ns)
    stack = project.stack(K8S_STACK)

    first = stack.up()
    assert first.summary.result == "succeeded"
    # The objects exist server-side, as the API server defaulted and admitted them.
    namespace = kube_cluster.api("GET", f"/api/v1/namespaces/{ns}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    _ready_replicas(kube_cluster, ns, 1)
    deployment = kube_cluster.api(
        "GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{SERVICE}-controller")
    # Two load balancers by default on Kubernetes (skyform:controllerReplicas), both up.
    assert deployment["status"].get("availableReplicas") == 2
    for name in (f"{SERVICE}-secrets", f"{SERVICE}-controller-project"):
        assert kube_cluster.api("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")["type"] == \
            "Opaque"
    policy = f"skyform-{ns}-controller"
    kube_cluster.api("GET", "/apis/admissionregistration.k8s.io/v1/"
                     f"validatingadmissionpolicies/{policy}")
    kube_cluster.api("GET", "/apis/admissionregistration.k8s.io/v1/"
                     f"validatingadmissionpolicybindings/{policy}")
    outputs = stack.outputs()
    assert outputs["replicaCount"].value == 1
    assert outputs["controllerAddress"].value  # the load balancer's address, from its status
    uids = _uids(kube_cluster, ns)
    assert {f"StatefulSet/{SERVICE}-ondemand", f"Deployment/{SERVICE}-controller",
            f"Role/{SERVICE}-controller"} <= set(uids)

    # A second up against the live objects: nothing to change.
    again = stack.up()
    assert set(_changes(again)) == {"same"}, _changes(again)

    digest = outputs["fleet"].value["generations"][0]["digest"]
    for count in (2, 3, 2):
        _set_fleet(project, digest, count)
        step = stack.up()
        changes = _changes(step)
        assert changes.get("update") == 1 and set(changes) == {"same", "update"}, changes
        # The scheduler placed and kwok ran that many pods, and no more.
        _ready_replicas(kube_cluster, ns, count)
        pods = kube_cluster.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector="
                                f"skyform-role%3Dreplica")["items"]
        assert sorted(p["metadata"]["name"] for p in pods
                      if not p["metadata"].get("deletionTimestamp")) == \
            [f"{SERVICE}-ondemand-{i}" for i in range(count)]
    # Nothing was replaced: every object kept its UID.
    assert _uids(kube_cluster, ns) == uids

    project.cli("destroy", "--yes", "--skip-preview")
    gone = kube_cluster.request("GET", f"/api/v1/namespaces/{ns}")
    assert gone.status_code == 404, gone.text
    assert kube_cluster.namespaced_objects(ns) == {}
    assert kube_cluster.request("GET", "/apis/admissionregistration.k8s.io/v1/"
                                f"validatingadmissionpolicies/{policy}").status_code == 404


async def test_the_controllers_identity_runs_its_up_and_nothing_more(
    tmp_path: Path, kube_cluster: KubeCluster,
) -> None:
    """The agent's targeted up as the controller's ServiceAccount succeeds; the API server
    refuses that identity a privileged pod, another namespace's objects and the Secrets it
    was not given; Pod Security admission refuses a privileged pod in the namespace even to
    the cluster's admin."""
    from lb_agent.control.deployers.pulumi import PulumiDeployer
    from lb_agent.control.registry import Registry
    from lb_agent.control.store import StateStore

    ns = "hello-sa"
    project = _project(tmp_path, kube_cluster, ns)
    project.cli("config", "set", "skyform:backendUrl", project.env["PULUMI_BACKEND_URL"])
    stack = project.stack(K8S_STACK)
    assert stack.up().summary.result == "succeeded"
    fleet = stack.outputs()["fleet"].value["generations"][0]
    # The agent's stack file carries the fleet (as the controller's copy does).
    _set_fleet(project, fleet["digest"], fleet["ondemand"])

    account = f"{SERVICE}-controller"
    sa_config = kube_cluster.service_account_kubeconfig(ns, account, tmp_path / "sa.kubeconfig")
    agent_env = {**project.env, "KUBECONFIG": str(sa_config)}
    registry = Registry(StateStore(":memory:"))
    deployer = PulumiDeployer(
        registry, stack_factory=lambda: open_stack(project.dir, K8S_STACK, env=agent_env),
        stack_name=K8S_STACK, generation=1, digest=fleet["digest"], retry_initial_seconds=0.1)
    await deployer.start()
    try:
        done = deployer.updates_ok + 1
        assert await deployer.scale_up(False) == "ondemand-1"
        while deployer.updates_ok < done:
            assert deployer.failures == 0, deployer.last_error
            await asyncio.sleep(0.1)
    finally:
        await deployer.close()
    _ready_replicas(kube_cluster, ns, 2)
    sts = _statefulset(kube_cluster, ns)
    # The API server's audit log: the change was the ServiceAccount's, and it wrote nothing
    # but its replica groups' objects.
    user = f"system:serviceaccount:{ns}:{account}"
    writes = kube_cluster.audit_events(user=user)
    assert [e for e in writes if e["objectRef"].get("resource") == "statefulsets"
            and e["objectRef"].get("name") == f"{SERVICE}-ondemand"
            and e["verb"] in ("patch", "update") and e["responseStatus"]["code"] == 200], writes
    assert {(e["objectRef"].get("resource"), e["objectRef"].get("name")) for e in writes
            if e["responseStatus"]["code"] < 300} <= {
        ("statefulsets", f"{SERVICE}-ondemand"), ("services", f"{SERVICE}-ondemand"),
        ("configmaps", f"{SERVICE}-ondemand-files")}, writes

    token = kube_cluster.service_account_token(ns, account)

    def as_controller(method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> Any:
        return kube_cluster.request(method, path, body, token=token, content_type=content_type)

    # Its own objects: yes.
    own = as_controller("GET", f"/apis/apps/v1/namespaces/{ns}/statefulsets/{SERVICE}-ondemand")
    assert own.status_code == 200, own.text
    # Secrets it was not given: no (not even the service's, which its pods only mount).
    for name in (f"{SERVICE}-secrets", f"{SERVICE}-controller-project"):
        refused = as_controller("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
        assert refused.status_code == 403, refused.text
    assert as_controller("GET", f"/api/v1/namespaces/{ns}/secrets").status_code == 403
    # Another namespace's objects: no.
    kube_cluster.api("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "neighbour"}})
    kube_cluster.api("POST", "/api/v1/namespaces/neighbour/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{SERVICE}-ondemand"}})
    for path in ("/api/v1/namespaces/neighbour/configmaps",
                 f"/api/v1/namespaces/neighbour/configmaps/{SERVICE}-ondemand",
                 "/apis/apps/v1/namespaces/neighbour/statefulsets"):
        refused = as_controller("GET", path)
        assert refused.status_code == 403, (path, refused.text)
    # A privileged pod: no, by every way in. Directly (RBAC: no pods at all) ...
    privileged = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
                  "spec": {"containers": [{"name": "main", "image": "example.invalid/x:1",
                                           "securityContext": {"privileged": True}}]}}
    refused = as_controller("POST", f"/api/v1/namespaces/{ns}/pods", privileged)
    assert refused.status_code == 403, refused.text
    # ... through its own StatefulSet (the admission policy on what it writes) ...
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": sts["spec"]["template"]["spec"]["containers"][0]["name"],
         "securityContext": {"privileged": True}}]}}}}
    refused = as_controller("PATCH", f"/apis/apps/v1/namespaces/{ns}/statefulsets/"
                            f"{SERVICE}-ondemand", patch,
                            content_type="application/strategic-merge-patch+json")
    assert refused.status_code in (403, 422), refused.text
    assert "privileged" in refused.text, refused.text
    # ... and Pod Security admission on the namespace refuses it to anyone, the admin too.
    refused = kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", privileged)
    assert refused.status_code == 403, refused.text
    assert "violates PodSecurity" in refused.text and "privileged" in refused.text

    project.cli("destroy", "--yes", "--skip-preview")
    assert kube_cluster.request("GET", f"/api/v1/namespaces/{ns}").status_code == 404
