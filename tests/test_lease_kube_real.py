"""The Kubernetes lease store against the real API server (tests/kube_cluster.py), as the
controller's ServiceAccount with exactly the Role and admission policy the program renders:
the first load balancer creates the Lease and leads; when it is lost the other takes the
Lease once it expires, within its duration; two taking it at once leave one leader (the
server's resourceVersion conflict); a clean release hands over at once; and the identity can
touch no other Lease and do nothing else to its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kube_cluster import KubeCluster
from program_support import run

from components.synth import k8s_manifests
from lb_agent.control.leadership import LeaseUnavailable
from lb_agent.control.leases.kubernetes import ADDRESS_ANNOTATION, KubeLeaseStore

pytestmark = [pytest.mark.engine, pytest.mark.kube, pytest.mark.timeout(900)]

NS = "lease-real"
DURATION = 15.0
RENEW = 5.0
LEASES = "/apis/coordination.k8s.io/v1/namespaces/" + NS + "/leases"
#: Where the program's objects of each kind are created.
COLLECTIONS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": f"/api/v1/namespaces/{NS}/serviceaccounts",
    "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles",
    "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings",
    "ValidatingAdmissionPolicy":
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding":
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
}


class Clock:
    """Wall-clock time moved forward by the test (the API server keeps no lease clock of its
    own: expiry is the readers' judgement), so no test waits out a lease. Whole seconds, so
    the test's sums land exactly on the expiry."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@dataclass
class Controller:
    cluster: KubeCluster
    lease: str
    token: str
    token_file: Path
    ca_file: Path

    def store(self, clock: Clock, name: str | None = None) -> KubeLeaseStore:
        return KubeLeaseStore(name or self.lease, NS, self.cluster.server,
                              token_file=str(self.token_file), ca_file=str(self.ca_file),
                              duration_seconds=DURATION, clock=clock)

    def read(self) -> dict[str, Any]:
        lease: dict[str, Any] = self.cluster.api("GET", f"{LEASES}/{self.lease}")
        return lease

    def reset(self) -> None:
        self.cluster.request("DELETE", f"{LEASES}/{self.lease}")


@pytest.fixture(scope="module")
def controller(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Controller]:
    """The program's namespace, controller ServiceAccount, Role, RoleBinding and admission
    policy for a service in NS, applied as rendered; the ServiceAccount's token and the
    cluster CA as a pod has them mounted."""
    objects = [o for o in k8s_manifests(run("cpu_http.yaml", "kubernetes", namespace=NS))
               if o["kind"] in COLLECTIONS]
    for kind, path in COLLECTIONS.items():
        for obj in (o for o in objects if o["kind"] == kind):
            kube_cluster.api("POST", path, obj)
    [role] = [o for o in objects if o["kind"] == "Role"]
    [lease] = [name for rule in role["rules"] if "coordination.k8s.io" in rule["apiGroups"]
               for name in rule.get("resourceNames", [])]
    [account] = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"]
    token = kube_cluster.service_account_token(NS, account)
    directory = tmp_path_factory.mktemp("serviceaccount")
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(kube_cluster.ca_pem)
    try:
        yield Controller(kube_cluster, lease, token, directory / "token", directory / "ca.crt")
    finally:
        for obj in objects:
            if obj["kind"].startswith("ValidatingAdmissionPolicy"):
                kube_cluster.request("DELETE", f"{COLLECTIONS[obj['kind']]}/"
                                               f"{obj['metadata']['name']}")
        kube_cluster.request("DELETE", f"/api/v1/namespaces/{NS}")


async def test_leader_lost_the_other_leads_within_the_duration(controller: Controller) -> None:
    controller.reset()
    clock = Clock()
    a, b = controller.store(clock), controller.store(clock)
    first = await a.acquire_or_renew("lb-a", "10.1.0.1:20001")
    assert (first.holder, first.term) == ("lb-a", 1)
    lease = controller.read()  # as the API server stored it
    assert lease["spec"]["holderIdentity"] == "lb-a"
    assert lease["spec"]["leaseDurationSeconds"] == int(DURATION)
    assert lease["metadata"]["annotations"][ADDRESS_ANNOTATION] == "10.1.0.1:20001"
    seen = await b.acquire_or_renew("lb-b", "10.1.0.2:20001")
    assert (seen.holder, seen.address) == ("lb-a", "10.1.0.1:20001")

    # lb-a renews once more, then is lost (killed: no release). lb-b keeps trying every
    # renew interval, as its election loop does.
    await a.acquire_or_renew("lb-a", "10.1.0.1:20001")
    lost_at = clock.now
    while True:
        clock.now += RENEW
        state = await b.acquire_or_renew("lb-b", "10.1.0.2:20001")
        if state.held_by("lb-b"):
            break
        assert state.holder == "lb-a" and clock.now - lost_at < DURATION
    assert clock.now - lost_at <= DURATION  # within the lease's duration
    assert state.term == 2
    spec = controller.read()["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("lb-b", 2)
    # lb-a comes back and follows; it does not take the Lease back.
    back = await a.acquire_or_renew("lb-a", "10.1.0.1:20001")
    assert (back.holder, back.address, back.term) == ("lb-b", "10.1.0.2:20001", 2)

    # A clean shutdown hands over at once.
    await b.release("lb-b")
    assert "holderIdentity" not in controller.read()["spec"]
    handed = await a.acquire_or_renew("lb-a", "10.1.0.1:20001")
    assert (handed.holder, handed.term) == ("lb-a", 3)


async def test_two_taking_an_expired_lease_at_once_leave_one_leader(
        controller: Controller) -> None:
    controller.reset()
    clock = Clock()
    await controller.store(clock).acquire_or_renew("lb-old", "10.1.0.9:20001")
    clock.now += DURATION + 1
    for round_ in range(5):  # each round a fresh race of new pods on an expired Lease
        before = controller.read()["spec"]["leaseTransitions"]
        stores = [controller.store(clock) for _ in range(3)]
        states = await asyncio.gather(*(
            s.acquire_or_renew(f"lb-{round_}-{i}", f"10.1.{round_}.{i}:20001")
            for i, s in enumerate(stores)))
        spec = controller.read()["spec"]
        assert {s.holder for s in states} == {spec["holderIdentity"]}
        assert spec["leaseTransitions"] == before + 1
        clock.now += DURATION + 1


async def test_the_identity_reaches_its_own_lease_only(controller: Controller) -> None:
    cluster, token = controller.cluster, controller.token
    clock = Clock()
    await controller.store(clock).acquire_or_renew("lb-a", "10.1.0.1:20001")
    # Another Lease by name: RBAC refuses.
    with pytest.raises(LeaseUnavailable, match=r"GET answered 403"):
        await controller.store(clock, "kube-scheduler").acquire_or_renew("lb-a", "x:1")
    # Its own Lease: no patch, delete, list or watch.
    own = f"{LEASES}/{controller.lease}"
    assert cluster.request("PATCH", own, {"metadata": {"labels": {"x": "y"}}},
                           content_type="application/merge-patch+json",
                           token=token).status_code == 403
    assert cluster.request("DELETE", own, token=token).status_code == 403
    assert cluster.request("GET", LEASES, token=token).status_code == 403
    # Create is allowed by kind (RBAC cannot name it); the admission policy refuses any
    # other name once the API server has loaded it.
    other = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "not-the-leader", "namespace": NS}}

    def refused() -> bool:
        made = cluster.request("POST", LEASES, other, token=token)
        if made.status_code == 201:
            cluster.api("DELETE", f"{LEASES}/not-the-leader")
            return False
        assert made.status_code in (403, 422), made.text
        assert "the controller writes only the Lease" in made.text
        return True

    cluster.wait_for("the admission policy to refuse another Lease", refused)
