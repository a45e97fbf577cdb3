"""The GCP controller's grants, evaluated, not read: every call of its own targeted
``up``/``refresh`` for this plan is allowed, and the same calls on other compute types
(templates, groups, images, snapshots), another stack's instances, other secrets, other
buckets' objects and other stacks' state are denied.

Each binding of the controller's service account in the synthesized plan is evaluated as IAM
does: the role's permissions (the custom role's list; the predefined roles' documented
permissions below) on the binding's resource and what lies under it, when its condition holds.
The conditions use a small part of CEL (``resource.type``/``resource.name`` with ``==``,
``!=``, ``startsWith``, ``&&``, ``||``, parentheses), evaluated by translation to Python.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

import pytest
from program_support import run

from components.synth import PROJECT_NAME, SynthResult

BACKEND = "gs://state-bucket/team"
#: Predefined roles the controller is bound to (GCP's role reference), and the instance
#: admin role main used to grant project-wide (part of it: enough to show what it let in).
PREDEFINED = {
    "roles/storage.objectViewer": ["storage.objects.get", "storage.objects.list"],
    "roles/storage.objectAdmin": ["storage.objects.*"],
    "roles/secretmanager.secretAccessor": ["secretmanager.versions.access"],
    "roles/iam.serviceAccountUser": ["iam.serviceAccounts.actAs"],
    "roles/compute.instanceAdmin.v1": [
        "compute.instances.*", "compute.disks.*", "compute.instanceTemplates.*",
        "compute.instanceGroupManagers.*", "compute.images.*", "compute.snapshots.*",
        "compute.subnetworks.use", "compute.subnetworks.useExternalIp",
        "compute.zoneOperations.get"],
}
COMPUTE = "compute.googleapis.com/"


@dataclass(frozen=True)
class Call:
    permission: str
    #: Where the binding must be: ``project``, ``bucket:<name>``, ``secret:<id>``, ``sa:<name>``.
    scope: str
    type: str = ""
    name: str = ""


def _cel(expression: str, call: Call) -> bool:
    py = (expression.replace("&&", " and ").replace("||", " or ")
          .replace("resource.name.startsWith(", "name.startswith(")
          .replace("resource.name", "name").replace("resource.type", "type"))
    assert not re.search(r"\b(import|__|lambda)\b", py), py
    return bool(eval(py, {"__builtins__": {}}, {"name": call.name, "type": call.type}))


def _bindings(result: SynthResult) -> list[tuple[list[str], str, str | None]]:
    """(permissions, scope, condition) of every binding of the controller's account."""
    custom = {f"projects/{r.inputs['project']}/roles/{r.inputs['roleId']}": r.inputs[
        "permissions"] for r in result.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")}
    member = result.named("service-controller-token").inputs["member"]
    out: list[tuple[list[str], str, str | None]] = []
    for r in result.resources:
        inputs = r.raw_inputs
        if inputs.get("member") != member:
            continue
        role = inputs["role"]
        perms = custom.get(role) or PREDEFINED[role]
        if r.type == "gcp:projects/iAMMember:IAMMember":
            scope = "project"
        elif r.type == "gcp:storage/bucketIAMMember:BucketIAMMember":
            scope = f"bucket:{inputs['bucket']}"
        elif r.type == "gcp:secretmanager/secretIamMember:SecretIamMember":
            scope = f"secret:{inputs['secretId']}"
        else:
            scope = f"sa:{inputs['serviceAccountId']}"
        out.append((perms, scope, (inputs.get("condition") or {}).get("expression")))
    return out


def allowed(result: SynthResult, call: Call) -> bool:
    return any(
        scope == call.scope and any(fnmatch.fnmatchcase(call.permission, p) for p in perms)
        and (condition is None or _cel(condition, call))
        for perms, scope, condition in _bindings(result))


@pytest.fixture(scope="module")
def plan() -> SynthResult:
    return run("t4_spot.yaml", "gcp", secrets={"HF_TOKEN": "hf-x"}, backendUrl=BACKEND)


def _where(result: SynthResult) -> tuple[str, str, str]:
    vm = result.named("service-controller-vm").inputs
    zone = vm["zone"]
    return "synth-project", zone, zone.rsplit("-", 1)[0]


def _of(result: SynthResult, kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in result.of_type(f"gcp:{kind}") if r.name == name]
    return found.raw_inputs


def _object(bucket: str, name: str) -> str:
    return f"projects/_/buckets/{bucket}/objects/{name}"


def _controller_calls(result: SynthResult) -> list[Call]:
    project, zone, region = _where(result)
    replicas = [r for r in result.of_type("gcp:compute/instance:Instance")
                if r.parent != "service-controller"]
    assert replicas
    calls: list[Call] = []
    for vm in replicas:
        name = vm.inputs["name"]
        instance = f"projects/{project}/zones/{zone}/instances/{name}"
        disk = f"projects/{project}/zones/{zone}/disks/{name}"
        calls += [Call(f"compute.instances.{p}", "project", COMPUTE + "Instance", instance)
                  for p in ("create", "get", "delete", "setLabels", "setMetadata", "setTags",
                            "setServiceAccount", "setScheduling", "setMachineType", "start",
                            "stop", "update")]
        calls += [Call(f"compute.disks.{p}", "project", COMPUTE + "Disk", disk)
                  for p in ("create", "get", "delete", "setLabels")]
    subnet = f"projects/{project}/regions/{region}/subnetworks/default"
    calls += [
        Call("compute.subnetworks.use", "project", COMPUTE + "Subnetwork", subnet),
        Call("compute.subnetworks.useExternalIp", "project", COMPUTE + "Subnetwork", subnet),
        Call("compute.zoneOperations.get", "project", "",
             f"projects/{project}/zones/{zone}/operations/op-1"),
        Call("iam.serviceAccounts.actAs", "sa:projects/synth/serviceAccounts/" + _of(
            result, "serviceaccount/account:Account", "service-access-replica")["accountId"]),
    ]
    secrets = {r.name: r.inputs["secretId"] for r in result.of_type(
        "gcp:secretmanager/secret:Secret")}
    calls += [Call("secretmanager.versions.access", f"secret:{secrets[n]}")
              for n in ("service-access-agent-token", "service-controller-config")]
    bundle_object = _of(result, "storage/bucketObject:BucketObject", "service-access-bundle")
    files, bundle = bundle_object["bucket"], bundle_object["name"]
    calls.append(Call("storage.objects.get", f"bucket:{files}", "", _object(files, bundle)))
    stack = f"team/.pulumi/stacks/{PROJECT_NAME}/synth.json"
    for obj in (stack, stack + ".bak",
                f"team/.pulumi/history/{PROJECT_NAME}/synth/synth-1.history.json",
                f"team/.pulumi/backups/{PROJECT_NAME}/synth/synth.1.json",
                f"team/.pulumi/locks/{PROJECT_NAME}/synth/1.json"):
        calls += [Call(f"storage.objects.{p}", "bucket:state-bucket", "",
                       _object("state-bucket", obj)) for p in ("get", "create", "delete")]
    calls += [
        Call("storage.objects.get", "bucket:state-bucket", "",
             _object("state-bucket", "team/.pulumi/meta.yaml")),
        Call("storage.objects.list", "bucket:state-bucket", "",
             "projects/_/buckets/state-bucket"),
    ]
    return calls


def test_every_call_of_the_controllers_own_up_is_allowed(plan: SynthResult) -> None:
    refused = [c for c in _controller_calls(plan) if not allowed(plan, c)]
    assert refused == []


def test_other_types_stacks_secrets_and_objects_are_denied(plan: SynthResult) -> None:
    project, zone, _ = _where(plan)
    # This stack's names start with <service>-<hash of project, stack, service>; another
    # stack of the same service differs in the hash only.
    ours = str(plan.named("service-controller-vm").inputs["name"]).removesuffix("-controller")
    foreign = f"{ours.rsplit('-', 1)[0]}-000000-spot-0"
    assert foreign != f"{ours}-spot-0"
    zonal = f"projects/{project}/zones/{zone}"
    files = _of(plan, "storage/bucketObject:BucketObject", "service-access-bundle")["bucket"]
    denied = [
        Call("compute.instanceTemplates.create", "project", COMPUTE + "InstanceTemplate",
             f"projects/{project}/global/instanceTemplates/{ours}-spot-t"),
        Call("compute.instanceGroupManagers.update", "project",
             COMPUTE + "InstanceGroupManager", f"{zonal}/instanceGroupManagers/x"),
        Call("compute.images.create", "project", COMPUTE + "Image",
             f"projects/{project}/global/images/x"),
        Call("compute.images.delete", "project", COMPUTE + "Image",
             f"projects/{project}/global/images/x"),
        Call("compute.snapshots.create", "project", COMPUTE + "Snapshot",
             f"projects/{project}/global/snapshots/x"),
        Call("compute.firewalls.update", "project", COMPUTE + "Firewall",
             f"projects/{project}/global/firewalls/x"),
        Call("compute.instances.delete", "project", COMPUTE + "Instance",
             f"{zonal}/instances/{foreign}"),
        Call("compute.instances.delete", "project", COMPUTE + "Instance",
             f"{zonal}/instances/{ours}-controller"),
        Call("compute.instances.setMetadata", "project", COMPUTE + "Instance",
             f"{zonal}/instances/{ours}-controller"),
        Call("compute.disks.delete", "project", COMPUTE + "Disk", f"{zonal}/disks/{foreign}"),
        Call("compute.instances.delete", "project", COMPUTE + "Instance",
             f"{zonal}/instances/{ours}-spotty-0"),
        Call("secretmanager.versions.access", "secret:someone-elses-secret"),
        Call("storage.objects.get", "bucket:other-bucket", "",
             _object("other-bucket", "controller/bundle-x.tgz")),
        Call("storage.objects.get", f"bucket:{files}", "", _object(files, "0-workdir.zip")),
        *[Call(f"storage.objects.{p}", "bucket:state-bucket", "", _object("state-bucket", o))
          for p in ("get", "create", "delete") for o in (
              f"team/.pulumi/stacks/{PROJECT_NAME}/prod.json",
              f"team/.pulumi/stacks/{PROJECT_NAME}/synth-2.json",
              "team/.pulumi/stacks/other-project/synth.json",
              f"team/.pulumi/locks/{PROJECT_NAME}/prod/1.json",
              f"other/.pulumi/stacks/{PROJECT_NAME}/synth.json")],
        Call("storage.objects.create", "bucket:state-bucket", "",
             _object("state-bucket", "team/.pulumi/meta.yaml")),
        Call("storage.objects.get", "bucket:other-state", "",
             _object("other-state", f"team/.pulumi/stacks/{PROJECT_NAME}/synth.json")),
    ]
    let_through = [c for c in denied if allowed(plan, c)]
    assert let_through == []



@pytest.fixture(scope="module")
def several() -> SynthResult:
    return run("t4_spot.yaml", "gcp", secrets={"HF_TOKEN": "hf-x"}, backendUrl=BACKEND,
               controllerReplicas=2)


def _lease(result: SynthResult) -> tuple[str, str]:
    files = _of(result, "storage/bucketObject:BucketObject", "service-access-bundle")["bucket"]
    return files, _object(files, "lease/t4-spot.json")


def test_several_controllers_may_read_create_and_replace_their_lease_only(
        several: SynthResult) -> None:
    """The lease store's calls (lb_agent/control/leases/gcs.py: get, create, and delete,
    which GCS checks to overwrite) on the lease object are allowed, with every call of the
    one-controller grants; the same permissions on any other object, and other permissions
    on the lease, are denied; no controller may touch another controller's VM."""
    files, lease = _lease(several)
    calls = [*_controller_calls(several),
             *[Call(f"storage.objects.{p}", f"bucket:{files}", "", lease)
               for p in ("get", "create", "delete")]]
    assert [c for c in calls if not allowed(several, c)] == []
    project, zone, _ = _where(several)
    ours = str(several.named("service-controller-vm").inputs["name"])
    bundle = _of(several, "storage/bucketObject:BucketObject", "service-access-bundle")["name"]
    denied = [
        Call("storage.objects.create", f"bucket:{files}", "", _object(files, bundle)),
        Call("storage.objects.delete", f"bucket:{files}", "", _object(files, bundle)),
        Call("storage.objects.create", f"bucket:{files}", "",
             _object(files, "lease/other-service.json")),
        Call("storage.objects.get", f"bucket:{files}", "",
             _object(files, "lease/t4-spot.json.bak")),
        Call("storage.objects.list", f"bucket:{files}", "", f"projects/_/buckets/{files}"),
        Call("storage.objects.setIamPolicy", f"bucket:{files}", "", lease),
        Call("storage.objects.create", "bucket:other-files", "",
             _object("other-files", "lease/t4-spot.json")),
        Call("storage.objects.create", f"bucket:{files}", "", _object(files, "0-workdir.zip")),
        *[Call(f"compute.instances.{p}", "project", COMPUTE + "Instance",
               f"projects/{project}/zones/{z}/instances/{ours}-1")
          for p in ("delete", "setMetadata", "stop") for z in (zone, "us-central1-b")],
    ]
    assert [c for c in denied if allowed(several, c)] == []


def test_one_controller_has_no_lease_grant(plan: SynthResult) -> None:
    files, lease = _lease(plan)
    assert not [p for p in ("get", "create", "delete")
                if allowed(plan, Call(f"storage.objects.{p}", f"bucket:{files}", "", lease))]
    assert not plan.of_type("gcp:compute/forwardingRule:ForwardingRule")
