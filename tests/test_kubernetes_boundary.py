"""The Kubernetes controller's boundary, evaluated: its Role (RBAC rules as the API server
matches them) and the ValidatingAdmissionPolicy (its CEL, run by cel-python) as rendered for
a plan. The controller's ServiceAccount can create its replica groups' StatefulSets as the
plan renders them, and cannot create a pod that is privileged, uses the host's namespaces or
a hostPath, or reads a Secret other than the service's own, by any path it has: not a Pod or
a Deployment (RBAC), not a StatefulSet (the admission policy). The namespace enforces the
baseline Pod Security level for every pod, whoever creates it."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest
from program_support import CONFIG_SECRET, FIXTURES

from components.synth import SynthResult, k8s_manifests, stack_config, synthesize

USERNAME = "system:serviceaccount:t4-spot:t4-spot-controller"


@pytest.fixture(scope="module")
def t4() -> SynthResult:
    config, secret_keys = stack_config(FIXTURES / "t4_spot.yaml", "kubernetes",
                                       secrets={"HF_TOKEN": CONFIG_SECRET})
    return synthesize(config, secret_keys)


def _objects(result: SynthResult, kind: str) -> list[dict[str, Any]]:
    return [o for o in k8s_manifests(result) if o["kind"] == kind]


def rbac_allows(rules: list[dict[str, Any]], verb: str, group: str, resource: str,
                name: str | None = None) -> bool:
    """RBAC: any rule whose apiGroups, resources and verbs match (``*`` matches all), and
    whose resourceNames, when set, hold the object's name (a create has no name yet)."""
    for rule in rules:
        if not ({group, "*"} & set(rule.get("apiGroups", []))
                and {resource, "*"} & set(rule.get("resources", []))
                and {verb, "*"} & set(rule.get("verbs", []))):
            continue
        names = rule.get("resourceNames")
        if not names or (name is not None and verb != "create" and name in names):
            return True
    return False


def admitted(policy: dict[str, Any], *, username: str, resource: str, group: str,
             obj: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the ValidatingAdmissionPolicy lets the request through, and the messages of
    the validations that failed (an unmatched request is let through by this policy)."""
    spec = policy["spec"]
    env = celpy.Environment()
    request = {"userInfo": {"username": username},
               "resource": {"group": group, "version": "v1", "resource": resource}}
    activation = {"object": celpy.json_to_cel(obj), "request": celpy.json_to_cel(request)}

    def holds(expression: str) -> bool:
        return bool(env.program(env.compile(expression)).evaluate(activation))

    rules = spec["matchConstraints"]["resourceRules"]
    if not any(group in r["apiGroups"] and resource in r["resources"] for r in rules):
        return True, []
    if not all(holds(c["expression"]) for c in spec.get("matchConditions", [])):
        return True, []
    failed = [v["message"] for v in spec["validations"] if not holds(v["expression"])]
    return not failed, failed


def test_the_namespace_enforces_baseline_pod_security(t4: SynthResult) -> None:
    [namespace] = _objects(t4, "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_the_role_creates_no_pod_by_another_path_and_reads_no_secret(t4: SynthResult) -> None:
    [role] = _objects(t4, "Role")
    rules = role["rules"]
    for group, resource in (("", "pods"), ("apps", "deployments"), ("apps", "daemonsets"),
                            ("apps", "replicasets"), ("batch", "jobs"), ("batch", "cronjobs"),
                            ("", "replicationcontrollers")):
        assert not rbac_allows(rules, "create", group, resource), resource
    for verb in ("get", "list", "watch"):
        assert not rbac_allows(rules, verb, "", "secrets", "t4-spot-secrets")
    assert not rbac_allows(rules, "create", "rbac.authorization.k8s.io", "roles")
    assert not rbac_allows(rules, "patch", "apps", "deployments", "t4-spot-controller")
    assert not rbac_allows(rules, "delete", "apps", "statefulsets", "someone-elses")
    # What its targeted up does: create, patch and delete its replica groups' objects.
    for sts in _objects(t4, "StatefulSet"):
        name = sts["metadata"]["name"]
        assert rbac_allows(rules, "create", "apps", "statefulsets")
        for verb in ("get", "patch", "delete"):
            assert rbac_allows(rules, verb, "apps", "statefulsets", name)


def _foreign(sts: dict[str, Any], change: str) -> dict[str, Any]:
    bad = copy.deepcopy(sts)
    pod = bad["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if change == "privileged":
        container["securityContext"] = {"privileged": True}
    elif change == "privileged init container":
        pod["initContainers"] = [{"name": "x", "image": "busybox",
                                  "securityContext": {"privileged": True}}]
    elif change == "foreign secret volume":
        pod["volumes"] = [*pod.get("volumes", []),
                          {"name": "loot", "secret": {"secretName": "other-app-secrets"}}]
    elif change == "foreign projected secret":
        pod["volumes"] = [*pod.get("volumes", []), {"name": "loot", "projected": {
            "sources": [{"secret": {"name": "cluster-admin-token"}}]}}]
    elif change == "foreign secret env":
        container["env"] = [*container.get("env", []), {"name": "X", "valueFrom": {
            "secretKeyRef": {"name": "other-app-secrets", "key": "password"}}}]
    elif change == "foreign secret envFrom":
        container["envFrom"] = [{"secretRef": {"name": "other-app-secrets"}}]
    elif change == "hostPath":
        pod["volumes"] = [*pod.get("volumes", []),
                          {"name": "root", "hostPath": {"path": "/"}}]
    elif change == "hostNetwork":
        pod["hostNetwork"] = True
    elif change == "another service account":
        pod["serviceAccountName"] = "cluster-admin-sa"
    elif change == "another name":
        bad["metadata"]["name"] = "miner"
    return bad


CHANGES = ["privileged", "privileged init container", "foreign secret volume",
           "foreign projected secret", "foreign secret env", "foreign secret envFrom",
           "hostPath", "hostNetwork", "another service account", "another name"]


def test_the_controller_creates_its_replica_sets_as_rendered(t4: SynthResult) -> None:
    [policy] = _objects(t4, "ValidatingAdmissionPolicy")
    [binding] = _objects(t4, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "t4-spot"}
    sets = _objects(t4, "StatefulSet")
    assert sets
    for sts in sets:
        ok, failed = admitted(policy, username=USERNAME, resource="statefulsets",
                              group="apps", obj=sts)
        assert ok, failed
    for kind, resource in (("Service", "services"), ("ConfigMap", "configmaps")):
        for obj in _objects(t4, kind):
            if obj["metadata"]["name"].startswith(("t4-spot-spot", "t4-spot-ondemand")):
                ok, failed = admitted(policy, username=USERNAME, resource=resource,
                                      group="", obj=obj)
                assert ok, (obj["metadata"]["name"], failed)


@pytest.mark.parametrize("change", CHANGES)
def test_the_controller_cannot_create_a_pod_template_beyond_its_own(
        t4: SynthResult, change: str) -> None:
    [policy] = _objects(t4, "ValidatingAdmissionPolicy")
    sts = _objects(t4, "StatefulSet")[0]
    ok, failed = admitted(policy, username=USERNAME, resource="statefulsets", group="apps",
                          obj=_foreign(sts, change))
    assert not ok and failed
    # The same object from the operator (not the controller) is not this policy's business.
    ok, _ = admitted(policy, username="kubernetes-admin", resource="statefulsets",
                     group="apps", obj=_foreign(sts, change))
    assert ok


def test_the_controller_cannot_name_its_objects_freely(t4: SynthResult) -> None:
    [policy] = _objects(t4, "ValidatingAdmissionPolicy")
    for resource, kind in (("services", "Service"), ("configmaps", "ConfigMap")):
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": "t4-spot-secrets-copy"}}
        ok, _ = admitted(policy, username=USERNAME, resource=resource, group="", obj=obj)
        assert not ok, resource
