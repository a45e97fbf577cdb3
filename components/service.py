"""``SkyService``: one SkyServe service YAML as Pulumi resources on the stack's cloud.

This module owns turning (service task, stack settings) into a ``DeploymentPlan``: which
candidate and machine (the catalog decides), how many replicas in the spot and on-demand
groups, the image, the workdir and file mounts, labels, and where the project source comes
from; then it hands the plan to the cloud module and exposes the stack outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_random as random

from components import catalog
from components.clouds.common import (
    MISSING_IMAGE,
    CloudDeployment,
    DeploymentPlan,
    DeploymentSecrets,
    GroupPlan,
    LocalUpload,
    files_digest,
    replica_workdir,
    resource_name,
    unsupported,
)
from components.errors import PlacementError
from components.locations import CandidateLocation, candidate_locations, default_zone
from components.spec import Candidate, ServiceTask
from components.stack_config import StackConfigError, StackSettings
from components.startup import Download, replica_id_base
from lb_agent.contract import (
    FLEET_OUTPUT,
    GENERATION_ID_OFFSET,
    ONDEMAND,
    SPOT,
    Fleet,
    FleetError,
    Generation,
    PolicyParams,
    Site,
    current_generation,
    group_name,
    parse_fleet,
    replica_digest,
)

#: What a secret given only in the stack config looks like to the parser (it only needs to
#: know the value is supplied; the real value stays a Pulumi secret). One per name, so a
#: placeholder substituted into the service section maps back to its secret's name.
SECRET_PLACEHOLDER = "<from skyform:secrets: {name}>"


def with_stack_policy(task: ServiceTask, settings: StackSettings) -> ServiceTask:
    """The task with ``skyform:minReplicas`` / ``maxReplicas`` applied to its replica policy.

    One policy for everything downstream: the replica groups below and the agent config the
    controller runs, so the agent autoscales within the same bounds the program plans."""
    policy = task.service.replica_policy
    low = settings.min_replicas if settings.min_replicas is not None else policy.min_replicas
    high = (settings.max_replicas if settings.max_replicas is not None
            else policy.effective_max_replicas)
    if (low, high) == (policy.min_replicas, policy.effective_max_replicas):
        return task
    policy = dataclasses.replace(policy, min_replicas=low, max_replicas=max(high, low))
    return dataclasses.replace(
        task, service=dataclasses.replace(task.service, replica_policy=policy))


def first_counts(task: ServiceTask, candidate: Candidate, settings: StackSettings
                 ) -> tuple[int, int]:
    """(spot, on-demand) replicas of a stack's first deploy (``task`` has the stack's policy).

    The desired total is ``skyform:replicas`` (default: min_replicas), at least min and at
    most ``max_replicas + num_overprovision`` (SkyServe's cap: the room above it is for the
    agent's own counts, a backup copy while spot is unstable); with spot,
    ``skyform:onDemandReplicas`` (default ``base_ondemand_fallback_replicas``) of them are
    on-demand and the rest spot."""
    policy = task.service.replica_policy
    desired = settings.replicas if settings.replicas is not None else policy.min_replicas
    cap = policy.effective_max_replicas + (policy.num_overprovision or 0)
    desired = min(max(desired, policy.min_replicas), max(cap, policy.min_replicas))
    if not candidate.spot:
        return 0, desired
    ondemand = (settings.on_demand_replicas if settings.on_demand_replicas is not None
                else policy.base_ondemand)
    ondemand = min(ondemand, desired)
    return desired - ondemand, ondemand


def plan_fleet(task: ServiceTask, candidate: Candidate, settings: StackSettings,
               previous: Fleet | None, digest: str) -> tuple[Fleet, int]:
    """The fleet this ``up`` renders, and the generation of the stack's YAML.

    Without a previous fleet (the first deploy) it is generation 1 with ``first_counts``.
    Otherwise the agent owns the counts: every live generation keeps its counts, and the
    YAML runs as the newest generation with its ``digest``, or as a new one with no replicas
    yet (the agent's rollout launches them and retires the old ones). A lone generation is
    raised to ``min_replicas`` (a raised ``skyform:minReplicas``); during a rollout the agent
    alone moves counts, so the total never exceeds its cap (SkyServe #3255). Each group is
    clipped to the agent's own per-group cap (``PolicyParams.group_caps``), never to
    ``max_replicas`` alone: the agent may run more than that with overprovisioning or
    on-demand cover, and a tighter clip would delete replicas it never drained.
    """
    policy = task.service.replica_policy
    caps = PolicyParams.from_policy(policy.to_json()).group_caps(uses_spot=candidate.spot)
    if previous is None or not previous.generations:
        spot, ondemand = first_counts(task, candidate, settings)
        live = [Generation(1, digest, spot, ondemand)]
        current = 1
    else:
        current, new = current_generation(previous.generations, digest)
        live = [g for g in previous.generations
                if g.total(SPOT) + g.total(ONDEMAND) or g.generation == current]
        if new:
            live.append(Generation(current, digest))
        if len(live) == 1:
            only = live[0]
            missing = max(0, policy.min_replicas - only.total(SPOT) - only.total(ONDEMAND))
            live = [dataclasses.replace(only, spot=only.spot + missing) if candidate.spot
                    else dataclasses.replace(only, ondemand=only.ondemand + missing)]
    # Only the YAML's generation is held to the YAML's caps: an older one (perhaps of a
    # bigger policy, or spot when the YAML no longer is) only shrinks, by the agent.
    # Placed groups count against the cap first: the home group is the one clipped.
    def clip(g: Generation) -> Generation:
        away = {k: g.total(k) - g.count(k) for k in (SPOT, ONDEMAND)}
        return dataclasses.replace(
            g, spot=max(0, min(g.spot, caps["spot"] - away[SPOT])) if candidate.spot else 0,
            ondemand=max(0, min(g.ondemand, caps["ondemand"] - away[ONDEMAND])))

    clipped = tuple(clip(g) if g.generation == current else g for g in live)
    return Fleet(clipped, previous.version if previous else None), current


def replica_groups(fleet: Fleet, current: int, spot_service: bool,
                   home: Site | None = None,
                   offer_at: Any = None) -> tuple[GroupPlan, ...]:
    """One spot and one on-demand group per generation at the home location (only on-demand
    when the service does not use spot and the generation has no spot replica), plus each
    group the agent placed elsewhere; groups of other generations than ``current`` are
    frozen. ``offer_at(site)`` is the machine of a placed group's candidate."""
    groups: list[GroupPlan] = []
    for gen in fleet.generations:
        kinds = (SPOT, ONDEMAND) if spot_service or gen.total(SPOT) else (ONDEMAND,)
        for kind in kinds:
            name = group_name(kind, gen.generation)
            base = replica_id_base(kind, len(kinds)) + GENERATION_ID_OFFSET * (gen.generation - 1)
            groups.append(GroupPlan(name, kind == SPOT, gen.count(kind), base, gen.generation,
                                    frozen=gen.generation != current, site=home,
                                    skip=gen.skipped(name)))
        for placed in sorted(gen.placed, key=lambda p: p.name(gen.generation)):
            name = placed.name(gen.generation)
            # The same SKYPILOT_SERVE_REPLICA_ID range as the generation's home group of the
            # kind: the index is unique within a group, the id only needs to be an integer.
            base = (replica_id_base(placed.kind, len(kinds))
                    + GENERATION_ID_OFFSET * (gen.generation - 1))
            groups.append(GroupPlan(
                name, placed.kind == SPOT, placed.count, base, gen.generation,
                frozen=gen.generation != current, site=placed.site,
                offer=offer_at(placed.site) if offer_at is not None else None,
                skip=gen.skipped(name)))
    return tuple(groups)


def placed_offer(task: ServiceTask, cloud: str, home_offer: catalog.MachineOffer,
                 accelerator_label: str) -> Any:
    """``site -> MachineOffer``: the catalog's machine for the site's candidate, else (a
    candidate the YAML no longer has) the machine the fleet recorded."""
    def offer_at(site: Site) -> catalog.MachineOffer:
        if 0 <= site.candidate < len(task.candidates):
            offer = catalog.offer_for(task.candidates[site.candidate], cloud,  # type: ignore[arg-type]
                                      accelerator_label=accelerator_label)
            if offer is not None and (not site.instance_type
                                      or offer.instance_type == site.instance_type):
                return offer
        return dataclasses.replace(home_offer, instance_type=site.instance_type
                                   or home_offer.instance_type, accelerator=site.accelerator)
    return offer_at


def placer_name(task: ServiceTask) -> str:
    """The agent's placement policy: SkyServe's SpotHedge for ``spot_placer:
    dynamic_fallback`` (in any case, as the schema accepts it), skyform's own otherwise
    (docs/placement.md)."""
    placer = task.service.replica_policy.spot_placer
    return "spothedge" if (placer or "").lower() == "dynamic_fallback" else "skyform"


def previous_fleet(settings: StackSettings) -> Fleet | None:
    """The fleet the agent last wrote: ``skyform:fleet`` on the controller's copy of the
    stack; elsewhere (a ``pulumi up`` in the user's checkout) the stack's own last ``fleet``
    output, read through a StackReference to this stack, so an ``up`` outside the controller
    never resets the replicas the agent scaled."""
    where = "skyform:fleet"
    raw: Any = settings.fleet
    if raw is None:
        where = f"the stack's last `{FLEET_OUTPUT}` output"
        raw = own_stack_output(FLEET_OUTPUT)
    try:
        return parse_fleet(raw)
    except FleetError as exc:
        raise StackConfigError(f"{where}: {exc}") from None


def own_stack_output(name: str) -> Any:
    """Output ``name`` of this stack's last update (None on the first). The program needs it
    as a plain value (it decides how many resources to declare), so it waits for it here as
    the SDK's own synchronous invokes do."""
    from pulumi.runtime.sync_await import _sync_await

    ref = pulumi.StackReference(
        f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}")
    return _sync_await(ref.get_output_details(name)).value


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


def aws_image_for(task: ServiceTask, settings: StackSettings, site: Site, home_region: str
                  ) -> str | None:
    """The AMI a replica at ``site`` boots (None: the region's GPU-ready default, looked up
    there), or ``MISSING_IMAGE``. An AMI id exists in one region only, so a pinned image
    (``skyform:imageId``; the candidate's ``image_id``, per region or one for its own
    region) places a replica only in a region it names one for; a container image
    (``docker:``) runs anywhere."""
    if settings.image_id:
        return settings.image_id if site.region == home_region else MISSING_IMAGE
    if not 0 <= site.candidate < len(task.candidates):
        return None
    candidate = task.candidates[site.candidate]
    if not candidate.image_id:
        return None
    images = candidate.image_id
    image = images.get(site.region)
    if image is None:
        default = images.get(None) if None in images else (
            next(iter(images.values())) if len(images) == 1 else None)
        if default is not None and (default.startswith("docker:") or site.region == (
                candidate.region or home_region)):
            image = default
    if image is None:
        return MISSING_IMAGE
    return None if image.startswith("docker:") else image


_BUCKET_SCHEMES = {"aws": "s3://", "gcp": "gs://"}
#: SkyPilot's ``store:`` names of the stores skyform reads.
_STORE_SCHEMES = {"s3": "s3://", "gcs": "gs://"}


def file_transfers(task: ServiceTask, cloud: str, project_dir: Path, bucket_store: str
                   ) -> tuple[tuple[LocalUpload, ...], tuple[Download, ...]]:
    """Local workdir/file mounts to upload, and remote bucket mounts to copy at boot.

    Relative local paths are resolved next to the service YAML, as ``skyform local`` does
    (``sky`` resolves them against its working directory, which for ``sky serve up
    service.yaml`` is usually the YAML's folder; ``pulumi`` always runs in the project
    directory, so that would be the skyform checkout). ``project_dir`` is the fallback for a
    task without a source file. A bucket given by name only (``name:``, no ``source:``) is
    in its ``store:``, else the cloud's own store; on Kubernetes, which has none, it is in
    ``bucket_store`` (``skyform:bucketStore``), as SkyPilot picks an enabled cloud's store.
    """
    uploads: list[LocalUpload] = []
    downloads: list[Download] = []
    items: list[tuple[str, Any]] = []
    if isinstance(task.workdir, str):
        items.append((replica_workdir(cloud), task.workdir))
    for dest, source in (task.file_mounts or {}).items():
        items.append((str(dest), source))
    scheme = _BUCKET_SCHEMES.get(cloud, "")
    for dest, source in items:
        if isinstance(source, Mapping):
            url = source.get("source")
            if url is None and source.get("name"):
                store = str(source.get("store") or "").lower() or (
                    bucket_store if cloud == "kubernetes" else "")
                prefix = _STORE_SCHEMES.get(store, scheme) if store else scheme
                if store and store not in _STORE_SCHEMES:
                    raise unsupported(cloud, f"file_mounts {dest!r} (store: {store})",
                                      "use store: s3 or gcs")
                url = f"{prefix}{source['name']}"
            if not isinstance(url, str):
                raise unsupported(cloud, f"file_mounts {dest!r}", "give a source or a name")
            source = url
        source = str(source)
        if "://" in source:
            # A Kubernetes pod reads either kind of bucket with its ServiceAccount's
            # credentials; a VM reads its own cloud's buckets with its role.
            allowed = tuple(_BUCKET_SCHEMES.values()) if cloud == "kubernetes" else (scheme,)
            if not source.startswith(allowed):
                raise unsupported(
                    cloud, f"file_mounts {dest!r} from {source}",
                    f"copy it to a {' or '.join(allowed)} bucket and mount that",
                )
            downloads.append(Download(source, dest, "tree"))
            continue
        base = Path(task.source).parent if task.source and Path(task.source).is_file() \
            else project_dir
        path = (base / Path(source).expanduser()).resolve()
        key = resource_name(f"{len(uploads)}-{Path(source).name or 'root'}", max_len=40)
        what = "workdir" if dest == replica_workdir(cloud) else f"file_mounts {dest!r}"
        if not path.exists() and not offline_plan():
            raise PlacementError(
                f"{task.source}: {what}: local path {source!r} does not exist (resolved to "
                f"{path} next to the service YAML); create it or fix the path"
            )
        if not path.exists():
            pulumi.log.warn(f"{what}: {source!r} does not exist (resolved to {path}); "
                            "`pulumi preview` and `pulumi up` will refuse it")
        is_dir = path.is_dir() or not path.exists()
        suffix = (".tgz" if cloud == "kubernetes" else ".zip") if is_dir else ""
        uploads.append(LocalUpload(f"{key}{suffix}", path, dest, is_dir))
    return tuple(uploads), tuple(downloads)


def offline_plan() -> bool:
    """True under Pulumi's mock runtime (``skyform synth``, the tests): the plan is made
    offline, so a missing local path is a warning there (the corpus's paths are relative to
    the SkyPilot repository); a real ``pulumi preview``/``up`` refuses it."""
    from pulumi.runtime import mocks, settings

    return isinstance(settings.get_monitor(), mocks.MockMonitor)


def build_plan(task: ServiceTask, settings: StackSettings, *, stack: str,
               project_dir: Path) -> DeploymentPlan:
    """Resolve the task for the stack's cloud (raises ``PlacementError`` when it can't)."""
    cloud = settings.cloud
    task = with_stack_policy(task, settings)
    placement = catalog.place(task, cloud, pin=settings.candidate,
                              accelerator_label=settings.accelerator_label)
    candidate = task.candidates[placement.candidate_index]
    offer = placement.offer
    controller = catalog.controller_offer(cloud)
    region = settings.region or candidate.region or offer.region
    image, docker_image = choose_image(candidate, region, cloud)
    uploads, downloads = file_transfers(task, cloud, project_dir, settings.bucket_store)
    files = files_digest(uploads)
    digest = replica_digest(task.to_json(secret_refs=True), files)
    fleet, generation = plan_fleet(task, candidate, settings, previous_fleet(settings), digest)
    name = resource_name(task.name or Path(task.source).stem)
    zone = settings.zone or candidate.zone
    # The home location: where the spot/ondemand groups always ran. Its zone is the one
    # their instances name (AWS without skyform:zone names none: AWS picks one).
    home = Site(cloud, region if cloud != "kubernetes" else "",
                zone or (default_zone(cloud, region) if cloud == "gcp" else None),
                placement.candidate_index, offer.accelerator, offer.instance_type,
                offer.hourly_usd(candidate.spot))
    locations = candidate_locations(task, cloud, home=home, regions=settings.regions,
                                    zones=settings.zones, zone_pin=settings.zone,
                                    accelerator_label=settings.accelerator_label)
    if cloud == "aws":
        locations = [loc for loc in locations
                     if aws_image_for(task, settings, loc.site, region) != MISSING_IMAGE]
    if not any(loc.site.key == home.key for loc in locations):
        # Always on the menu, first of its market: the stack's replicas keep a place to go.
        markets = (True, False) if candidate.spot else (False,)
        for spot in markets:
            at = next((i for i, loc in enumerate(locations) if loc.spot == spot),
                      len(locations))
            locations.insert(at, CandidateLocation(
                dataclasses.replace(home, price=offer.hourly_usd(spot)), spot))
    groups = replica_groups(fleet, generation, candidate.spot, home,
                            placed_offer(task, cloud, offer, settings.accelerator_label))
    # AWS: the AMI of every location a group may run at (an AMI id is regional).
    site_images = {site.key: aws_image_for(task, settings, site, region) for site in (
        *(loc.site for loc in locations), *(g.site for g in groups if g.placed and g.site)
    )} if cloud == "aws" else {}
    envs = {**task.envs, **settings.envs}
    return DeploymentPlan(
        name=name, stack=stack, cloud=cloud, task=task,
        candidate_index=placement.candidate_index, candidate=candidate, offer=offer,
        controller_offer=controller, groups=groups,
        region=region, zone=zone, envs=envs,
        secret_keys=settings.secret_keys, allowed_cidrs=settings.allowed_cidrs,
        ssh_cidrs=settings.ssh_cidrs, admin_cidrs=settings.admin_cidrs,
        labels=dict(candidate.labels or {}),
        backend_url=settings.backend_url,
        project_dir=project_dir,
        pulumi_credential_names=tuple(
            name for name, value in (("PULUMI_CONFIG_PASSPHRASE", settings.pulumi_passphrase),
                                     ("PULUMI_ACCESS_TOKEN", settings.pulumi_access_token))
            if value is not None),
        namespace=settings.namespace or name, storage_classes=settings.storage_classes,
        accelerator_label=settings.accelerator_label, price_table=settings.price_table,
        service_account=settings.service_account,
        uploads=uploads, remote_downloads=downloads, image=settings.image_id or image,
        docker_image=docker_image, update_mode=settings.update_mode, fleet=fleet,
        generation=generation, digest=digest, files_digest=files, admission=settings.admission,
        locations=tuple(locations), home=home, placer=placer_name(task),
        site_images=site_images,
        controller_replicas=settings.controller_replicas,
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


def pulumi_credentials(settings: StackSettings) -> pulumi.Output[dict[str, str]] | None:
    """``skyform:pulumiPassphrase`` / ``pulumiAccessToken`` as the environment the
    controller's own ``pulumi up`` needs, one secret Output (None when neither is set)."""
    named = {"PULUMI_CONFIG_PASSPHRASE": settings.pulumi_passphrase,
             "PULUMI_ACCESS_TOKEN": settings.pulumi_access_token}
    given = {k: v for k, v in named.items() if v is not None}
    if not given:
        return None
    keys = list(given)
    return pulumi.Output.secret(pulumi.Output.all(*given.values()).apply(
        lambda values: dict(zip(keys, values, strict=True))))


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
    controller_replicas: int
    fleet: dict[str, Any]
    locations: list[dict[str, Any]]
    hourly_cost: float | str
    replicas: pulumi.Output[list[dict[str, Any]]]
    replica_group_urns: pulumi.Output[list[str]]
    admin_url: pulumi.Output[str]
    admin_token: pulumi.Output[str]
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
                                    tls_pem(args.task, args.project_dir),
                                    pulumi_credentials(args.settings),
                                    args.settings.api_key_digests)
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
        self.controller_replicas = plan.controller_replicas
        # The counts this update applies, per generation: the next `up` outside the
        # controller reads them back (previous_fleet), and the agent starts from them.
        self.fleet = plan.fleet.to_json()
        # The placer's menu (components/locations.py): where the agent may place replicas,
        # sorted and priced; ``first`` marks the home location the first deploy uses.
        self.locations = [{**loc.to_json(), "first": plan.home is not None
                           and loc.site.key == plan.home.key}
                          for loc in plan.locations]
        self.hourly_cost = plan.hourly_cost()
        self.replicas = pulumi.Output.all(*deployment.replicas).apply(list)
        self.replica_group_urns = pulumi.Output.all(
            *[g.urn for g in [*deployment.groups, *deployment.targets]]).apply(
            list
        )
        self.admin_url = deployment.admin_url
        # The agent's bearer token, for `skyform status --stack`: a secret output (encrypted
        # in the state, masked by `pulumi stack output`).
        self.admin_token = pulumi.Output.secret(token)
        self.register_outputs({
            "endpoint": self.endpoint,
            "controllerAddress": self.controller_address,
            "replicaCount": self.replica_count,
            "controllerReplicas": self.controller_replicas,
            "fleet": self.fleet,
            "locations": self.locations,
            "hourlyCost": self.hourly_cost,
            "replicas": self.replicas,
            "replicaGroupUrns": self.replica_group_urns,
            "adminUrl": self.admin_url,
            "adminToken": self.admin_token,
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
