"""What every cloud module shares: the resolved deployment plan and small pure helpers.

``SkyService`` resolves a service task plus stack settings into a ``DeploymentPlan`` (plain
values) and ``DeploymentSecrets`` (secret Outputs); each cloud module turns those into
resources and returns a ``CloudDeployment``. Nothing here creates a resource.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

from components.admission import AdmissionSettings
from components.bundle import Bundle, bundle_file, project_bundle, tree
from components.catalog import MachineOffer
from components.catalog.data import GKE_ACCELERATOR_LABEL
from components.errors import PlacementError
from components.spec import Candidate, ServiceTask, TargetCloud
from components.startup import (
    PULUMI_CREDENTIAL_FILES,
    PULUMI_CREDENTIALS_DIR,
    TLS_CERTFILE,
    TLS_KEYFILE,
    Download,
)
from lb_agent.contract import (
    AGENT_OWNED_KEYS,
    KINDS,
    AdminListen,
    AdmissionConfig,
    AgentConfigFile,
    Fleet,
    LeaseConfig,
    Listen,
    PolicyParams,
    ProbeConfig,
    ProxyConfig,
    Site,
    TLSFiles,
    constants,
    credentials,
    dump,
    parse_group,
    parse_group_key,
)

#: The ``hourlyCost`` output when no price is known.
UNKNOWN_COST = "unknown"

#: The Pulumi CLI version the controller installs (pinned so a redeploy is reproducible).
PULUMI_CLI_VERSION = "3.260.0"

#: Where a replica's workdir lands on the VM (SkyPilot uses ~/sky_workdir).
REPLICA_WORKDIR = "/opt/skyform/workdir"
#: ... and in a Kubernetes pod: an emptyDir of its own (/opt/skyform is the read-only
#: ConfigMap of the start-up files there).
K8S_WORKDIR = "/opt/sky_workdir"


def replica_workdir(cloud: str) -> str:
    """Where the workdir lands on a replica of ``cloud``."""
    return K8S_WORKDIR if cloud == "kubernetes" else REPLICA_WORKDIR

#: The agent's files on the controller.
AGENT_TOKEN_FILE = "/run/skyform/agent-token"
#: The service secrets (JSON ``{NAME: value}``) the controller fetches from the secret store at
#: boot; the agent fills ``${NAME}`` in the readiness probe from it.
SERVICE_SECRETS_FILE = "/run/skyform/service-secrets.json"
AGENT_STATE_FILE = "/var/lib/skyform/agent.db"
PROJECT_DIR_ON_CONTROLLER = "/opt/skyform/project"


#: AWS: what ``DeploymentPlan.site_images`` holds for a region the pinned machine images
#: do not cover (an AMI id exists in one region only).
MISSING_IMAGE = "<no image in this region>"


@dataclass(frozen=True)
class GroupPlan:
    """One replica group of one generation (lb_agent.control.fleet), replicas indexed 0..count-1.

    ``group`` is its name (``spot``/``ondemand`` in generation 1, ``spot-g2``... after).
    A *frozen* group belongs to an older generation than the stack's YAML: its replicas keep
    the spec they were launched with (the cloud module ignores changes to it) until the
    agent's rollout has drained and removed them."""

    group: str
    spot: bool
    count: int
    replica_id_base: int
    generation: int = 1
    frozen: bool = False
    #: Where the group runs (components/locations.py): region, zone, and the machine of its
    #: candidate; None for a plan made without locations (the plan's own region and offer).
    site: Site | None = None
    offer: MachineOffer | None = None
    #: Indices declared nowhere (a preempted VM replica whose replacement went elsewhere).
    skip: frozenset[int] = frozenset()

    @property
    def placed(self) -> bool:
        """True for a group placed away from the home location (``spot-<site key>``)."""
        parsed = parse_group_key(self.group)
        return parsed is not None and parsed[2] is not None

    def indices(self) -> list[int]:
        """The replica indices the group declares: 0..count-1 without ``skip``."""
        return [i for i in range(self.count) if i not in self.skip]


@dataclass(frozen=True)
class LocalUpload:
    """A local file or folder (workdir, file mount) the program uploads to the object store."""

    key: str
    path: Path
    dest: str
    is_dir: bool


@dataclass(frozen=True)
class DeploymentPlan:
    """A service task resolved for one cloud: candidate, machine, groups and settings."""

    name: str
    stack: str
    cloud: TargetCloud
    task: ServiceTask
    candidate_index: int
    candidate: Candidate
    offer: MachineOffer
    controller_offer: MachineOffer
    groups: tuple[GroupPlan, ...]
    region: str
    zone: str | None
    envs: Mapping[str, str]
    secret_keys: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    ssh_cidrs: tuple[str, ...]
    labels: Mapping[str, str]
    backend_url: str | None
    namespace: str
    #: AWS/GCP: CIDRs allowed to the agent's admin port (default: none from outside).
    admin_cidrs: tuple[str, ...] = ()
    #: The Pulumi project directory the program runs in (what the project bundle packs).
    project_dir: Path = field(default_factory=Path)
    #: Names (never values) of the controller's Pulumi credentials that the stack sets:
    #: ``PULUMI_CONFIG_PASSPHRASE``, ``PULUMI_ACCESS_TOKEN``.
    pulumi_credential_names: tuple[str, ...] = ()
    storage_classes: Mapping[str, str] = field(default_factory=dict)
    #: Kubernetes: the GPU node label key (``skyform:acceleratorLabel``) and the price table.
    accelerator_label: str = GKE_ACCELERATOR_LABEL
    price_table: str = "none"
    #: Kubernetes: the ServiceAccount replica pods run as (``skyform:serviceAccount``).
    service_account: str = "default"
    uploads: tuple[LocalUpload, ...] = ()
    remote_downloads: tuple[Download, ...] = ()
    #: A machine image (AMI id, GCP image) from ``image_id``; None means the GPU-ready default.
    image: str | None = None
    #: A container image from ``image_id: docker:<image>``.
    docker_image: str | None = None
    #: ``skyform:updateMode``: how the agent rolls out a changed service.
    update_mode: str = "rolling"
    #: Admission at the endpoint (plain settings; the key digests are in DeploymentSecrets).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: Every generation's counts as planned (exported as ``fleet``; the agent reads it), and
    #: the generation and replica-spec digest of the stack's YAML (the agent launches there).
    fleet: Fleet = field(default_factory=Fleet)
    generation: int = 1
    digest: str = ""
    #: ``files_digest(uploads)``: the content of the local workdir and file mounts.
    files_digest: str = ""
    #: Every location the agent's placer may choose (components/locations.py, sorted and
    #: priced), the home location (where the ``spot``/``ondemand`` groups run) and the
    #: placement policy (``skyform``, ``spothedge`` for ``spot_placer: dynamic_fallback``).
    locations: tuple[Any, ...] = ()
    home: Site | None = None
    placer: str = "skyform"
    #: AWS: the AMI per location key (None: the region's default image, looked up there;
    #: ``service.MISSING_IMAGE``: the pinned images have none in that region).
    site_images: Mapping[str, str | None] = field(default_factory=dict)
    #: How many load balancers run the agent (``skyform:controllerReplicas``, resolved by
    #: components/stack_config.py); one of them, elected by the lease, is the controller.
    controller_replicas: int = 1

    def group_offer(self, group: GroupPlan) -> MachineOffer:
        return group.offer or self.offer

    def group_region(self, group: GroupPlan) -> str:
        """A home group's inputs are exactly what they were before locations existed."""
        return group.site.region if group.placed and group.site is not None \
            and group.site.region else self.region

    def group_zone(self, group: GroupPlan) -> str | None:
        return group.site.zone if group.placed and group.site is not None else self.zone

    @property
    def regions(self) -> tuple[str, ...]:
        """Every region a group uses, the plan's own first."""
        return tuple(dict.fromkeys([self.region, *(self.group_region(g) for g in self.groups)]))

    def group_cap(self, group: str) -> int:
        """The most replicas ``group`` may ever have (the agent's rule, one place)."""
        params = PolicyParams.from_policy(self.task.service.replica_policy.to_json())
        kind = (parse_group(group) or (group, 1))[0]
        return params.group_caps(uses_spot=self.candidate.spot)[kind]

    @property
    def service_port(self) -> int:
        return self.task.service_port

    @property
    def replica_ports(self) -> tuple[int, ...]:
        ports = set(self.candidate.port_numbers()) | {self.task.service_port}
        return tuple(sorted(ports))

    @property
    def num_gpus(self) -> int:
        count = self.offer.accelerator_count or 0
        return int(-(-count // 1)) if count else 0

    @property
    def lb_port(self) -> int:
        return int(constants.LOAD_BALANCER_PORT)

    @property
    def admin_port(self) -> int:
        return int(constants.ADMIN_PORT)

    @property
    def scheme(self) -> str:
        return "https" if self.task.service.tls is not None else "http"

    @property
    def disk_tier(self) -> str:
        """SkyPilot's effective tier: unset means ``medium``."""
        return (self.candidate.disk_tier or "medium").lower()

    @property
    def replica_count(self) -> int:
        return sum(len(g.indices()) for g in self.groups)

    def hourly_cost(self) -> float | str:
        """Replicas (every node of each) at their market's price plus the on-demand
        controllers, one per load balancer (catalog estimate; the network load balancer of
        several is not priced); ``"unknown"`` on Kubernetes without a price table, or when
        the catalog has no price for the machine."""
        if self.cloud == "kubernetes" and self.price_table == "none":
            return UNKNOWN_COST
        total = self.controller_offer.ondemand_hourly_usd
        if total is not None:
            total *= self.controller_replicas
        for group in self.groups:
            price = self.group_offer(group).hourly_usd(group.spot)
            if price is None or total is None:
                return UNKNOWN_COST
            total += len(group.indices()) * self.task.num_nodes * price
        return UNKNOWN_COST if total is None else round(total, 4)


def stack_identity(plan: DeploymentPlan) -> str:
    """A digest naming this deployment uniquely: the backend, the Pulumi organization, project
    and stack (two stacks named ``prod`` in one account, from different projects or backends,
    differ). AWS tags and conditions its grants on it (``skyform:stack-id``)."""
    key = "|".join([plan.backend_url or "", pulumi.get_organization(), pulumi.get_project(),
                    plan.stack])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class StateObjects:
    """This stack's objects in a bucket state backend (``s3://`` or ``gs://``), as the DIY
    backend lays them out (project-scoped layout, ``.pulumi/meta.yaml`` version 1): the stack
    file and its ``.bak``, its history, backups and locks. Nothing of another stack."""

    bucket: str
    #: Object-name prefixes (the bucket's path prefix included) the controller reads and
    #: writes; each ends where another stack's names cannot continue it.
    prefixes: tuple[str, ...]
    #: Objects it only reads (the backend's layout marker).
    read_only: tuple[str, ...]


def state_objects(backend_url: str | None, project: str, stack: str) -> StateObjects | None:
    """``StateObjects`` of ``backend_url`` (None when it is not a bucket backend)."""
    if not backend_url or not backend_url.startswith(("s3://", "gs://")):
        return None
    rest = backend_url.split("://", 1)[1].split("?", 1)[0]
    bucket, _, path = rest.partition("/")
    base = f"{path.strip('/')}/.pulumi/" if path.strip("/") else ".pulumi/"
    return StateObjects(
        bucket=bucket,
        prefixes=(f"{base}stacks/{project}/{stack}.json",
                  f"{base}history/{project}/{stack}/",
                  f"{base}backups/{project}/{stack}/",
                  f"{base}locks/{project}/{stack}/"),
        read_only=(f"{base}meta.yaml",),
    )


def replica_credentials(plan: DeploymentPlan, token: pulumi.Output[str]
                        ) -> pulumi.Output[dict[str, str]]:
    """Each replica kind's registration credential (``lb_agent.credentials``; it covers every
    generation of the kind, so a rollout changes none), by kind: what the replicas get
    instead of the agent token. A secret Output, as the token is."""
    made: pulumi.Output[dict[str, str]] = token.apply(
        lambda t: {k: credentials.group_credential(t, k) for k in KINDS})
    return pulumi.Output.secret(made)


@dataclass(frozen=True)
class DeploymentSecrets:
    """The secret inputs: the agent token and the service secrets (both Pulumi secrets)."""

    agent_token: pulumi.Output[str]
    #: Service secrets (YAML values merged with ``skyform:secrets``); None when there are none.
    service_secrets: pulumi.Output[dict[str, str]] | None
    #: ``service.tls`` as ``{"keyfile": PEM, "certfile": PEM}``; None without TLS.
    tls: pulumi.Output[dict[str, str]] | None = None
    #: What the controller's own ``pulumi up`` authenticates with:
    #: ``{"PULUMI_CONFIG_PASSPHRASE": ..., "PULUMI_ACCESS_TOKEN": ...}`` (each when set).
    pulumi_credentials: pulumi.Output[dict[str, str]] | None = None
    #: ``skyform:apiKeys`` as the agent's ``admission.api_key_digests`` entries (digests, no
    #: key), still a secret; None when the stack sets no keys.
    api_key_digests: pulumi.Output[list[dict[str, Any]]] | None = None


@dataclass
class CloudDeployment:
    """What a cloud module returns to ``SkyService``."""

    endpoint: pulumi.Output[str]
    controller_address: pulumi.Output[str]
    replicas: list[pulumi.Output[dict[str, Any]]]
    groups: list[pulumi.ComponentResource]
    #: The agent's admin API (``skyform status --stack``): the controller's admin port,
    #: reachable from ``skyform:adminCidrs`` only (Kubernetes: the in-cluster Service).
    admin_url: pulumi.Output[str]
    #: More components the agent's targeted ``up`` targets besides the groups (AWS: the
    #: replica regions, whose networks it creates when it first places a replica there).
    targets: list[pulumi.ComponentResource] = field(default_factory=list)


_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


def resource_name(raw: str, *, max_len: int = 30) -> str:
    """A name valid for every cloud: lower-case letters, digits and dashes, starts with a letter."""
    name = _NAME_BAD.sub("-", raw.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"svc-{name}".rstrip("-")
    return name[:max_len].rstrip("-")


def gcp_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """GCP/Kubernetes-safe labels: lower-case ``[a-z0-9_-]``, at most 63 characters, keys
    starting with a letter."""
    out: dict[str, str] = {}
    for key, value in labels.items():
        k = _LABEL_BAD.sub("_", key.lower())[:63]
        if not k or not k[0].isalpha():
            k = f"l_{k}"[:63]
        out[k] = _LABEL_BAD.sub("_", str(value).lower())[:63]
    return out


_K8S_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_K8S_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def is_k8s_label_key(key: str) -> bool:
    """A valid Kubernetes label key: ``[prefix/]name``, the name at most 63 characters."""
    return bool(_K8S_KEY.match(key)) and len(key.rsplit("/", 1)[-1]) <= 63


def k8s_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Kubernetes labels: valid keys kept (``app.kubernetes.io/part-of``), others and values
    reduced to ``[A-Za-z0-9_.-]``, at most 63 characters, alphanumeric at both ends."""
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not is_k8s_label_key(key):
            key = _K8S_VALUE_BAD.sub("-", key)[:63].strip("-_.") or "label"
        out[key] = _K8S_VALUE_BAD.sub("-", str(value))[:63].strip("-_.")
    return out


def agent_config(plan: DeploymentPlan, *, admin_host: str = "0.0.0.0",
                 token_env: str | None = None, state_file: str = AGENT_STATE_FILE,
                 api_keys_file: str | None = None,
                 api_key_digests: list[dict[str, Any]] | None = None,
                 lease: LeaseConfig | None = None) -> AgentConfigFile:
    """The controller agent's config file (its fields: docs/agent.md, "The config file"),
    typed (lb_agent.contract.AgentConfigFile): built whole here, never changed afterwards;
    ``dump`` gives what the controller's file holds.

    The token comes from ``token_env`` when given (a Kubernetes Secret in the environment),
    else from the file the VM controller fetches (AGENT_TOKEN_FILE). ``api_keys_file`` (a
    mounted file of keys) and ``api_key_digests`` (the keys' digests, known once the stack's
    secrets resolve) add to the admission section the stack settings give. ``lease``: the
    leader lease several controllers share (components/clouds/controllers.py); without it the
    file has no ``lease:`` section (one controller, always the leader)."""
    deployer: dict[str, Any] | None = None
    if plan.backend_url:
        deployer = {
            "kind": "pulumi",
            "work_dir": PROJECT_DIR_ON_CONTROLLER,
            "stack": plan.stack,
            "env": {"PULUMI_BACKEND_URL": plan.backend_url},
            # New replicas go to this generation's groups (lb_agent.control.fleet).
            "generation": plan.generation,
            "digest": plan.digest,
            # Where the placer may put replicas (lb_agent.control.placement), and where the
            # `spot`/`ondemand` groups run.
            "cloud": plan.cloud,
            "placer": plan.placer,
            "locations": [loc.to_json() for loc in plan.locations],
            "home": None if plan.home is None else plan.home.to_json(),
        }
        files = {name: f"{PULUMI_CREDENTIALS_DIR}/{PULUMI_CREDENTIAL_FILES[name]}"
                 for name in plan.pulumi_credential_names}
        if files:
            # The deployer reads the values from these files; they are never written here.
            deployer["env_files"] = files
    policy = plan.task.service.replica_policy
    optional: dict[str, Any] = {}
    if plan.task.service.tls is not None:
        optional["tls"] = TLSFiles(keyfile=TLS_KEYFILE, certfile=TLS_CERTFILE)
    if has_service_secrets(plan):
        # Secret values in the probe (headers, path, post_data) are sent as ``${NAME}``; the
        # agent reads the values from SERVICE_SECRETS_FILE, which the controller fetches.
        optional["secrets_file"] = SERVICE_SECRETS_FILE
    sections = plan.admission.agent_sections()
    admission: dict[str, Any] = dict(sections.get("admission") or {})
    if api_keys_file:
        admission["api_keys_file"] = api_keys_file
    if api_key_digests:
        admission["api_key_digests"] = api_key_digests
    if admission:
        optional["admission"] = AdmissionConfig.model_validate(admission)
    if "proxy" in sections:
        optional["proxy"] = ProxyConfig.model_validate(sections["proxy"])
    if lease is not None:
        optional["lease"] = lease
    if token_env is not None:
        optional["token_env"] = token_env
    else:
        optional["token_file"] = AGENT_TOKEN_FILE
    service = plan.task.to_json(secret_refs=True)
    if plan.files_digest:
        # The files' content, so that the agent sees edited files as a new version too.
        service["files_digest"] = plan.files_digest
    if service.get("source"):
        # Relative to the project: the same config wherever the project is (the user's
        # checkout, the controller's bundle), so the controller's own `up` diffs clean.
        source = Path(service["source"])
        if source.is_absolute() and source.is_relative_to(plan.project_dir.resolve()):
            service["source"] = str(source.relative_to(plan.project_dir.resolve()))
    return AgentConfigFile(
        **optional,
        service=service,
        public=Listen(host="0.0.0.0", port=plan.lb_port),
        admin=AdminListen(host=admin_host, port=plan.admin_port),
        policy=plan.task.load_balancing_policy,
        state_file=state_file,
        replicas=[],
        probe=ProbeConfig(interval_seconds=constants.ENDPOINT_PROBE_INTERVAL_SECONDS),
        # No service version here: the agent writes it into the stack's fleet, and a version
        # in this file would change the controller's config after every rollout. A controller
        # that lost its state reads it from the fleet (lb_agent.control.deployers.pulumi).
        autoscaler={"enabled": policy.autoscaling or policy.use_ondemand_fallback,
                    "update_mode": plan.update_mode},
        deployer=deployer,
    )


#: Where AWS and GCP keep the project bundle in the stack's files bucket: only the controller
#: may read this prefix (the replicas read their upload keys, never the bundle, which holds the
#: service YAML and so its secret values).
BUNDLE_PREFIX = "controller/"


def bundle_key(digest: str) -> str:
    """The bundle's object key: content-addressed, so a new bundle is a new object (the old one
    is deleted after the controller config names the new one) and an unchanged one no diff."""
    return f"{BUNDLE_PREFIX}bundle-{digest}.tgz"


def bundle_asset(plan: DeploymentPlan, bundle: Bundle) -> pulumi.FileAsset:
    """The bundle as a file asset to upload: ``.skyform/bundles/<stack>/<digest>.tgz``,
    relative to the project directory, so the input is the same string on the user's machine
    and on the controller. The engine (and the provider it starts) resolves a relative asset
    path against its working directory, which is the project directory both under ``pulumi``
    and under the Automation API workspace (``work_dir``), whatever the directory of the
    process that runs an inline program (pulumi/pulumi#5578)."""
    path = bundle_file(plan.project_dir, plan.stack, bundle)
    return pulumi.FileAsset(str(path.relative_to(plan.project_dir)))


def controller_config(plan: DeploymentPlan, bundle_url: str, digest: str,
                      api_key_digests: list[dict[str, Any]] | None = None,
                      lease: LeaseConfig | None = None) -> dict[str, Any]:
    """What a VM controller takes per deploy, kept in the secret store and polled by the
    controller, so that a commit or YAML edit never changes its user data (which would replace
    it): the agent config (accepting the keys of ``api_key_digests``) and the project bundle
    (its object URL and sha256)."""
    agent = agent_config(plan, api_key_digests=api_key_digests, lease=lease)
    return {"agent": dump(agent), "bundle": {"url": bundle_url, "sha256": digest}}


def controller_config_secret(plan: DeploymentPlan, bundle_url: pulumi.Input[str], digest: str,
                             credentials: pulumi.Output[dict[str, str]] | None,
                             api_key_digests: pulumi.Output[list[dict[str, Any]]] | None = None,
                             lease: pulumi.Output[LeaseConfig] | None = None
                             ) -> pulumi.Output[str]:
    """``controller_config`` as the secret store's JSON string, with the controller's Pulumi
    credentials (``pulumi_credentials``: variable -> value) when the stack sets them (the
    controller writes those into 0400 files under PULUMI_CREDENTIALS_DIR), and the agent
    config accepting the API keys' digests (and sharing ``lease`` with the other controllers,
    when there are several). A secret Output."""
    creds: pulumi.Output[dict[str, str]] = (
        credentials if credentials is not None else pulumi.Output.from_input({}))
    keys: pulumi.Output[list[dict[str, Any]]] = (
        api_key_digests if api_key_digests is not None else pulumi.Output.from_input([]))

    def text(args: list[Any]) -> str:
        url, values, digests, shared = args
        config = controller_config(plan, url, digest, digests, shared)
        if values:
            config["pulumi_credentials"] = {
                PULUMI_CREDENTIAL_FILES[k]: v for k, v in values.items()}
        return json.dumps(config, sort_keys=True)

    return pulumi.Output.secret(pulumi.Output.all(bundle_url, creds, keys, lease).apply(text))


def stack_file(project_dir: Path, stack: str) -> Path:
    """The stack's config file, under the project's ``stackConfigDir`` (beside the program
    when there is no Pulumi.yaml: ``skyform synth`` from an installed package)."""
    pulumi_yaml = project_dir / "Pulumi.yaml"
    project = (yaml.safe_load(pulumi_yaml.read_text()) or {}) if pulumi_yaml.is_file() else {}
    return project_dir / str(project.get("stackConfigDir") or ".") / f"Pulumi.{stack}.yaml"


def plan_bundle(plan: DeploymentPlan) -> Bundle:
    """The project bundle the controller runs its ``up`` from (components/bundle.py): the
    project, this stack's config file, the service YAML, its local files and TLS files."""
    local = [Path(plan.task.source), *(u.path for u in plan.uploads)]
    tls = plan.task.service.tls
    if tls is not None:
        local += [(plan.project_dir / Path(name).expanduser()) for name in
                  (tls.keyfile, tls.certfile)]
    bundle = project_bundle(plan.project_dir, stack_file=stack_file(plan.project_dir, plan.stack),
                            local_paths=local, agent_keys=AGENT_OWNED_KEYS)
    for path in bundle.outside:
        pulumi.log.warn(f"{path} is outside the project directory {plan.project_dir}: the "
                        "controller's own `pulumi up` will not have it; move it into the project")
    return bundle


def upload_source(plan: DeploymentPlan, upload: LocalUpload) -> pulumi.Asset | pulumi.Archive:
    """What the object store takes for a local upload: a folder as an archive, a file as is.
    A path inside the project is given relative to it (as ``bundle_asset`` does), so the input
    is the same on the user's machine and in the controller's copy of the project."""
    path = upload.path
    root = plan.project_dir.resolve()
    text = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return pulumi.FileArchive(text) if upload.is_dir else pulumi.FileAsset(text)


def files_digest(uploads: tuple[LocalUpload, ...]) -> str:
    """The content of the service's local workdir and file mounts as one sha256 ("" with
    none): part of a generation's identity (lb_agent.control.fleet.replica_digest), so edited files
    are a new generation even when the YAML is not."""
    if not uploads:
        return ""
    h = hashlib.sha256()
    for upload in uploads:
        h.update(f"{upload.dest}\0".encode())
        for name, path in tree(upload.path) if upload.path.exists() else ():
            h.update(f"{name}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def has_service_secrets(plan: DeploymentPlan) -> bool:
    """True when the service has secrets (in the YAML or ``skyform:secrets``)."""
    return bool(plan.task.secrets or plan.secret_keys)


def downloads_for(plan: DeploymentPlan, bucket_url: str | None) -> tuple[Download, ...]:
    """Every boot-time download: uploaded local paths (under ``bucket_url``), remote mounts,
    and a git workdir."""
    out: list[Download] = []
    workdir = plan.task.workdir
    if isinstance(workdir, Mapping) and workdir.get("url"):
        out.append(Download(str(workdir["url"]), replica_workdir(plan.cloud), "git",
                            workdir.get("ref")))
    for upload in plan.uploads:
        assert bucket_url is not None, "uploads need a bucket"
        out.append(Download(f"{bucket_url}/{upload.key}", upload.dest,
                            "archive" if upload.is_dir else "file"))
    out.extend(plan.remote_downloads)
    return tuple(out)


def sdk_args(value: Any) -> Any:
    """A plain nested dict for an SDK argument the SDK declares as a TypedDict.

    The SDK accepts plain dicts (snake_case keys); mypy cannot match nested literals built by
    helpers against those TypedDicts, so they pass through this typed-as-Any identity."""
    return value


def replica_entry(plan: DeploymentPlan, group: GroupPlan, index: int, address: str
                  ) -> dict[str, Any]:
    """One item of the ``replicas`` stack output, with where the replica runs."""
    offer = plan.group_offer(group)
    return {"index": index, "group": group.group, "spot": group.spot,
            "instanceType": offer.instance_type, "address": address,
            "accelerator": offer.accelerator, "region": plan.group_region(group) or None,
            "zone": plan.group_zone(group)}


def unsupported(cloud: str, what: str, hint: str) -> PlacementError:
    return PlacementError(f"{what} is not supported on {cloud} yet: {hint}")
