"""GCP: a SkyServe service as Compute Engine replica groups, firewall rules and a controller.

Components (children of ``skyform:index:SkyService``):

- ``skyform:gcp:Access``: Secret Manager secrets (agent token, service secrets), the
  stack's GCS files bucket (the controller's project bundle under ``controller/``, the
  workdir/file mounts), and the replicas' service account (those secrets and exactly the
  upload objects, by an IAM condition; never the bundle).
- ``skyform:gcp:Firewall``: rules on the ``default`` network by network tag. The network
  is global with a subnet in every region (auto mode), so a replica in any region of the
  menu gets its region's subnet and reaches the controller at its internal address, and
  rules by tag hold in every region. The network's own permissive rules (the
  ``default-allow-*`` rules at priority 65534) are overridden for replicas by a deny
  (``REPLICA_DENY_PRIORITY``): only the controller (and a replica's own nodes) get in.
- ``skyform:gcp:Controller``: an on-demand Ubuntu VM (cloud-init) running ``skyform agent``,
  with a service account allowed to manage this service's instances only.
- ``skyform:gcp:ReplicaGroup``: one instance per index (``<name>-<group>-<i>``), SPOT
  provisioning model for spot groups, GPUs via ``guest_accelerators`` (N1) or the
  accelerator-optimised machine type (A2/A3/G2), host maintenance TERMINATE with GPUs.
- ``skyform:gcp:NetworkLoadBalancer`` (gcp_lb.py): only with ``skyform:controllerReplicas``
  >= 2, the endpoint of that many controllers (components/clouds/controllers.py).

Disk tiers (``disk_tier`` -> boot disk type; unset means ``medium``, as in SkyPilot):
``low`` pd-standard, ``medium`` pd-balanced, ``high`` pd-ssd, ``ultra`` pd-extreme with
20000 provisioned IOPS, ``best`` pd-ssd (the best type every PD machine type supports).
Machine series that take only Hyperdisk (A3 Ultra, A4, C4, N4, ...) boot from
hyperdisk-balanced at every tier (``ultra`` with provisioned IOPS). A tier a machine series
cannot take is refused with a ``PlacementError``: pd-extreme only on N2 with 64+ vCPUs and
M1/M2/M3 (so never on a GPU machine), pd-standard not on G2, A3, C3, C3D, H3.

Names: every global name (instances, service accounts, secrets, network tags, the IAM
condition's name prefixes) carries a short hash of (Pulumi project, stack, service), so two
stacks of one service, or two services whose names share a prefix, never collide or match
each other's firewall tags and IAM conditions.

Stability: replicas and the controller ignore later changes of their boot image, so a new
image in a family never replaces a VM; the controller has a reserved internal address (the
replicas' user data) and a reserved external one (the endpoint), and takes the per-commit
agent config and project bundle (URL, sha256) from Secret Manager instead of its user data.
Its service account reads the bundle prefix only (objectViewer with an IAM condition).

Replica images: GCP's deep-learning images have no cloud-init, so replicas boot from a
``startup-script`` (templates/replica-bootstrap.sh.j2); the controller image (Ubuntu) uses
cloud-init user data.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from components.bundle import Bundle
from components.clouds import controllers, gcp_lb
from components.clouds.common import (
    BUNDLE_PREFIX,
    PULUMI_CLI_VERSION,
    CloudDeployment,
    DeploymentPlan,
    DeploymentSecrets,
    GroupPlan,
    StateObjects,
    agent_config,
    bundle_asset,
    bundle_key,
    controller_config_secret,
    downloads_for,
    gcp_labels,
    plan_bundle,
    replica_credentials,
    replica_entry,
    sdk_args,
    state_objects,
    upload_source,
)
from components.errors import PlacementError
from components.startup import (
    ControllerBoot,
    ReplicaBoot,
    render_controller_cloud_init,
    render_replica_bootstrap,
)
from lb_agent.contract import LeaseConfig, group_name, parse_group_key

#: GPU-ready default image family (CUDA 12.4, NVIDIA driver installed on first boot).
DL_IMAGE = (
    "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310"
)
#: Ubuntu 24.04: its python3 (3.12) meets skyform's requires-python (>= 3.11); 22.04's 3.10
#: would refuse to install the controller's bundle.
CONTROLLER_IMAGE = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
NETWORK = "default"
#: Between skyform's allow rules (the default priority, 1000) and the default network's own
#: rules (65534, which admit every VM of the network and SSH/RDP/ICMP from anywhere): a
#: lower number wins, so replicas take ingress from skyform's rules only.
REPLICA_DENY_PRIORITY = 65000


#: Machine series that boot only from Hyperdisk (GCP "Machine series comparison", disk types).
HYPERDISK_ONLY_PREFIXES = ("a3-ultragpu-", "a4-", "a4x-", "c4-", "c4a-", "c4d-", "n4-", "x4-")
#: Series without pd-standard (G2, A3, C3, C3D, H3 support pd-balanced/pd-ssd/Hyperdisk).
NO_PD_STANDARD_PREFIXES = ("g2-", "a3-", "c3-", "c3d-", "h3-")
#: pd-extreme is offered on N2 with 64 or more vCPUs and on M1, M2, M3 only (GCP "Extreme
#: Persistent Disk", machine type support): never on a GPU machine.
PD_EXTREME_PREFIXES = ("m1-", "m2-", "m3-")
PD_EXTREME_IOPS = 20000


def boot_disk_type(tier: str) -> str:
    """The Persistent Disk type of a SkyPilot disk tier (see the module docstring)."""
    return {"low": "pd-standard", "medium": "pd-balanced", "high": "pd-ssd",
            "ultra": "pd-extreme"}.get(tier, "pd-ssd")


def _pd_extreme_ok(machine_type: str) -> bool:
    if machine_type.startswith(PD_EXTREME_PREFIXES):
        return True
    parts = machine_type.split("-")
    return parts[0] == "n2" and parts[-1].isdigit() and int(parts[-1]) >= 64


def boot_disk(tier: str, machine_type: str, size_gb: int) -> dict[str, Any]:
    """Boot disk ``initialize_params`` (without the image) for a tier on a machine type, or a
    ``PlacementError`` naming the pair and what is valid (module docstring, GCP's rules)."""
    if machine_type.startswith(HYPERDISK_ONLY_PREFIXES):
        disk: dict[str, Any] = {"size": size_gb, "type": "hyperdisk-balanced"}
        if tier == "ultra":
            disk["provisioned_iops"] = max(3000, min(PD_EXTREME_IOPS, 500 * size_gb))
        return disk
    kind = boot_disk_type(tier)
    if kind == "pd-extreme" and not _pd_extreme_ok(machine_type):
        raise PlacementError(
            f"disk_tier: ultra (pd-extreme) is not supported on GCP machine type "
            f"{machine_type}: pd-extreme needs N2 with 64+ vCPUs or M1/M2/M3 (never a GPU "
            "machine); use disk_tier: high or best (pd-ssd)"
        )
    if kind == "pd-standard" and machine_type.startswith(NO_PD_STANDARD_PREFIXES):
        raise PlacementError(
            f"disk_tier: low (pd-standard) is not supported on GCP machine type "
            f"{machine_type} (G2, A3, C3, C3D and H3 take no pd-standard); use disk_tier: "
            "medium (pd-balanced)"
        )
    disk = {"size": size_gb, "type": kind}
    if kind == "pd-extreme":
        disk["provisioned_iops"] = PD_EXTREME_IOPS
    return disk


def _labels(plan: DeploymentPlan, **extra: str) -> dict[str, str]:
    return gcp_labels({**plan.labels, "skyform-service": plan.name,
                       "skyform-stack": plan.stack, **extra})


def stack_hash(plan: DeploymentPlan) -> str:
    """6 hex digits of (Pulumi project, stack, service): what makes a global name unique."""
    key = f"{pulumi.get_project()}/{plan.stack}/{plan.name}"
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def base_name(plan: DeploymentPlan) -> str:
    """``<service>-<hash>``: the prefix of every global name of this stack (at most 37
    characters, so ``<base>-ondemand-<index>`` fits GCP's 63)."""
    return f"{plan.name[:30].rstrip('-')}-{stack_hash(plan)}"


def instance_name(plan: DeploymentPlan, group: str, index: int) -> str:
    """``<base>-<group>-<index>``; a placed group's site key is cut to its hash
    (``<base>-spot-g2-3f2a-7``) so the name fits GCP's 63 characters."""
    parsed = parse_group_key(group)
    if parsed is not None and parsed[2] is not None:
        group = group_name(parsed[0], parsed[1], parsed[2].rsplit("-", 1)[1])
    return f"{base_name(plan)}-{group}-{index}"


def _tag(plan: DeploymentPlan, role: str) -> str:
    return f"{base_name(plan)}-{role}"


def _account_id(plan: DeploymentPlan, role: str) -> str:
    """A service account id (6-30 characters): ``<service[:16]>-<hash>-<role[:4]>``."""
    return f"{plan.name[:16].rstrip('-')}-{stack_hash(plan)}-{role[:4]}"


#: Replica groups; the controller's IAM condition names their instance prefixes (never the
#: controller's own instance).
REPLICA_GROUPS = ("spot", "ondemand")


#: Exactly what the agent's targeted ``up``/``refresh`` of the replica groups calls (the
#: controller's custom role, ``controller_permissions``): create, read, update in place and
#: delete replica instances and their boot disks, and what an insert uses (the subnetwork
#: with an external address, an image of the project, the zone operation it polls).
CONTROLLER_PERMISSIONS = (
    "compute.instances.create", "compute.instances.delete", "compute.instances.get",
    "compute.instances.setLabels", "compute.instances.setMetadata",
    "compute.instances.setTags", "compute.instances.setServiceAccount",
    "compute.instances.setScheduling", "compute.instances.setMachineType",
    "compute.instances.setMachineResources", "compute.instances.start",
    "compute.instances.stop", "compute.instances.update",
    "compute.disks.create", "compute.disks.delete", "compute.disks.get",
    "compute.disks.setLabels",
    "compute.subnetworks.use", "compute.subnetworks.useExternalIp",
    "compute.images.useReadOnly", "compute.zoneOperations.get",
)
#: Multi-node groups: the compact placement policy each replica's nodes share.
PLACEMENT_PERMISSIONS = (
    "compute.resourcePolicies.create", "compute.resourcePolicies.delete",
    "compute.resourcePolicies.get", "compute.resourcePolicies.use",
    "compute.regionOperations.get",
)


def controller_permissions(plan: DeploymentPlan) -> list[str]:
    """The controller's custom role: ``CONTROLLER_PERMISSIONS`` (and placement policies for
    multi-node replicas), nothing else of Compute Engine."""
    extra = PLACEMENT_PERMISSIONS if plan.task.num_nodes > 1 else ()
    return sorted({*CONTROLLER_PERMISSIONS, *extra})


def placement_zones(plan: DeploymentPlan) -> list[str]:
    """Every zone a replica may run in: the home zone, the groups' and every candidate
    location's (the agent's targeted ``up`` may create an instance in any of them)."""
    zones = [_zone(plan), *(g.site.zone for g in plan.groups if g.placed and g.site),
             *(loc.site.zone for loc in plan.locations)]
    return list(dict.fromkeys(z for z in zones if z))


def instance_condition(project: str, zone: str | list[str], plan: DeploymentPlan) -> str:
    """CEL for the controller's custom-role grant: instances and disks of this stack's
    replica groups in every zone they may run in (name prefix ``<base>-<group>-``, ending in
    the delimiter, so no other stack or service matches), and resources of other types, for
    the few permissions of the role that name them (subnetwork use, image use, operations;
    ``controller_permissions``): the role itself holds no permission on templates, groups,
    snapshots or any other type."""
    zones = [zone] if isinstance(zone, str) else zone
    names = " || ".join(
        f"resource.name.startsWith('projects/{project}/zones/{z}/{kind}/"
        f"{base_name(plan)}-{group}-')"
        for z in zones for kind in ("instances", "disks") for group in REPLICA_GROUPS
    )
    return ("(resource.type != 'compute.googleapis.com/Instance' && "
            "resource.type != 'compute.googleapis.com/Disk') || " + names)


def object_condition(bucket: str, *, keys: list[str] | None = None, prefix: str | None = None
                     ) -> str:
    """CEL for a bucket-level ``roles/storage.objectViewer`` binding that reads only some
    objects: exactly ``keys``, or every name under ``prefix`` (GCS IAM conditions name an
    object ``projects/_/buckets/<bucket>/objects/<name>``; they need uniform bucket-level
    access, which the files bucket has)."""
    base = f"projects/_/buckets/{bucket}/objects/"
    if prefix is not None:
        return f"resource.name.startsWith('{base}{prefix}')"
    return " || ".join(f"resource.name == '{base}{key}'" for key in keys or [])


def state_condition(state: StateObjects) -> str:
    """CEL naming this stack's objects of a ``gs://`` state backend (``state_objects``)."""
    base = f"projects/_/buckets/{state.bucket}/objects/"
    return " || ".join(f"resource.name.startsWith('{base}{p}')" for p in state.prefixes)


def state_list_condition(state: StateObjects) -> str:
    """CEL for the backend's list (checked against the bucket) and its layout marker."""
    base = f"projects/_/buckets/{state.bucket}"
    return " || ".join([f"resource.name == '{base}'",
                        *(f"resource.name == '{base}/objects/{n}'" for n in state.read_only)])


def _zone(plan: DeploymentPlan) -> str:
    return plan.zone or f"{plan.region}-a"


@dataclass
class AccessArgs:
    plan: DeploymentPlan
    secrets: DeploymentSecrets
    #: The project bundle the controller runs its own ``up`` from (components/bundle.py).
    bundle: Bundle


class Access(pulumi.ComponentResource):
    """Secrets, the files bucket (project bundle, uploads) and the replica service account."""

    token_secret_id: pulumi.Output[str]
    service_secret_id: pulumi.Output[str] | None
    bucket_url: pulumi.Output[str]
    bucket_name: pulumi.Output[str]
    #: ``gs://<bucket>/controller/bundle-<sha256>.tgz``.
    bundle_url: pulumi.Output[str]
    replica_email: pulumi.Output[str]
    replica_account_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:gcp:Access", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        account = gcp.serviceaccount.Account(
            f"{name}-replica", account_id=_account_id(plan, "replica"),
            display_name=f"skyform replicas of {plan.name}", opts=child,
        )
        member = account.email.apply(lambda e: f"serviceAccount:{e}")
        self.replica_email = account.email
        self.replica_account_name = account.name
        #: The replicas' IAM grants: replicas depend on them (no boot before the grant).
        self.replica_grants: list[pulumi.Resource] = []

        def secret(key: str, value: pulumi.Input[str], *, replicas_read: bool = True
                   ) -> gcp.secretmanager.Secret:
            created = gcp.secretmanager.Secret(
                f"{name}-{key}", secret_id=f"{base_name(plan)}-{key}", labels=_labels(plan),
                replication={"auto": {}}, opts=child,
            )
            gcp.secretmanager.SecretVersion(
                f"{name}-{key}", secret=created.id, secret_data=value, opts=child,
            )
            if replicas_read:
                self.replica_grants.append(gcp.secretmanager.SecretIamMember(
                    f"{name}-{key}-replica", secret_id=created.secret_id,
                    role="roles/secretmanager.secretAccessor", member=member, opts=child,
                ))
            return created

        # The replicas read their kinds' registration credentials, never the agent token.
        self.token_secret_id = secret("agent-token", args.secrets.agent_token,
                                      replicas_read=False).secret_id
        self.credential_secret_id = secret(
            "replica-credentials", replica_credentials(plan, args.secrets.agent_token).apply(
                lambda c: json.dumps(c, sort_keys=True))).secret_id
        self.service_secret_id = None
        if args.secrets.service_secrets is not None:
            self.service_secret_id = secret(
                "service-secrets",
                args.secrets.service_secrets.apply(lambda v: json.dumps(v, sort_keys=True)),
            ).secret_id
        self.tls_secret_id: pulumi.Output[str] | None = None
        if args.secrets.tls is not None:  # only the controller reads the TLS key
            self.tls_secret_id = secret(
                "tls", args.secrets.tls.apply(lambda pem: json.dumps(pem)), replicas_read=False,
            ).secret_id
        # The stack's files bucket: the project bundle (the controller's alone) and the
        # workdir/file mounts (the replicas'). Private (public access prevention, uniform
        # bucket-level access), encrypted at rest with Google-managed keys (GCS's default).
        bucket = gcp.storage.Bucket(
            f"{name}-files", location=plan.region.upper(), force_destroy=True,
            uniform_bucket_level_access=True, public_access_prevention="enforced",
            labels=_labels(plan), opts=child,
        )
        # Content-addressed: an unchanged bundle is the same object, a new one a new object
        # (the name forces a replacement: created, named in the controller config, then the
        # old one deleted).
        key = bundle_key(args.bundle.digest)
        bundle = gcp.storage.BucketObject(
            f"{name}-bundle", bucket=bucket.name, name=key,
            source=bundle_asset(plan, args.bundle), content_type="application/gzip",
            opts=child,
        )
        # From the object's own output: the controller config that names it is written only
        # once the object exists.
        self.bundle_url = pulumi.Output.all(bucket.name, bundle.name).apply(
            lambda a: f"gs://{a[0]}/{a[1]}")
        self.bucket_name = bucket.name
        for upload in plan.uploads:
            gcp.storage.BucketObject(
                f"{name}-{upload.key}", bucket=bucket.name, name=upload.key,
                source=upload_source(plan, upload),
                opts=child,
            )
        if plan.uploads:
            # Exactly the uploaded objects (an IAM condition on their names): never the
            # bundle under BUNDLE_PREFIX, which holds the service YAML's secret values.
            keys = [upload.key for upload in plan.uploads]
            self.replica_grants.append(gcp.storage.BucketIAMMember(
                f"{name}-files-replica", bucket=bucket.name, role="roles/storage.objectViewer",
                member=member,
                condition={"title": "skyform uploads only",
                           "expression": bucket.name.apply(
                               lambda b: object_condition(b, keys=keys))},
                opts=child,
            ))
        self.bucket_url = bucket.name.apply(lambda b: f"gs://{b}")
        self.register_outputs({
            "token_secret_id": self.token_secret_id, "replica_email": self.replica_email,
        })


@dataclass
class FirewallArgs:
    plan: DeploymentPlan


class Firewall(pulumi.ComponentResource):
    """LB port from the allowed CIDRs; replica ports only from the controller's tag; the admin
    port only from replicas; SSH only from ``sshCidrs``."""

    def __init__(
        self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:gcp:Firewall", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        controller, replica = _tag(plan, "controller"), _tag(plan, "replica")
        self.rules = [
            gcp.compute.Firewall(
                f"{name}-lb", network=NETWORK, direction="INGRESS",
                allows=[{"protocol": "tcp", "ports": [str(plan.lb_port)]}],
                source_ranges=list(plan.allowed_cidrs), target_tags=[controller],
                description="clients to the load balancer", opts=child,
            ),
            gcp.compute.Firewall(
                f"{name}-admin", network=NETWORK, direction="INGRESS",
                allows=[{"protocol": "tcp", "ports": [str(plan.admin_port)]}],
                source_tags=[replica], target_tags=[controller],
                description="replica registration with the agent", opts=child,
            ),
            gcp.compute.Firewall(
                f"{name}-service", network=NETWORK, direction="INGRESS",
                allows=[{"protocol": "tcp",
                         "ports": [str(p) for p in plan.replica_ports]}],
                source_tags=[controller], target_tags=[replica],
                description="controller to the replicas' service ports", opts=child,
            ),
        ]
        self.rules.append(gcp.compute.Firewall(
            f"{name}-replica-deny", network=NETWORK, direction="INGRESS",
            priority=REPLICA_DENY_PRIORITY, denies=[{"protocol": "all"}],
            source_ranges=["0.0.0.0/0"], target_tags=[replica],
            description="nothing else reaches the replicas (over the default network's "
                        "own rules)", opts=child,
        ))
        if plan.admin_cidrs:
            self.rules.append(gcp.compute.Firewall(
                f"{name}-admin-cidrs", network=NETWORK, direction="INGRESS",
                allows=[{"protocol": "tcp", "ports": [str(plan.admin_port)]}],
                source_ranges=list(plan.admin_cidrs), target_tags=[controller],
                description="skyform status from skyform:adminCidrs", opts=child,
            ))
        if plan.task.num_nodes > 1:
            self.rules.append(gcp.compute.Firewall(
                f"{name}-nodes", network=NETWORK, direction="INGRESS",
                allows=[{"protocol": "tcp"}, {"protocol": "udp"}, {"protocol": "icmp"}],
                source_tags=[replica], target_tags=[replica],
                description="the nodes of a multi-node replica to each other", opts=child,
            ))
        if plan.ssh_cidrs:
            self.rules.append(gcp.compute.Firewall(
                f"{name}-ssh", network=NETWORK, direction="INGRESS",
                allows=[{"protocol": "tcp", "ports": ["22"]}],
                source_ranges=list(plan.ssh_cidrs), target_tags=[controller, replica],
                description="SSH", opts=child,
            ))
        self.register_outputs({"rules": [r.name for r in self.rules]})


@dataclass
class ControllerArgs:
    plan: DeploymentPlan
    machine_type: str
    token_secret_id: pulumi.Input[str]
    replica_account_name: pulumi.Input[str]
    tls_secret_id: pulumi.Input[str] | None = None
    #: The service secrets (the agent fills ``${NAME}`` in the readiness probe from them).
    service_secret_id: pulumi.Input[str] | None = None
    #: The controller's Pulumi credentials (``skyform:pulumiPassphrase`` / ``AccessToken``).
    pulumi_credentials: pulumi.Output[dict[str, str]] | None = None
    #: The project bundle: the files bucket, its object URL and its sha256.
    bucket_name: pulumi.Input[str] = ""
    bundle_url: pulumi.Input[str] = ""
    bundle_digest: str = ""
    #: The API keys' digests for the agent config (``skyform:apiKeys``), a secret.
    api_key_digests: pulumi.Output[list[dict[str, Any]]] | None = None
    #: Several controllers (components/clouds/controllers.py): their zones (the first is the
    #: one controller's) and the ``lease:`` section they share.
    zones: list[str] | None = None
    lease: pulumi.Output[LeaseConfig] | None = None


class Controller(pulumi.ComponentResource):
    """The controller VM and its service account (instances of this service, token, backend).
    With ``zones`` of several controllers, one VM (reserved internal address, ephemeral
    external one for its own egress) per further zone entry, sharing account, grants and
    config; the first keeps the one controller's names and addresses."""

    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    #: Every controller's instance self link and private IP (the first is ``private_ip``'s).
    instances: list[pulumi.Output[str]]
    private_ips: list[pulumi.Output[str]]

    def __init__(
        self, name: str, args: ControllerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:gcp:Controller", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        account = gcp.serviceaccount.Account(
            f"{name}-sa", account_id=_account_id(plan, "controller"),
            display_name=f"skyform controller of {plan.name}", opts=child,
        )
        member = account.email.apply(lambda e: f"serviceAccount:{e}")
        # The project from the provider's config (gcp:project) when set: then the agent's
        # targeted up/refresh (run_program) needs no resourcemanager.projects.get.
        project_id: pulumi.Output[str] = (
            pulumi.Output.from_input(gcp.config.project) if gcp.config.project
            else gcp.organizations.get_project_output(
                opts=pulumi.InvokeOutputOptions(parent=self)).project_id
        )
        zone = _zone(plan)
        # Exactly the permissions the agent's targeted up/refresh calls (a custom role), on
        # this stack's replica instances and disks only (an IAM condition).
        # A suffix of its own: GCP keeps a deleted role's id for days, so a stack destroyed
        # and brought up again needs another.
        suffix = random.RandomId(f"{name}-role-id", byte_length=3, opts=child)
        role = gcp.projects.IAMCustomRole(
            f"{name}-role", project=project_id,
            role_id=suffix.hex.apply(
                lambda h: f"skyform_{base_name(plan).replace('-', '_')}_controller_{h}"),
            title=f"skyform controller of {base_name(plan)}",
            description="the agent's targeted pulumi up/refresh of its replica groups",
            permissions=controller_permissions(plan), opts=child,
        )
        zones = placement_zones(plan)
        grants: list[pulumi.Resource] = [
            gcp.projects.IAMMember(
                f"{name}-instances", project=project_id,
                # The role's full name from its inputs (known at preview, unlike its output).
                role=pulumi.Output.all(project_id, role.role_id).apply(
                    lambda a: f"projects/{a[0]}/roles/{a[1]}"),
                member=member,
                condition={
                    "title": f"skyform {base_name(plan)} replicas only",
                    "expression": project_id.apply(
                        lambda p: instance_condition(p, zones, plan)),
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
            ),
            gcp.serviceaccount.IAMMember(
                f"{name}-act-as-replica", service_account_id=args.replica_account_name,
                role="roles/iam.serviceAccountUser", member=member, opts=child,
            ),
        ]
        # The project bundle, and nothing else of the files bucket: objectViewer on the
        # bundle prefix (an IAM condition; the replicas' binding names their uploads only).
        grants.append(gcp.storage.BucketIAMMember(
            f"{name}-bundle", bucket=args.bucket_name, role="roles/storage.objectViewer",
            member=member,
            condition={"title": "skyform project bundle only",
                       "expression": pulumi.Output.from_input(args.bucket_name).apply(
                           lambda b: object_condition(b, prefix=BUNDLE_PREFIX))},
            opts=child,
        ))
        # What changes per commit or YAML edit (agent config, project bundle) is a secret the
        # controller polls, not user data.
        config = gcp.secretmanager.Secret(
            f"{name}-config", secret_id=f"{base_name(plan)}-controller-config",
            labels=_labels(plan), replication={"auto": {}}, opts=child,
        )
        gcp.secretmanager.SecretVersion(
            f"{name}-config", secret=config.id,
            secret_data=controller_config_secret(
                plan, args.bundle_url, args.bundle_digest, args.pulumi_credentials,
                args.api_key_digests, args.lease),
            opts=child,
        )
        if args.lease is not None:
            # Several controllers: the leader lease object, and nothing else of the bucket.
            grants += gcp_lb.lease_grant(
                name, plan, project_id=project_id, bucket=args.bucket_name, member=member,
                role_id=suffix.hex.apply(
                    lambda h: f"skyform_{base_name(plan).replace('-', '_')}_lease_{h}"),
                opts=child)
        readable: list[tuple[str, pulumi.Input[str]]] = [
            ("token", args.token_secret_id), ("config", config.secret_id)]
        if args.tls_secret_id is not None:
            readable.append(("tls", args.tls_secret_id))
        if args.service_secret_id is not None:
            readable.append(("service-secrets", args.service_secret_id))
        for key, secret_id in readable:
            grants.append(gcp.secretmanager.SecretIamMember(
                f"{name}-{key}", secret_id=secret_id,
                role="roles/secretmanager.secretAccessor", member=member, opts=child,
            ))
        state = state_objects(plan.backend_url, pulumi.get_project(), plan.stack)
        if state is not None and plan.backend_url and plan.backend_url.startswith("gs://"):
            # This stack's state objects (read, write, delete), and no other stack's; the
            # layout marker read-only; and the object list (names) the backend's lock and
            # history lookups need: GCS checks a list against the bucket, not a prefix.
            grants.append(gcp.storage.BucketIAMMember(
                f"{name}-backend", bucket=state.bucket,
                role="roles/storage.objectAdmin", member=member,
                condition={"title": "skyform this stack's state only",
                           "expression": state_condition(state)},
                opts=child,
            ))
            grants.append(gcp.storage.BucketIAMMember(
                f"{name}-backend-list", bucket=state.bucket,
                role="roles/storage.objectViewer", member=member,
                condition={"title": "skyform state: list, layout marker",
                           "expression": state_list_condition(state)},
                opts=child,
            ))
        user_data = pulumi.Output.all(
            args.token_secret_id, args.tls_secret_id, args.service_secret_id, config.secret_id,
        ).apply(
            lambda a: render_controller_cloud_init(ControllerBoot(
                cloud="gcp", service_name=plan.name, agent_config=agent_config(plan),
                token_id=a[0], pulumi_version=PULUMI_CLI_VERSION, region=plan.region,
                deployer_env={"PULUMI_BACKEND_URL": plan.backend_url} if plan.backend_url
                else {},
                tls_secret_id=a[1], service_secret_id=a[2], config_secret_id=a[3],
            ))
        )
        # Reserved addresses: the internal one is what the replicas' start-up scripts name,
        # the external one is the endpoint; both outlive a replacement of the VM.
        internal = gcp.compute.Address(
            f"{name}-internal", name=f"{base_name(plan)}-controller-internal",
            address_type="INTERNAL", subnetwork=NETWORK, region=plan.region,
            labels=_labels(plan), opts=child,
        )
        external = gcp.compute.Address(
            f"{name}-external", name=f"{base_name(plan)}-controller",
            address_type="EXTERNAL", region=plan.region, labels=_labels(plan), opts=child,
        )
        self.instances, self.private_ips = [], []
        every = args.zones or [zone]
        # The other controllers' subnet (controllers.slot): one /28 of the region
        # holding slots 1..9, the addresses every replica's start-up already names.
        slot_subnet = None if len(every) == 1 else gcp.compute.Subnetwork(
            f"{name}-slots", name=f"{base_name(plan)}-controllers", network=NETWORK,
            ip_cidr_range=controllers.slot(plan, 1).subnet, region=plan.region,
            description=f"skyform controllers of {plan.name}", opts=child,
        )
        for index, where in enumerate(every):
            # The first controller keeps the one controller's names: adding controllers
            # replaces nothing. The others reserve their slot's fixed internal address;
            # their external one is ephemeral (egress only: the load balancer is the
            # endpoint).
            each, vm_name = name, f"{base_name(plan)}-controller"
            nic: dict[str, Any] = {"network": NETWORK, "network_ip": internal.address,
                                   "access_configs": [{"nat_ip": external.address}]}
            if index and slot_subnet is not None:
                each, vm_name = f"{name}-{index}", f"{base_name(plan)}-controller-{index}"
                own = gcp.compute.Address(
                    f"{each}-internal", name=f"{vm_name}-internal", address_type="INTERNAL",
                    address=controllers.slot(plan, index).address,
                    subnetwork=slot_subnet.id, region=plan.region, labels=_labels(plan),
                    # A fixed name and address: the old reservation goes before its
                    # replacement.
                    opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
                )
                nic = {"network": NETWORK, "subnetwork": slot_subnet.id,
                       "network_ip": own.address, "access_configs": [{}]}
            vm = gcp.compute.Instance(
                f"{each}-vm", name=vm_name, machine_type=args.machine_type,
                zone=where,
                boot_disk={"initialize_params": {"image": CONTROLLER_IMAGE, "size": 50,
                                                 "type": "pd-balanced"}},
                network_interfaces=[sdk_args(nic)],
                service_account={"email": account.email, "scopes": ["cloud-platform"]},
                tags=[_tag(plan, "controller")], labels=_labels(plan, role="controller"),
                metadata={"user-data": user_data}, allow_stopping_for_update=True,
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=grants,
                    # A newer image in the family never replaces the controller; its name and
                    # reserved addresses are freed before a replacement takes them.
                    ignore_changes=["bootDisk.initializeParams.image"],
                    delete_before_replace=True,
                ),
            )
            self.instances.append(vm.self_link)
            self.private_ips.append(nic["network_ip"])
        self.public_ip = external.address
        self.private_ip = internal.address
        self.register_outputs({"public_ip": self.public_ip, "private_ip": self.private_ip})


@dataclass
class ReplicaGroupArgs:
    plan: DeploymentPlan
    group: GroupPlan
    replica_email: pulumi.Input[str]
    controller_private_ip: pulumi.Input[str]
    credential_secret_id: pulumi.Input[str]
    service_secret_id: pulumi.Input[str] | None
    bucket_url: pulumi.Input[str] | None
    #: IAM grants the replicas use (they are created first).
    grants: list[pulumi.Resource] | None = None


def scheduling(spot: bool, gpus: int) -> Any:
    """SPOT provisioning for spot groups; GPUs need host maintenance TERMINATE."""
    if spot:
        return {"provisioning_model": "SPOT", "preemptible": True, "automatic_restart": False,
                "on_host_maintenance": "TERMINATE", "instance_termination_action": "DELETE"}
    return {"provisioning_model": "STANDARD", "automatic_restart": True,
            "on_host_maintenance": "TERMINATE" if gpus else "MIGRATE"}


#: Machine families GCP's compact placement policies accept (its placement-policy docs,
#: 2025-06); N1 (T4/V100/P100 attached GPUs) is not among them.
COMPACT_PLACEMENT_FAMILIES = frozenset({"a2", "a3", "a4", "c2", "c2d", "c3", "c3d", "g2", "h3",
                                        "n2", "n2d"})


def _replica_script(plan: DeploymentPlan, group: GroupPlan, index: int, rank: int,
                    ips_secret: str | None, resolved: list[Any]) -> str:
    controller_ip, credential_secret_id, secret_id, bucket_url = resolved
    # Every controller slot, the first controller's address first (controllers.py).
    urls = controllers.controller_urls(controller_ip, plan)
    return render_replica_bootstrap(ReplicaBoot(
        cloud="gcp", service_name=plan.name, group=group.group, index=index,
        replica_id_base=group.replica_id_base, spot=group.spot,
        accelerator=plan.group_offer(group).accelerator, num_gpus=plan.num_gpus,
        service_port=plan.service_port,
        controller_url=urls[0], fallback_controller_urls=urls[1:],
        credential_id=credential_secret_id,
        secret_id=secret_id, region=plan.region, envs=plan.envs, setup=plan.task.setup,
        run=plan.task.run, downloads=downloads_for(plan, bucket_url),
        docker_image=plan.docker_image, num_nodes=plan.task.num_nodes, node_rank=rank,
        node_ips_secret=ips_secret,
    ))


#: What a frozen replica group's instances keep (lb_agent.control.fleet): every input that comes
#: from
#: the service YAML or the machine choice.
FROZEN_INSTANCE_FIELDS = (
    "bootDisk", "machineType", "guestAccelerators", "scheduling", "labels", "metadata",
    "metadataStartupScript", "resourcePolicies", "zone",
)


class ReplicaGroup(pulumi.ComponentResource):
    """``count`` replicas indexed 0..count-1; scaling down removes the highest index. A replica
    is one instance, or (``num_nodes > 1``) a head and ``num_nodes - 1`` workers under one
    compact placement policy (where the family supports it), removed together."""

    addresses: list[pulumi.Output[str]]
    indices: list[int]

    def __init__(
        self, name: str, args: ReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:gcp:ReplicaGroup", name, None, opts)
        plan, group = args.plan, args.group
        child = pulumi.ResourceOptions(parent=self)
        instance_opts = pulumi.ResourceOptions(
            parent=self, depends_on=list(args.grants or []),
            # The image is resolved at the first up; a newer one never replaces a replica, nor
            # does a newer skyform's start-up script (the generation's digest covers what the
            # YAML asks; a new script reaches the replicas launched from then on).
            # A frozen group (an older generation, being rolled out) keeps everything its
            # instances were launched with; only its count changes.
            ignore_changes=list(FROZEN_INSTANCE_FIELDS) if group.frozen
            else ["bootDisk.initializeParams.image", "metadataStartupScript"],
        )
        offer = plan.group_offer(group)
        zone = plan.group_zone(group) if group.placed else _zone(plan)
        accelerators: Any = (
            [{"type": offer.accelerator_type, "count": plan.num_gpus}]
            if offer.accelerator_type and offer.instance_type.startswith("n1-") else []
        )
        try:
            params = boot_disk(plan.disk_tier, offer.instance_type, plan.candidate.disk_size)
        except PlacementError as exc:
            raise PlacementError(f"{plan.task.source}: resources.{exc}") from None
        disk: Any = {"image": plan.image or DL_IMAGE, **params}
        self.addresses = []
        nodes = plan.task.num_nodes
        member = pulumi.Output.from_input(args.replica_email).apply(
            lambda e: f"serviceAccount:{e}")

        def instance(index: int, rank: int, policy: pulumi.Input[str] | None,
                     ips_secret: str | None) -> gcp.compute.Instance:
            script = pulumi.Output.all(
                args.controller_private_ip, args.credential_secret_id, args.service_secret_id,
                args.bucket_url,
            ).apply(functools.partial(_replica_script, plan, group, index, rank, ips_secret))
            suffix = f"{index}" if rank == 0 else f"{index}-node{rank}"
            return gcp.compute.Instance(
                f"{name}-{suffix}", name=instance_name(plan, group.group, index)
                + ("" if rank == 0 else f"-node{rank}"),
                machine_type=offer.instance_type, zone=zone,
                boot_disk={"initialize_params": disk},
                guest_accelerators=accelerators,
                scheduling=scheduling(group.spot, plan.num_gpus),
                network_interfaces=[{"network": NETWORK, "access_configs": [{}]}],
                service_account=sdk_args({"email": args.replica_email,
                                          "scopes": ["cloud-platform"]}),
                tags=[_tag(plan, "replica")],
                labels=_labels(plan, group=group.group, index=str(index),
                               node_rank=str(rank)),
                metadata={"install-nvidia-driver": "True"} if plan.num_gpus else {},
                metadata_startup_script=script, allow_stopping_for_update=True,
                resource_policies=policy,
                opts=instance_opts,
            )

        def address(vm: gcp.compute.Instance) -> pulumi.Output[str]:
            return vm.network_interfaces.apply(
                lambda nics: nics[0]["network_ip"] if isinstance(nics[0], dict)
                else nics[0].network_ip
            )

        family = offer.instance_type.split("-")[0]
        self.indices = group.indices()
        for index in self.indices:
            if nodes == 1:
                head = instance(index, 0, None, None)
            else:
                # A replica = a group of nodes, in one compact placement policy where the
                # machine family has them; the IP list goes to Secret Manager once every
                # node exists (no cycle in the start-up scripts).
                policy = gcp.compute.ResourcePolicy(
                    f"{name}-{index}", region=plan.group_region(group),
                    group_placement_policy={"collocation": "COLLOCATED", "vm_count": nodes},
                    opts=child,
                ).self_link if family in COMPACT_PLACEMENT_FAMILIES else None
                secret_id = f"{base_name(plan)}-nodes-{group.group}-{index}"
                ips = gcp.secretmanager.Secret(
                    f"{name}-{index}-nodes", secret_id=secret_id, labels=_labels(plan),
                    replication={"auto": {}}, opts=child,
                )
                gcp.secretmanager.SecretIamMember(
                    f"{name}-{index}-nodes", secret_id=ips.secret_id,
                    role="roles/secretmanager.secretAccessor", member=member, opts=child,
                )
                members = [instance(index, rank, policy, secret_id) for rank in range(nodes)]
                gcp.secretmanager.SecretVersion(
                    f"{name}-{index}-nodes", secret=ips.id,
                    secret_data=pulumi.Output.all(*[address(m) for m in members]).apply(
                        lambda addresses: "\n".join(addresses)),
                    opts=child,
                )
                head = members[0]
            self.addresses.append(address(head))
        self.register_outputs({"addresses": self.addresses})


def deploy(name: str, plan: DeploymentPlan, secrets: DeploymentSecrets,
           parent: pulumi.ComponentResource, controller_machine_type: str) -> CloudDeployment:
    """Create every GCP component of the service under ``parent``."""
    opts = pulumi.ResourceOptions(parent=parent)
    bundle = plan_bundle(plan)
    access = Access(f"{name}-access", AccessArgs(plan, secrets, bundle), opts)
    Firewall(f"{name}-firewall", FirewallArgs(plan), opts)
    count = plan.controller_replicas
    zones = controllers.controller_zones(plan, count) if count > 1 else None
    controller = Controller(f"{name}-controller", ControllerArgs(
        plan, controller_machine_type, access.token_secret_id, access.replica_account_name,
        access.tls_secret_id, access.service_secret_id, secrets.pulumi_credentials,
        access.bucket_name, access.bundle_url, bundle.digest, secrets.api_key_digests,
        zones=zones,
        lease=None if zones is None else access.bucket_name.apply(
            lambda bucket: controllers.lease_config(plan, "gcs", bucket)),
    ), opts)
    groups: list[pulumi.ComponentResource] = []
    replicas: list[pulumi.Output[dict[str, Any]]] = []
    for group in plan.groups:
        component = ReplicaGroup(f"{name}-{group.group}", ReplicaGroupArgs(
            plan, group, access.replica_email, controller.private_ip,
            access.credential_secret_id,
            access.service_secret_id, access.bucket_url, access.replica_grants,
        ), opts)
        groups.append(component)
        for index, address in zip(component.indices, component.addresses, strict=True):
            replicas.append(address.apply(functools.partial(replica_entry, plan, group, index)))
    address = controller.public_ip
    if zones is not None:
        address = gcp_lb.NetworkLoadBalancer(f"{name}-nlb", gcp_lb.NetworkLoadBalancerArgs(
            plan, base_name(plan), zones, controller.instances, _tag(plan, "controller"),
            NETWORK,
        ), opts).address
    endpoint = address.apply(lambda ip: f"{plan.scheme}://{ip}:{plan.lb_port}")
    admin_url = controller.public_ip.apply(lambda ip: f"http://{ip}:{plan.admin_port}")
    return CloudDeployment(endpoint, address, replicas, groups, admin_url)
