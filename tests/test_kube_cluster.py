"""The test control plane itself (tests/kube_cluster.py): what the real-cluster engine tests
rely on holds. The API server authenticates the run's certificates and refuses others, the
scheduler places a GPU pod on a GPU node of the zone it asks for and kwok runs it, a
LoadBalancer Service gets an address, a claim is bound, and a ServiceAccount's token from the
TokenRequest API carries that identity and no more.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest
from kube_cluster import (
    GPU_RESOURCE,
    LB_INGRESS_IP,
    NODES,
    ZONE_LABEL,
    KubeCluster,
    condition,
    pinned_version,
)

pytestmark = [pytest.mark.engine, pytest.mark.kube, pytest.mark.timeout(900)]

NS = "fixture-check"


@pytest.fixture(scope="module")
def namespace(kube_cluster: KubeCluster) -> str:
    kube_cluster.api("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    kube_cluster.wait_for("the namespace's default ServiceAccount", lambda: kube_cluster.request(
        "GET", f"/api/v1/namespaces/{NS}/serviceaccounts/default").status_code == 200)
    return NS


def test_server_reports_the_pinned_version_and_refuses_strangers(kube_cluster: KubeCluster
                                                                   ) -> None:
    # The version stamp the toolchain gives the build (clients such as the Pulumi provider
    # read it; an unstamped build says v0.0.0-master).
    pin = pinned_version("KUBE_VERSION")
    version = kube_cluster.api("GET", "/version")
    assert version["gitVersion"] == f"v{pin}"
    assert (version["major"], version["minor"]) == tuple(pin.split(".")[:2])
    # No client certificate, no token: anonymous is refused everything but health and version.
    context = ssl.create_default_context(cadata=kube_cluster.ca_pem.decode())
    with httpx.Client(base_url=kube_cluster.server, verify=context) as anonymous:
        assert anonymous.get("/api/v1/namespaces").status_code in (401, 403)
    assert kube_cluster.request("GET", "/api/v1/namespaces", token="not-a-token"
                                ).status_code == 401


def test_nodes_have_zones_and_gpus(kube_cluster: KubeCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in kube_cluster.api("GET", "/api/v1/nodes")["items"]}
    assert set(nodes) == {name for name, _, _ in NODES}
    for name, zone, gpus in NODES:
        node = nodes[name]
        assert node["metadata"]["labels"][ZONE_LABEL] == zone
        assert node["status"]["allocatable"].get(GPU_RESOURCE, "0") == str(gpus)
        assert condition(node, "Ready")
    # kwok keeps each node's Lease, as a kubelet does: without it the controller manager
    # marks the nodes NotReady and evicts their pods within a minute.
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    kube_cluster.wait_for("the nodes' leases", lambda: {
        lease["metadata"]["name"] for lease in kube_cluster.api("GET", leases)["items"]
        if lease["spec"].get("renewTime")} == set(nodes))


def test_a_gpu_pod_is_scheduled_in_its_zone_and_runs(kube_cluster: KubeCluster,
                                                     namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu-b"}, "spec": {
        "containers": [{"name": "main", "image": "example.invalid/none:1",
                        "resources": {"limits": {GPU_RESOURCE: "2"}}}],
        "nodeSelector": {ZONE_LABEL: "zone-b"}}}
    kube_cluster.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    path = f"/api/v1/namespaces/{namespace}/pods/gpu-b"
    kube_cluster.wait_for("the GPU pod Ready", lambda: condition(kube_cluster.api("GET", path),
                                                                 "Ready"))
    got = kube_cluster.api("GET", path)
    assert got["status"]["phase"] == "Running"
    assert got["spec"]["nodeName"] == "kwok-b-gpu"
    # More GPUs than any node has: the real scheduler leaves it Pending, Unschedulable.
    pod["metadata"]["name"] = "gpu-too-many"
    pod["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] = "5"
    kube_cluster.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    too_many = f"/api/v1/namespaces/{namespace}/pods/gpu-too-many"

    def unschedulable() -> bool:
        conditions = kube_cluster.api("GET", too_many).get("status", {}).get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                   for c in conditions)

    kube_cluster.wait_for("the scheduler's verdict", unschedulable)
    assert "nodeName" not in kube_cluster.api("GET", too_many)["spec"]
    # What a timed-out wait prints names the stuck pod and why the scheduler left it.
    described = kube_cluster.describe(namespace)
    stuck = [line for line in described.splitlines() if line.startswith("pod gpu-too-many:")]
    assert len(stuck) == 1 and "Pending" in stuck[0] and "Unschedulable" in stuck[0], described
    assert "node kwok-b-gpu: Ready=True" in described


def test_load_balancers_get_an_address_and_claims_are_bound(kube_cluster: KubeCluster,
                                                            namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}"
    kube_cluster.api("POST", f"{base}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "none"},
                 "ports": [{"port": 80}]}})
    kube_cluster.api("POST", f"{base}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})

    def ingress() -> list[Any]:
        got = kube_cluster.api("GET", f"{base}/services/lb")
        found: list[Any] = got.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        return found

    kube_cluster.wait_for("the load balancer's address", lambda: bool(ingress()))
    assert [i["ip"] for i in ingress()] == [LB_INGRESS_IP]
    kube_cluster.wait_for("the claim bound", lambda: kube_cluster.api(
        "GET", f"{base}/persistentvolumeclaims/data")["status"].get("phase") == "Bound")


def test_a_service_account_token_is_that_identity_only(kube_cluster: KubeCluster,
                                                       namespace: str) -> None:
    token = kube_cluster.service_account_token(namespace, "default")
    review = kube_cluster.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                  {"apiVersion": "authentication.k8s.io/v1",
                                   "kind": "SelfSubjectReview"}, token=token)
    assert review.status_code == 201, review.text
    assert review.json()["status"]["userInfo"]["username"] == \
        f"system:serviceaccount:{namespace}:default"
    # The default ServiceAccount has no role: RBAC refuses it the namespace's own objects.
    refused = kube_cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods", token=token)
    assert refused.status_code == 403
    assert refused.json()["reason"] == "Forbidden"
