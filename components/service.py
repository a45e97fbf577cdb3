"""``SkyService``: one SkyServe service YAML as Pulumi resources on the stack's cloud.

This module owns turning (service task, stack settings) into a ``DeploymentPlan``: which
candidate and machine (the catalog decides), how many replicas in the spot and on-demand
groups, the image, the workdir and file mounts, labels, and where the project source comes
from; then it hands the plan to the cloud module and exposes the stack outputs.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_random as random
from pulumi.runtime.mocks import MockMonitor

from components import catalog
from components.clouds.common import (
    REPLICA_WORKDIR,
    CloudDeployment,
    DeploymentPlan,
    DeploymentSecrets,
    GroupPlan,
    LocalUpload,
    resource_name,
    unsupported,
)
from components.errors import PlacementError
from components.spec import Candidate, ServiceTask
from components.stack_config import StackSettings
from components.startup import Download, replica_id_base

#: What a secret given only in the stack config looks like to the parser (it only needs to
#: know the value is supplied; the real value stays a Pulumi secret). One per name, so a
#: placeholder substituted into the service section maps back to its secret's name.
SECRET_PLACEHOLDER = "<from skyform:secrets: {name}>"


def replica_groups(task: ServiceTask, candidate: Candidate, settings: StackSettings
                   ) -> tuple[GroupPlan, ...]:
    """The spot and on-demand groups and their counts.

    min/max come from the YAML unless ``skyform:minReplicas`` / ``maxReplicas`` override them;
    the desired total is ``skyform:replicas`` (default: min), clipped to [min, max]. With spot,
    ``skyform:onDemandReplicas`` (default ``base_ondemand_fallback_replicas``) of them are
    on-demand; without spot, all are.
    """
    policy = task.service.replica_policy
    low = settings.min_replicas if settings.min_replicas is not None else policy.min_replicas
    high = (settings.max_replicas if settings.max_replicas is not None
            else policy.effective_max_replicas)
    high = max(high, low)
    desired = settings.replicas if settings.replicas is not None else low
    desired = min(max(desired, low), high)
    if not candidate.spot:
        return (GroupPlan("ondemand", False, desired, replica_id_base("ondemand", 1)),)
    ondemand = (settings.on_demand_replicas if settings.on_demand_replicas is not None
                else policy.base_ondemand)
    ondemand = min(ondemand, desired)
    return (
        GroupPlan("spot", True, desired - ondemand, replica_id_base("spot", 2)),
        GroupPlan("ondemand", False, ondemand, replica_id_base("ondemand", 2)),
    )


def choose_image(candidate: Candidate, region: str, cloud: str) -> tuple[str | None, str | None]:
    """(machine image, container image) from ``image_id`` for ``region``; (None, None) means
    the cloud's GPU-ready default."""
    if not candidate.image_id:
        return None, None
    images = candidate.image_id
    image = images.get(region) or images.get(None)
    if image is None:
        if len(images) == 1:
            image = next(iter(images.values()))
        else:
            raise PlacementError(
                f"image_id has no image for region {region!r} (it lists "
                f"{', '.join(str(k) for k in images)}); add one or pick a listed region"
            )
    if image.startswith("docker:"):
        return None, image.removeprefix("docker:")
    if cloud == "kubernetes":  # SkyPilot adds the docker: prefix on Kubernetes.
        return None, image
    return image, None


_BUCKET_SCHEMES = {"aws": "s3://", "gcp": "gs://"}


def file_transfers(task: ServiceTask, cloud: str, project_dir: Path
                   ) -> tuple[tuple[LocalUpload, ...], tuple[Download, ...]]:
    """Local workdir/file mounts to upload, and remote bucket mounts to copy at boot.

    Local paths are resolved against the project directory (where ``pulumi`` runs, as
    ``sky`` resolves them against the working directory).
    """
    uploads: list[LocalUpload] = []
    downloads: list[Download] = []
    items: list[tuple[str, Any]] = []
    if isinstance(task.workdir, str):
        items.append((REPLICA_WORKDIR, task.workdir))
    for dest, source in (task.file_mounts or {}).items():
        items.append((str(dest), source))
    if cloud == "kubernetes" and (items or isinstance(task.workdir, Mapping)):
        what = "workdir" if task.workdir is not None else "file_mounts"
        raise unsupported(
            cloud, what,
            "bake the files into a container image and set image_id: docker:<image>",
        )
    scheme = _BUCKET_SCHEMES.get(cloud, "")
    for dest, source in items:
        if isinstance(source, Mapping):
            url = source.get("source")
            if url is None and source.get("name"):
                url = f"{scheme}{source['name']}"
            if not isinstance(url, str):
                raise unsupported(cloud, f"file_mounts {dest!r}", "give a source or a name")
            source = url
        source = str(source)
        if "://" in source:
            if not source.startswith(scheme):
                raise unsupported(
                    cloud, f"file_mounts {dest!r} from {source}",
                    f"copy it to a {scheme} bucket and mount that",
                )
            downloads.append(Download(source, dest, "tree"))
            continue
        path = (project_dir / Path(source).expanduser()).resolve()
        key = resource_name(f"{len(uploads)}-{Path(source).name or 'root'}", max_len=40)
        if not path.exists():
            what = "workdir" if dest == REPLICA_WORKDIR else f"file_mounts {dest!r}"
            message = f"{task.source}: {what}: {source!r} does not exist (resolved to {path})"
            # Under the real engine, preview included, this is an error: the upload would
            # otherwise fail later with an opaque archive-hash error. `skyform synth` (an
            # offline plan under mocks) shows it as a warning and plans the rest.
            if not _offline_plan():
                raise PlacementError(message)
            pulumi.log.warn(f"{message}; `pulumi preview` and `pulumi up` refuse it")
        is_dir = path.is_dir() or not path.exists()
        uploads.append(LocalUpload(f"{key}.zip" if is_dir else key, path, dest, is_dir))
    return tuple(uploads), tuple(downloads)


def _offline_plan() -> bool:
    """True when the program runs under Pulumi's mock runtime (``skyform synth``, tests)."""
    return isinstance(pulumi.runtime.settings.SETTINGS.monitor, MockMonitor)


@functools.lru_cache(maxsize=8)
def _git(project_dir: str, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", project_dir, *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def project_source(settings: StackSettings, project_dir: Path) -> tuple[str, str]:
    """(git URL, commit) the controller installs: ``skyform:sourceRepo`` / ``sourceRef``,
    defaulting to this checkout's ``origin`` and ``HEAD``, so the controller runs exactly the
    code that deployed it."""
    repo = settings.source_repo or _git(str(project_dir), "config", "--get", "remote.origin.url")
    ref = settings.source_ref or _git(str(project_dir), "rev-parse", "HEAD")
    if repo is None:
        repo = f"file://{project_dir}"
        pulumi.log.warn(
            "skyform:sourceRepo is not set and this checkout has no `origin` remote: the "
            f"controller would clone {repo}, which it cannot reach; set skyform:sourceRepo"
        )
    if ref is None:
        raise PlacementError(
            "skyform:sourceRef is not set and the project is not a git checkout: set it to "
            "the commit (or tag) the controller should install"
        )
    return repo, ref


def build_plan(task: ServiceTask, settings: StackSettings, *, stack: str,
               project_dir: Path) -> DeploymentPlan:
    """Resolve the task for the stack's cloud (raises ``PlacementError`` when it can't)."""
    cloud = settings.cloud
    if task.num_nodes > 1:
        raise PlacementError(
            f"{task.source}: num_nodes: {task.num_nodes} (multi-node replicas) is not supported "
            "yet; serve with num_nodes: 1"
        )
    placement = catalog.place(task, cloud, pin=settings.candidate)
    candidate = task.candidates[placement.candidate_index]
    offer = placement.offer
    controller = catalog.controller_offer(cloud)
    region = settings.region or candidate.region or offer.region
    image, docker_image = choose_image(candidate, region, cloud)
    uploads, downloads = file_transfers(task, cloud, project_dir)
    repo, ref = project_source(settings, project_dir)
    name = resource_name(task.name or Path(task.source).stem)
    envs = {**task.envs, **settings.envs}
    return DeploymentPlan(
        name=name, stack=stack, cloud=cloud, task=task,
        candidate_index=placement.candidate_index, candidate=candidate, offer=offer,
        controller_offer=controller, groups=replica_groups(task, candidate, settings),
        region=region, zone=settings.zone or candidate.zone, envs=envs,
        secret_keys=settings.secret_keys, allowed_cidrs=settings.allowed_cidrs,
        ssh_cidrs=settings.ssh_cidrs, labels=dict(candidate.labels or {}),
        source_repo=repo, source_ref=ref, backend_url=settings.backend_url,
        namespace=settings.namespace or name, storage_classes=settings.storage_classes,
        uploads=uploads, remote_downloads=downloads, image=settings.image_id or image,
        docker_image=docker_image,
    )


def service_secrets(task: ServiceTask, settings: StackSettings
                    ) -> pulumi.Output[dict[str, str]] | None:
    """The YAML's secrets merged with ``skyform:secrets``, as one secret Output."""
    from_yaml = {k: v for k, v in task.secrets.items() if k not in settings.secret_keys}
    if not from_yaml and settings.secrets is None:
        return None
    overrides = settings.secrets if settings.secrets is not None else pulumi.Output.from_input({})
    return pulumi.Output.secret(
        pulumi.Output.all(pulumi.Output.secret(from_yaml), overrides).apply(
            lambda a: {**a[0], **a[1]}
        )
    )


def tls_pem(task: ServiceTask, project_dir: Path) -> pulumi.Output[dict[str, str]] | None:
    """``service.tls`` key and certificate contents, as one secret Output (they go to the
    secret store; the controller fetches them at boot)."""
    tls = task.service.tls
    if tls is None:
        return None
    contents: dict[str, str] = {}
    for key, name in (("keyfile", tls.keyfile), ("certfile", tls.certfile)):
        path = (project_dir / Path(name).expanduser()).resolve()
        if path.is_file():
            contents[key] = path.read_text()
        elif pulumi.runtime.is_dry_run():
            contents[key] = f"<{path} is read at pulumi up>"
        else:
            raise PlacementError(f"{task.source}: service.tls.{key} {name!r} does not exist "
                                 f"(resolved to {path})")
    return pulumi.Output.secret(contents)


@dataclass
class SkyServiceArgs:
    """A parsed service and the stack's settings."""

    task: ServiceTask
    settings: StackSettings
    stack: str
    project_dir: Path


class SkyService(pulumi.ComponentResource):
    """The whole service on one cloud: replica groups, firewall and controller."""

    endpoint: pulumi.Output[str]
    controller_address: pulumi.Output[str]
    replica_count: int
    hourly_cost: float
    replicas: pulumi.Output[list[dict[str, Any]]]
    replica_group_urns: pulumi.Output[list[str]]
    plan: DeploymentPlan

    def __init__(self, name: str, args: SkyServiceArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        plan = build_plan(args.task, args.settings, stack=args.stack,
                          project_dir=args.project_dir)
        super().__init__("skyform:index:SkyService", name, None, opts)
        self.plan = plan
        child = pulumi.ResourceOptions(parent=self)
        token: pulumi.Output[str]
        if args.settings.agent_token is not None:
            token = pulumi.Output.secret(args.settings.agent_token)
        else:
            token = pulumi.Output.secret(
                random.RandomPassword(f"{name}-agent-token", length=48, special=False,
                                      opts=child).result
            )
        secrets = DeploymentSecrets(token, service_secrets(args.task, args.settings),
                                    tls_pem(args.task, args.project_dir))
        deployment: CloudDeployment
        settings = args.settings
        if plan.cloud == "aws":
            from components.clouds import aws

            deployment = aws.deploy(name, plan, secrets, self,
                                    settings.controller_instance_type
                                    or plan.controller_offer.instance_type)
        elif plan.cloud == "gcp":
            from components.clouds import gcp

            deployment = gcp.deploy(name, plan, secrets, self,
                                    settings.controller_instance_type
                                    or plan.controller_offer.instance_type)
        else:
            from components.clouds import kubernetes

            deployment = kubernetes.deploy(name, plan, secrets, self,
                                           settings.controller_instance_type)
        self.endpoint = deployment.endpoint
        self.controller_address = deployment.controller_address
        self.replica_count = plan.replica_count
        self.hourly_cost = plan.hourly_cost()
        self.replicas = pulumi.Output.all(*deployment.replicas).apply(list)
        self.replica_group_urns = pulumi.Output.all(*[g.urn for g in deployment.groups]).apply(
            list
        )
        self.register_outputs({
            "endpoint": self.endpoint,
            "controllerAddress": self.controller_address,
            "replicaCount": self.replica_count,
            "hourlyCost": self.hourly_cost,
            "replicas": self.replicas,
            "replicaGroupUrns": self.replica_group_urns,
        })


def load_task(settings: StackSettings, project_dir: Path) -> ServiceTask:
    """Parse the stack's service YAML with the stack's env and secret overrides."""
    from components.parser import load_service

    path = Path(settings.service)
    if not path.is_absolute():
        path = project_dir / path
    return load_service(
        path,
        env_overrides=dict(settings.envs),
        secret_overrides={key: SECRET_PLACEHOLDER.format(name=key)
                          for key in settings.secret_keys},
    )
