"""Kubernetes: a SkyServe service as StatefulSets, a NetworkPolicy and a controller Deployment.

Components (children of ``skyform:index:SkyService``):

- ``skyform:kubernetes:Access``: the namespace's Secret (agent token, service secrets, the
  API keys' digests).
- ``skyform:kubernetes:Firewall``: a NetworkPolicy so replicas accept traffic only from the
  controller pods (and the admin port only from replicas).
- ``skyform:kubernetes:Controller``: a ServiceAccount with a Role limited to this namespace's
  StatefulSets (and their scale), a Deployment running ``skyform agent`` and a Service of type
  LoadBalancer for the LB port (the admin port has a ClusterIP Service of its own). With
  ``skyform:controllerReplicas`` >= 2 (the default) the Deployment runs that many load
  balancers (``controller_ha``): spread over nodes and zones, a PodDisruptionBudget, a rolling
  update that keeps pods serving, each pod its own state file, and a ``coordination.k8s.io``
  Lease the agents elect the controller with (lb_agent/control/leases/kubernetes.py).
- ``skyform:kubernetes:Files``: the workdir and local file mounts as a ConfigMap of tar.gz
  archives, checked by digest at start-up; the digest is a pod-template annotation, so a
  change in the files rolls the replicas (StatefulSet rolling update).
- ``skyform:kubernetes:ReplicaGroup``: a StatefulSet per group (pods ``<name>-<group>-<i>``;
  scale-down removes the highest ordinal first), a headless Service and the start-up files.
  Multi-node replicas (``num_nodes > 1``) get a StatefulSet of ``num_nodes`` pods per replica
  (``<name>-<group>-<i>-<rank>``, rank 0 the head) and its headless Service, which publishes
  not-ready pods so the nodes find each other's IPs (``SKYPILOT_NODE_IPS``) at start-up. A
  StatefulSet per replica rather than a LeaderWorkerSet: it is core Kubernetes (no CRD or
  controller to install, kubernetes-validate checks it), gives stable ordinals and DNS names,
  and removing a replica deletes its whole set, so scale-down removes whole groups.

Accelerators: any name and count (no fixed catalog) become a device limit
(``nvidia.com/gpu``; ``amd.com/gpu``, ``aws.amazon.com/neuron``, ``google.com/tpu`` by
vendor) and a node selector on ``skyform:acceleratorLabel`` (GKE's
``cloud.google.com/gke-accelerator`` by default; see ``catalog.k8s_node_selector``).
Spot groups select and tolerate ``cloud.google.com/gke-spot``. Bucket mounts are copied
at start-up with the credentials of the pods' ServiceAccount (``skyform:serviceAccount``).
Disk: a volume claim of ``disk_size`` GiB mounted at /data; its storage class comes from
``skyform:storageClasses`` keyed by tier (``low``...``best``), else the cluster default.
Readiness: a GET probe becomes an ``httpGet`` probe (path, port, headers); a POST probe
becomes an ``exec`` probe that POSTs the JSON body with python3. SkyServe's
``initial_delay_seconds`` is a grace period for failures, not a delay, so the probe starts at
once (an unready pod simply gets no traffic) and the agent applies the grace period.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import catalog
from components.clouds import packing
from components.clouds.common import (
    K8S_WORKDIR,
    PULUMI_CLI_VERSION,
    PULUMI_CREDENTIAL_FILES,
    PULUMI_CREDENTIALS_DIR,
    CloudDeployment,
    DeploymentPlan,
    DeploymentSecrets,
    GroupPlan,
    agent_config,
    downloads_for,
    k8s_labels,
    plan_bundle,
    replica_credentials,
    replica_entry,
    sdk_args,
)
from components.errors import PlacementError
from components.startup import (
    TLS_CERTFILE,
    TLS_KEYFILE,
    ControllerBoot,
    ReplicaBoot,
    credential_kind,
    render_controller_script,
    replica_files,
)
from lb_agent.contract import CREDENTIAL_ENV, ONDEMAND, SPOT, LeaseConfig, dump, group_name

SPOT_LABEL = "cloud.google.com/gke-spot"
#: pulumi-kubernetes: do not wait for the object to become ready.
SKIP_AWAIT = "pulumi.com/skipAwait"
#: Default replica images: CUDA + Python for GPU replicas, slim Python for CPU replicas.
GPU_IMAGE = "nvcr.io/nvidia/pytorch:24.08-py3"
CPU_IMAGE = "python:3.11-slim-bookworm"
CONTROLLER_IMAGE = "python:3.11-slim-bookworm"
TOKEN_ENV = "SKYFORM_AGENT_TOKEN"
TOKEN_KEY = "agent-token"
TLS_KEY = "tls-key"
TLS_CERT = "tls-cert"
#: The service secrets as one JSON ``{NAME: value}`` key, mounted into the controller pod at
#: ``SERVICE_SECRETS_FILE`` (the agent fills ``${NAME}`` in the readiness probe from it).
SERVICE_SECRETS_KEY = "service-secrets.json"
#: ``skyform:apiKeys`` as the agent's ``api_key_digests`` JSON (digests only), a Secret key
#: mounted 0400 into the controller pod at API_KEYS_FILE (the agent's
#: ``admission.api_keys_file``): the agent config itself is a ConfigMap.
API_KEYS_KEY = "api-keys.json"
API_KEYS_FILE = "/run/skyform-api-keys/api-keys.json"
#: Where the controller pod mounts its ConfigMap (agent.json, controller.sh).
CONTROLLER_FILES_DIR = "/etc/skyform"
#: The installed project's interpreter (controller.sh installs it there).
PROJECT_PYTHON = "/opt/skyform/project/.venv/bin/python"
#: How often the pod's supervisor looks at its mounted files (the kubelet itself takes up to
#: about a minute to bring a changed Secret or ConfigMap into the pod).
SUPERVISOR_INTERVAL_SECONDS = 10
DATA_DIR = "/data"
#: The project bundle's Secret key and where the controller pod mounts it.
BUNDLE_KEY = "project.tgz"
BUNDLE_DIR = "/opt/skyform-bundle"
#: A Secret holds at most 1 MiB; base64 and metadata take their share.
MAX_BUNDLE_BYTES = 700 * 1024
#: Where the files ConfigMap (workdir and local file mounts) is mounted in a replica pod.
FILES_DIR = "/opt/skyform-files"
#: What a frozen replica group's StatefulSet keeps (lb_agent.control.fleet): the pod template and
#: the volume claims (immutable in Kubernetes: a change would replace the set).
FROZEN_SET_FIELDS = ("spec.template", "spec.volumeClaimTemplates")
#: Pod-template annotation holding the files' digest.
FILES_DIGEST_ANNOTATION = "skyform.dev/files-digest"


def _meta(plan: DeploymentPlan, name: str, **labels: str) -> Any:
    return {"name": name, "namespace": plan.namespace,
            "labels": k8s_labels({**plan.labels, "app.kubernetes.io/part-of": "skyform",
                                  "skyform-service": plan.name, **labels})}


def _selector(plan: DeploymentPlan, role: str, group: str | None = None) -> dict[str, str]:
    out = {"skyform-service": plan.name, "skyform-role": role}
    if group:
        out["skyform-group"] = group
    return out


def credential_key(kind: str) -> str:
    """The Secret key of a replica kind's registration credential."""
    return f"replica-credential-{kind}"


def _secret_env(plan: DeploymentPlan, secret_name: pulumi.Input[str],
                kind: str) -> list[dict[str, Any]]:
    """The kind's registration credential (never the agent token) and every service secret
    as env vars from the Secret."""
    return [
        {"name": CREDENTIAL_ENV, "value_from": {"secret_key_ref": {
            "name": secret_name, "key": credential_key(kind)}}},
        *[{"name": key, "value_from": {"secret_key_ref": {"name": secret_name, "key": key}}}
          for key in _secret_names(plan)],
    ]


def _credential_key(name: str) -> str:
    """The Secret key of a Pulumi credential (``PULUMI_CONFIG_PASSPHRASE`` -> ``pulumi-
    passphrase``)."""
    return f"pulumi-{PULUMI_CREDENTIAL_FILES[name]}"


def secret_object_name(plan: DeploymentPlan) -> str:
    """The Secret with the agent token, the service secrets and the Pulumi credentials."""
    return f"{plan.name}-secrets"


def _secret_names(plan: DeploymentPlan) -> list[str]:
    return sorted(set(plan.task.secrets) | set(plan.secret_keys))


def readiness_probe(plan: DeploymentPlan) -> dict[str, Any]:
    """The spec's readiness probe as a Kubernetes probe (see the module docstring)."""
    probe = plan.task.service.readiness_probe
    timing = {"period_seconds": 10, "timeout_seconds": max(1, int(probe.timeout_seconds)),
              "failure_threshold": 3}
    if probe.post_data is None:
        http: dict[str, Any] = {"path": probe.path, "port": plan.service_port}
        if probe.headers:
            http["http_headers"] = [{"name": k, "value": v} for k, v in probe.headers.items()]
        return {"http_get": http, **timing}
    body = probe.post_data if isinstance(probe.post_data, str) else json.dumps(probe.post_data)
    headers = {"Content-Type": "application/json", **dict(probe.headers or {})}
    # Python's urllib rather than curl: every default image has python3, slim ones lack curl.
    script = (
        "import json, sys, urllib.request; "
        "req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST', "
        "headers=json.loads(sys.argv[3])); "
        f"urllib.request.urlopen(req, timeout={int(probe.timeout_seconds)}).read()"
    )
    command = ["python3", "-c", script, f"http://127.0.0.1:{plan.service_port}{probe.path}",
               body, json.dumps(headers)]
    return {"exec_": {"command": command}, **timing}


@dataclass
class AccessArgs:
    plan: DeploymentPlan
    secrets: DeploymentSecrets


class Access(pulumi.ComponentResource):
    """The Secret holding the agent token and the service secrets."""

    secret_name: str

    def __init__(
        self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:Access", name, None, opts)
        plan = args.plan
        data: pulumi.Output[dict[str, str]] = pulumi.Output.all(
            args.secrets.agent_token, args.secrets.service_secrets, args.secrets.tls,
            args.secrets.pulumi_credentials, args.secrets.api_key_digests,
            replica_credentials(plan, args.secrets.agent_token),
        ).apply(lambda a: {
            TOKEN_KEY: a[0], **(a[1] or {}),
            **{credential_key(kind): value for kind, value in a[5].items()},
            **{_credential_key(name): value for name, value in (a[3] or {}).items()},
            **({SERVICE_SECRETS_KEY: json.dumps(a[1], sort_keys=True)}
               if a[1] is not None else {}),
            **({TLS_KEY: a[2]["keyfile"], TLS_CERT: a[2]["certfile"]} if a[2] else {}),
            **({API_KEYS_KEY: json.dumps(a[4], sort_keys=True)} if a[4] is not None else {}),
        })
        k8s.core.v1.Secret(
            f"{name}-secret", metadata=_meta(plan, secret_object_name(plan)), type="Opaque",
            # Both the token and the service secrets are secret Outputs, so this one is too.
            string_data=data, opts=pulumi.ResourceOptions(parent=self),
        )
        # The name as a plain value: a reference to the object's output would be unknown
        # whenever the Secret is replaced (a changed secret), and the provider would then
        # replace every pod spec that names it. Consumers depend on this component instead.
        self.secret_name = secret_object_name(plan)
        self.register_outputs({"secret_name": self.secret_name})


@dataclass
class FirewallArgs:
    plan: DeploymentPlan


class Firewall(pulumi.ComponentResource):
    """NetworkPolicies: replica ports only from controller pods; admin port only from replicas
    and, with several load balancers, from the other controller pods (the followers' cluster
    calls to the leader); the LB port stays open to the LoadBalancer."""

    def __init__(
        self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:Firewall", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        replica_pods = {"match_labels": _selector(plan, "replica")}
        controller_pods = {"match_labels": _selector(plan, "controller")}
        ingress: list[dict[str, Any]] = [{"from_": [{"pod_selector": controller_pods}],
                                          "ports": [{"protocol": "TCP", "port": p}
                                                    for p in plan.replica_ports]}]
        if plan.task.num_nodes > 1:  # the nodes of a replica talk to each other on any port
            ingress.append({"from_": [{"pod_selector": replica_pods}]})
        k8s.networking.v1.NetworkPolicy(
            f"{name}-replicas", metadata=_meta(plan, f"{plan.name}-replicas"),
            spec=sdk_args({
                "pod_selector": replica_pods, "policy_types": ["Ingress"],
                "ingress": ingress,
            }),
            opts=child,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-controller", metadata=_meta(plan, f"{plan.name}-controller"),
            spec=sdk_args({
                "pod_selector": controller_pods, "policy_types": ["Ingress"],
                "ingress": [
                    # From anywhere: LoadBalancer traffic reaches the pod SNATed to node
                    # addresses, so an ipBlock of client CIDRs would drop it. allowedCidrs
                    # is enforced by the Service's loadBalancerSourceRanges instead.
                    {"ports": [{"protocol": "TCP", "port": plan.lb_port}]},
                    {"ports": [{"protocol": "TCP", "port": plan.admin_port}],
                     "from_": [{"pod_selector": replica_pods},
                               *([{"pod_selector": controller_pods}]
                                 if controller_ha(plan) else [])]},
                ],
            }),
            opts=child,
        )
        self.register_outputs({})


@dataclass
class ControllerArgs:
    plan: DeploymentPlan
    secret_name: pulumi.Input[str]
    cpu: str
    memory: str


def controller_command(bundle_file: str, restart_when_changed: list[str]) -> list[str]:
    """The controller container's command: install the project, then run the agent under
    ``lb_agent.supervisor``, which holds the agent's ports, installs a changed bundle and
    restarts the agent for it and for each of ``restart_when_changed`` (the files the agent
    reads at start), so a commit or a config change neither replaces the pod nor refuses a
    connection."""
    install = f"bash {CONTROLLER_FILES_DIR}/controller.sh install"
    agent_config = f"{CONTROLLER_FILES_DIR}/agent.json"
    supervise = [PROJECT_PYTHON, "-m", "lb_agent.supervisor", "--config", agent_config,
                 "--interval", str(SUPERVISOR_INTERVAL_SECONDS),
                 "--install-when-changed", bundle_file, "--install", install]
    for path in restart_when_changed:
        supervise += ["--restart-when-changed", path]
    supervise += ["--", "skyform", "agent", "--config", agent_config]
    return ["bash", "-c", f"apt-get update -q && apt-get install -y -q curl && {install} "
            f"&& exec {shlex.join(supervise)}"]


#: Environment variables the agent names itself by in the lease and announces its cluster
#: address (its admin listener) with; the election loop reads them
#: (lb_agent/control/leadership.py).
LB_IDENTITY_ENV = "SKYFORM_LB_IDENTITY"
LB_ADDRESS_ENV = "SKYFORM_LB_ADDRESS"
#: The well-known node label of a node (the spread of the load balancers over nodes).
HOSTNAME_LABEL = "kubernetes.io/hostname"


def lease_name(plan: DeploymentPlan) -> str:
    """The ``coordination.k8s.io`` Lease the service's load balancers elect the controller
    with (the agents create it; the program does not, so no ``up`` ever resets its holder)."""
    return f"{plan.name}-leader"


def controller_ha(plan: DeploymentPlan) -> bool:
    """Several load balancers (``skyform:controllerReplicas`` >= 2): the lease, the spread,
    the PodDisruptionBudget and a state file per pod. One keeps the single pod as it was:
    its state on a volume claim, replaced by ``Recreate``, always the leader."""
    return plan.controller_replicas >= 2


def controller_env(plan: DeploymentPlan) -> list[dict[str, Any]]:
    """The pod's name and IP from the downward API, and from them the agent's identity in the
    lease and the cluster address (``<pod IP>:<admin port>``) the followers reach it at."""
    return [
        {"name": "POD_NAME", "value_from": {"field_ref": {"field_path": "metadata.name"}}},
        {"name": "POD_IP", "value_from": {"field_ref": {"field_path": "status.podIP"}}},
        {"name": LB_IDENTITY_ENV, "value": "$(POD_NAME)"},
        {"name": LB_ADDRESS_ENV, "value": f"$(POD_IP):{plan.admin_port}"},
    ]


def controller_spread(labels: dict[str, str]) -> list[dict[str, Any]]:
    """Spread the load balancers one per node (required) and over zones (preferred: a cluster
    with one zone, or a full one, still runs them). ``pod-template-hash`` counts only pods of
    the same revision, so a rolling update spreads the new pods too. Nodes whose taints the
    pod does not tolerate (GPU and spot pools) are no domain (``nodeTaintsPolicy: Honor``):
    counted, their zero pods would keep a second pod off the only node it may use."""
    def spread(key: str, when: str) -> dict[str, Any]:
        return {"max_skew": 1, "topology_key": key, "when_unsatisfiable": when,
                "label_selector": {"match_labels": labels},
                "match_label_keys": ["pod-template-hash"], "node_taints_policy": "Honor"}

    return [spread(HOSTNAME_LABEL, "DoNotSchedule"), spread(ZONE_LABEL, "ScheduleAnyway")]


def controller_strategy(plan: DeploymentPlan) -> dict[str, Any]:
    """Several load balancers: a rolling update that starts a new pod before it stops an old
    one, so the endpoint always has serving pods. One: ``Recreate`` (its volume claim is
    ReadWriteOnce; two pods could not mount it at once)."""
    if not controller_ha(plan):
        return {"type": "Recreate"}
    return {"type": "RollingUpdate",
            "rolling_update": {"max_unavailable": 0, "max_surge": 1}}


class Controller(pulumi.ComponentResource):
    """The agent Deployment, its RBAC, and the LoadBalancer + admin Services."""

    address: pulumi.Output[str]
    admin_url: str

    def __init__(
        self, name: str, args: ControllerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:Controller", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        full = f"{plan.name}-controller"
        account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=_meta(plan, full),
                                             opts=child)
        k8s.rbac.v1.Role(
            f"{name}-role", metadata=_meta(plan, full),
            rules=sdk_args(controller_rules(plan)),
            opts=child,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-binding", metadata=_meta(plan, full),
            role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": full},
            subjects=[{"kind": "ServiceAccount", "name": full, "namespace": plan.namespace}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        api_keys = plan.admission.api_keys
        config = agent_config(plan, token_env=TOKEN_ENV, state_file=f"{DATA_DIR}/agent.db",
                              api_keys_file=API_KEYS_FILE if api_keys else None)
        if controller_ha(plan):
            # The lease's timing stays the agent's default (LeaseConfig).
            config = config.model_copy(update={"lease": LeaseConfig(
                kind="kubernetes", name=lease_name(plan), namespace=plan.namespace)})
        # The controller runs its `up` from the project bundle (components/bundle.py), a
        # Secret (the service YAML may hold secret values), not from a git clone.
        bundle = plan_bundle(plan)
        if len(bundle.data) > MAX_BUNDLE_BYTES:
            raise PlacementError(
                f"the project bundle for the controller is {len(bundle.data) // 1024} KiB, over "
                f"the {MAX_BUNDLE_BYTES // 1024} KiB a Kubernetes Secret holds: move large "
                "files out of the project (a bucket mount, or an image)")
        project = k8s.core.v1.Secret(
            f"{name}-project", metadata=_meta(plan, f"{full}-project"), type="Opaque",
            data=pulumi.Output.secret({BUNDLE_KEY: base64.b64encode(bundle.data).decode()}),
            opts=child,
        )
        script = render_controller_script(ControllerBoot(
            cloud="kubernetes", service_name=plan.name, agent_config=config, token_id=TOKEN_ENV,
            pulumi_version=PULUMI_CLI_VERSION, bundle_file=f"{BUNDLE_DIR}/{BUNDLE_KEY}",
            bundle_sha256=bundle.digest,
            build_native=config.policy == "prefix_aware",
        ))
        if controller_ha(plan):
            # Each load balancer its own state file, for the pod's life (a restarted
            # container keeps it); a new leader carries on from the stack and its probes.
            state_volume: dict[str, Any] = {"name": "state", "empty_dir": {}}
        else:
            k8s.core.v1.PersistentVolumeClaim(
                f"{name}-state", metadata=_meta(plan, f"{full}-state"),
                spec=sdk_args({"access_modes": ["ReadWriteOnce"],
                               "resources": {"requests": {"storage": "1Gi"}}}),
                opts=child,
            )
            state_volume = {"name": "state", "persistent_volume_claim": {
                "claim_name": f"{full}-state"}}
        files = k8s.core.v1.ConfigMap(
            f"{name}-files", metadata=_meta(plan, f"{full}-files"),
            data={"agent.json": json.dumps(dump(config), indent=2, sort_keys=True),
                  "controller.sh": script},
            opts=child,
        )
        labels = _selector(plan, "controller")
        tls = plan.task.service.tls is not None
        secrets_file = config.secrets_file
        env: list[dict[str, Any]] = [
            {"name": TOKEN_ENV, "value_from": {"secret_key_ref": {"name": args.secret_name,
                                                                  "key": TOKEN_KEY}}},
            *(controller_env(plan) if controller_ha(plan) else []),
        ]
        if plan.backend_url:
            env.append({"name": "PULUMI_BACKEND_URL", "value": plan.backend_url})
        k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=_meta(plan, full, **labels),
            spec=sdk_args({
                "replicas": plan.controller_replicas, "strategy": controller_strategy(plan),
                "selector": {"match_labels": labels},
                "template": {
                    # A new bundle (a commit, a YAML edit) or config does not replace the pod:
                    # its supervisor installs it and restarts the agent, holding the ports
                    # (controller_command). The address, the state and the pod all stay.
                    "metadata": {"labels": labels},
                    "spec": {
                        "service_account_name": full,
                        "topology_spread_constraints": controller_spread(labels)
                        if controller_ha(plan) else None,
                        "containers": [{
                            "name": "agent", "image": CONTROLLER_IMAGE,
                            "command": controller_command(
                                f"{BUNDLE_DIR}/{BUNDLE_KEY}",
                                [f"{CONTROLLER_FILES_DIR}/agent.json",
                                 *([TLS_KEYFILE, TLS_CERTFILE] if tls else []),
                                 *([secrets_file] if secrets_file else []),
                                 *([API_KEYS_FILE] if api_keys else [])]),
                            "env": env,
                            "ports": [{"name": "lb", "container_port": plan.lb_port},
                                      {"name": "admin", "container_port": plan.admin_port}],
                            "readiness_probe": {"http_get": {"path": "/health",
                                                             "port": plan.admin_port},
                                                "period_seconds": 10},
                            "resources": {"requests": {"cpu": args.cpu,
                                                       "memory": args.memory}},
                            "volume_mounts": [
                                {"name": "files", "mount_path": CONTROLLER_FILES_DIR},
                                {"name": "state", "mount_path": DATA_DIR},
                                *([{"name": "tls", "mount_path": str(Path(TLS_KEYFILE).parent),
                                    "read_only": True}] if tls else []),
                                *([{"name": "service-secrets",
                                    "mount_path": str(Path(secrets_file).parent),
                                    "read_only": True}] if secrets_file else []),
                                *([{"name": "api-keys",
                                    "mount_path": str(Path(API_KEYS_FILE).parent),
                                    "read_only": True}] if api_keys else []),
                                {"name": "project", "mount_path": BUNDLE_DIR,
                                 "read_only": True},
                                *([{"name": "pulumi-credentials",
                                    "mount_path": PULUMI_CREDENTIALS_DIR,
                                    "read_only": True}] if plan.pulumi_credential_names else []),
                            ],
                        }],
                        "volumes": [
                            {"name": "files", "config_map": {"name": f"{full}-files"}},
                            state_volume,
                            {"name": "project", "secret": {
                                "secret_name": f"{full}-project", "default_mode": 0o400}},
                            *([{"name": "pulumi-credentials", "secret": {
                                "secret_name": args.secret_name, "default_mode": 0o400,
                                "items": [{"key": _credential_key(n),
                                           "path": PULUMI_CREDENTIAL_FILES[n]}
                                          for n in plan.pulumi_credential_names],
                            }}] if plan.pulumi_credential_names else []),
                            *([{"name": "tls", "secret": {
                                "secret_name": args.secret_name, "default_mode": 0o400,
                                "items": [{"key": TLS_KEY, "path": Path(TLS_KEYFILE).name},
                                          {"key": TLS_CERT, "path": Path(TLS_CERTFILE).name}],
                            }}] if tls else []),
                            *([{"name": "service-secrets", "secret": {
                                "secret_name": args.secret_name, "default_mode": 0o400,
                                "items": [{"key": SERVICE_SECRETS_KEY,
                                           "path": Path(secrets_file).name}],
                            }}] if secrets_file else []),
                            *([{"name": "api-keys", "secret": {
                                "secret_name": args.secret_name, "default_mode": 0o400,
                                "items": [{"key": API_KEYS_KEY,
                                           "path": Path(API_KEYS_FILE).name}],
                            }}] if api_keys else []),
                        ],
                    },
                },
            }),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[files, project]),
        )
        if controller_ha(plan):
            # A node drain or upgrade takes one load balancer at a time (whatever the count,
            # so a change of skyform:controllerReplicas leaves this object as it is).
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-disruption", metadata=_meta(plan, full),
                spec=sdk_args({"max_unavailable": 1, "selector": {"match_labels": labels}}),
                opts=child,
            )
        adm = plan.admission
        lb = k8s.core.v1.Service(
            f"{name}-lb", metadata=_meta(plan, full),
            spec=sdk_args({"type": "LoadBalancer", "selector": labels,
                  "load_balancer_source_ranges": list(plan.allowed_cidrs)
                  if plan.allowed_cidrs != ("0.0.0.0/0",) else None,
                  # Key-less rate limits are per client address: "Local" keeps the client's
                  # address (the default "Cluster" SNATs it to a node's, one bucket per node).
                  "external_traffic_policy": "Local"
                  if adm.rate_limit_rps and not adm.api_keys else None,
                  "ports": [{"name": "lb", "port": plan.lb_port, "target_port": plan.lb_port}]}),
            opts=child,
        )
        k8s.core.v1.Service(
            f"{name}-admin", metadata=_meta(plan, f"{full}-admin"),
            spec=sdk_args({"type": "ClusterIP", "selector": labels,
                  "ports": [{"name": "admin", "port": plan.admin_port,
                             "target_port": plan.admin_port}]}),
            opts=child,
        )
        self.admin_url = (
            f"http://{full}-admin.{plan.namespace}.svc.cluster.local:{plan.admin_port}"
        )
        self.address = lb.status.apply(_ingress_address)
        self.register_outputs({"address": self.address})


def _ingress_address(status: Any) -> str:
    try:
        lb = status["load_balancer"] if isinstance(status, dict) else status.load_balancer
        ingress = lb["ingress"][0] if isinstance(lb, dict) else lb.ingress[0]
        get = ingress.get if isinstance(ingress, dict) else lambda k: getattr(ingress, k, None)
        return str(get("ip") or get("hostname"))
    except (AttributeError, IndexError, KeyError, TypeError):
        return "<pending>"


@dataclass
class FilesArgs:
    plan: DeploymentPlan
    #: The replica generation whose pods mount these files; an older one than the YAML's is
    #: frozen: its ConfigMap keeps the files its pods were started with.
    generation: int = 1
    frozen: bool = False


class Files(pulumi.ComponentResource):
    """The workdir and local file mounts as one ConfigMap of deterministic tar.gz archives
    (``binaryData``, each with its ``.sha256``); replicas mount it at ``FILES_DIR`` and unpack
    it at start-up, checking the digest.

    A ConfigMap, as SkyPilot treats the workdir as plain files (rsynced, never secret; put
    secrets in ``secrets:``), and its contents stay reviewable in ``skyform synth``. An
    object holds at most 1 MiB, so larger trees are refused (``packing.check_size``) with a
    hint to use a bucket mount or an image."""

    config_map_name: str
    digest: str

    def __init__(
        self, name: str, args: FilesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:Files", name, None, opts)
        plan = args.plan
        packed = [packing.pack(u.path, u.key, plan.task.source) for u in plan.uploads]
        packing.check_size(packed, plan.task.source)
        self.digest = packing.combined_digest(packed)
        data = {item.key: base64.b64encode(item.data).decode() for item in packed}
        digests = {f"{item.key}.sha256": item.digest for item in packed}
        # A plain name (see Access.secret_name); the replica sets depend on this component.
        # One per generation, so a restarted pod of an older generation reads its own files.
        self.config_map_name = files_config_map(plan, args.generation)
        k8s.core.v1.ConfigMap(
            f"{name}-archives", metadata=_meta(plan, self.config_map_name),
            binary_data=data, data=digests,
            opts=pulumi.ResourceOptions(
                parent=self, ignore_changes=["binaryData", "data"] if args.frozen else None),
        )
        self.register_outputs({"config_map_name": self.config_map_name, "digest": self.digest})


def files_config_map(plan: DeploymentPlan, generation: int) -> str:
    """The name of a generation's workdir/file-mount ConfigMap."""
    return f"{plan.name}-workdir" + ("" if generation == 1 else f"-g{generation}")


@dataclass
class ReplicaGroupArgs:
    plan: DeploymentPlan
    group: GroupPlan
    secret_name: pulumi.Input[str]
    controller_admin_url: str
    files: Files | None = None


class ReplicaGroup(pulumi.ComponentResource):
    """One group's replicas. Single-node: one StatefulSet of ``count`` pods (ordinal = replica
    index; scale-down removes the highest first). Multi-node (``num_nodes > 1``): one
    StatefulSet of ``num_nodes`` pods per replica (ordinal = node rank, pod 0 the head), so
    scale-down removes a whole group. Each set has its headless Service."""

    addresses: list[str]

    def __init__(
        self, name: str, args: ReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:ReplicaGroup", name, None, opts)
        plan, group = args.plan, args.group
        full = f"{plan.name}-{group.group}"
        nodes = plan.task.num_nodes
        self.addresses = []
        if nodes == 1:
            self._replica_set(name, full, group.count, None, args)
            self.addresses = [_host(plan, full, i) for i in range(group.count)]
        else:
            for index in range(group.count):
                set_name = f"{full}-{index}"
                self._replica_set(f"{name}-{index}", set_name, nodes, index, args)
                self.addresses.append(_host(plan, set_name, 0))
        self.register_outputs({"addresses": self.addresses})

    def _replica_set(self, name: str, full: str, pods: int, index: int | None,
                     args: ReplicaGroupArgs) -> None:
        """A StatefulSet ``full`` of ``pods`` pods, its headless Service and start-up files.
        ``index``: the replica index of a multi-node set (None: pods are replicas)."""
        plan, group = args.plan, args.group
        offer = plan.group_offer(group)
        nodes = plan.task.num_nodes
        boot = ReplicaBoot(
            cloud="kubernetes", service_name=plan.name, group=group.group, index=index,
            replica_id_base=group.replica_id_base, spot=group.spot,
            accelerator=offer.accelerator, num_gpus=plan.num_gpus,
            service_port=plan.service_port, controller_url=args.controller_admin_url,
            credential_id=CREDENTIAL_ENV, envs=plan.envs, setup=plan.task.setup,
            run=plan.task.run,
            downloads=downloads_for(plan, FILES_DIR if plan.uploads else None),
            workdir=K8S_WORKDIR if plan.task.workdir is not None else DATA_DIR,
            num_nodes=nodes, node_rank=None if nodes > 1 else 0,
            node_hosts=tuple(_host(plan, full, r) for r in range(nodes)) if nodes > 1 else (),
            service_account=plan.service_account,
        )
        # A frozen group (an older generation, being rolled out) keeps the spec its pods
        # were started from: only its replica count changes.
        frozen = group.frozen
        files = k8s.core.v1.ConfigMap(
            f"{name}-files", metadata=_meta(plan, f"{full}-files"), data=replica_files(boot),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["data"] if frozen else None),
        )
        labels = _selector(plan, "replica", group.group)
        set_labels = {**labels, **({"skyform-replica": str(index)} if index is not None else {})}
        k8s.core.v1.Service(
            f"{name}-headless", metadata=_meta(plan, full, **set_labels),
            spec=sdk_args({"cluster_ip": "None", "selector": set_labels,
                  # Workers resolve each other's names before they are ready.
                  "publish_not_ready_addresses": nodes > 1 or None,
                  "ports": [{"name": f"p{p}", "port": p} for p in plan.replica_ports]}),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["spec"] if frozen else None),
        )
        limits: dict[str, str] = {}
        node_selector: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        if offer.accelerator and plan.num_gpus:
            device = catalog.k8s_device_resource(offer.accelerator)
            limits[device] = str(plan.num_gpus)
            node_selector.update(catalog.k8s_node_selector(
                offer.accelerator, plan.num_gpus, plan.accelerator_label))
            tolerations.append({"key": device, "operator": "Exists", "effect": "NoSchedule"})
        if group.spot:
            node_selector[SPOT_LABEL] = "true"
            tolerations.insert(0, {"key": SPOT_LABEL, "operator": "Equal", "value": "true",
                                   "effect": "NoSchedule"})
        zone = plan.group_zone(group) if group.placed else None
        affinity = zone_affinity(zone) if zone else None
        storage: dict[str, Any] = {
            "access_modes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{plan.candidate.disk_size}Gi"}},
        }
        if plan.storage_classes.get(plan.disk_tier):
            storage["storage_class_name"] = plan.storage_classes[plan.disk_tier]
        image = plan.docker_image or (GPU_IMAGE if plan.num_gpus else CPU_IMAGE)
        annotations = {FILES_DIGEST_ANNOTATION: args.files.digest} if args.files else None
        mounts: list[dict[str, Any]] = [
            {"name": "files", "mount_path": "/opt/skyform"},
            {"name": "data", "mount_path": DATA_DIR},
        ]
        volumes: list[dict[str, Any]] = [{"name": "files", "config_map": {
            "name": f"{full}-files", "default_mode": 0o755}}]
        if plan.task.workdir is not None:
            mounts.append({"name": "workdir", "mount_path": K8S_WORKDIR})
            volumes.append({"name": "workdir", "empty_dir": {}})
        if args.files is not None:
            mounts.append({"name": "uploads", "mount_path": FILES_DIR, "read_only": True})
            volumes.append({"name": "uploads", "config_map": {
                "name": args.files.config_map_name, "default_mode": 0o444}})
        # The agent probes readiness itself; pulumi-kubernetes would otherwise wait (up to
        # 10 minutes) for every pod to be ready, and a GPU replica pulling a large image and
        # loading a model takes longer: the first `up` and every agent scale-up would fail.
        set_meta = {**_meta(plan, full, **set_labels), "annotations": {SKIP_AWAIT: "true"}}
        k8s.apps.v1.StatefulSet(
            f"{name}-set", metadata=set_meta,
            spec=sdk_args({
                "replicas": pods, "service_name": full,
                "pod_management_policy": "Parallel",
                "selector": {"match_labels": set_labels},
                "template": {
                    # The files' digest: a change in the workdir or mounts rolls the pods.
                    "metadata": {"labels": {**k8s_labels(plan.labels), **set_labels},
                                 "annotations": annotations},
                    "spec": {
                        "termination_grace_period_seconds": 120,
                        "service_account_name": plan.service_account,
                        "node_selector": node_selector or None,
                        "affinity": affinity,
                        "tolerations": tolerations or None,
                        "containers": [{
                            "name": "replica", "image": image,
                            "command": ["bash", "/opt/skyform/replica.sh", "start"],
                            "env": [
                                {"name": "POD_IP",
                                 "value_from": {"field_ref": {"field_path": "status.podIP"}}},
                                *_secret_env(plan, args.secret_name,
                                             credential_kind(group.group)),
                            ],
                            "ports": [{"container_port": p} for p in plan.replica_ports],
                            # Multi-node: the agent probes the head; workers need not serve.
                            "readiness_probe": readiness_probe(plan) if nodes == 1 else None,
                            "lifecycle": {"pre_stop": {"exec_": {"command": [
                                "bash", "/opt/skyform/replica.sh", "deregister"]}}},
                            "resources": {
                                "requests": {"cpu": f"{offer.vcpus:g}",
                                             "memory": f"{offer.memory_gb:g}Gi"},
                                "limits": limits or None,
                            },
                            "volume_mounts": mounts,
                        }],
                        "volumes": volumes,
                    },
                },
                "volume_claim_templates": [{"metadata": {"name": "data"}, "spec": storage}],
            }),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[files],
                ignore_changes=list(FROZEN_SET_FIELDS) if frozen else None),
        )


#: The well-known node label of a node's zone.
ZONE_LABEL = "topology.kubernetes.io/zone"


def zone_affinity(zone: str) -> dict[str, Any]:
    """Required node affinity to the nodes of ``zone``."""
    return {"node_affinity": {"required_during_scheduling_ignored_during_execution": {
        "node_selector_terms": [{"match_expressions": [
            {"key": ZONE_LABEL, "operator": "In", "values": [zone]}]}]}}}


def replica_object_names(plan: DeploymentPlan) -> dict[str, list[str]]:
    """The names of the objects the replica groups own, by API resource: what the agent's
    targeted ``up`` and ``refresh`` (``target=replicaGroupUrns``, ``target_dependents``) read
    and write. A group of single-node replicas is one StatefulSet, its headless Service and
    its start-up ConfigMap; a multi-node group has those per replica index, up to the cap.
    The groups the agent may place at any candidate location of the current generation are
    named too: the Role is not part of the agent's targeted ``up``."""
    sets: list[str] = []
    names = {g.group: g.count for g in plan.groups}
    for loc in plan.locations:
        if loc.site.key != (plan.home.key if plan.home else None):
            names.setdefault(group_name(SPOT if loc.spot else ONDEMAND, plan.generation,
                                        loc.site.key), 0)
    for group, count in names.items():
        full = f"{plan.name}-{group}"
        if plan.task.num_nodes == 1:
            sets.append(full)
        else:
            cap = max(count, plan.group_cap(group))
            sets.extend(f"{full}-{i}" for i in range(cap))
    return {"statefulsets": sets, "services": sets,
            "configmaps": [f"{n}-files" for n in sets]}


def controller_rules(plan: DeploymentPlan) -> list[dict[str, Any]]:
    """The controller's Role: exactly what a targeted ``up``/``refresh`` of the replica
    groups needs. Reads and writes are limited to those objects by name; ``create`` and
    ``list``/``watch`` cannot be limited by name in Kubernetes RBAC, so they are granted on
    the three kinds in this namespace only. Nothing else: not the Secret, the controller's
    own Deployment or Service, the NetworkPolicies or the Role itself. With several load
    balancers, the leader lease: ``get``/``update`` of that Lease by name, and ``create``
    (which RBAC cannot limit by name: the admission policy pins the name)."""
    names = replica_object_names(plan)
    groups = {"statefulsets": "apps", "services": "", "configmaps": ""}
    rules: list[dict[str, Any]] = []
    for resource, api_group in groups.items():
        rules.append({"api_groups": [api_group], "resources": [resource],
                      "verbs": ["create", "list", "watch"]})
        rules.append({"api_groups": [api_group], "resources": [resource],
                      "resource_names": names[resource],
                      "verbs": ["get", "update", "patch", "delete"]})
    if controller_ha(plan):
        rules.append({"api_groups": ["coordination.k8s.io"], "resources": ["leases"],
                      "verbs": ["create"]})
        rules.append({"api_groups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resource_names": [lease_name(plan)], "verbs": ["get", "update"]})
    return rules


#: Pod Security admission of the service's namespace: ``baseline`` enforced (no privileged
#: pod, host namespace, hostPath or added capability: replica images commonly run as root,
#: which ``restricted`` refuses), ``restricted`` warned and audited.
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}


def controller_username(plan: DeploymentPlan) -> str:
    """How the API server names requests of the controller's ServiceAccount."""
    return f"system:serviceaccount:{plan.namespace}:{plan.name}-controller"


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def admission_validations(plan: DeploymentPlan) -> list[dict[str, str]]:
    """CEL rules on what the controller's ServiceAccount creates or updates: RBAC cannot
    limit ``create`` by name, so the admission policy does. Only the replica groups' objects
    by name; their pod template: no privileged container, no host namespace or hostPath, no
    Secret but the service's own (volumes, env), the service's ServiceAccount."""
    names = replica_object_names(plan)
    secret = secret_object_name(plan)
    pod = "object.spec.template.spec"
    sts = "request.resource.resource != 'statefulsets' || "

    def no_privileged(field: str) -> str:
        return (f"!has({pod}.{field}) || {pod}.{field}.all(c, !has(c.securityContext) || "
                "!has(c.securityContext.privileged) || !c.securityContext.privileged)")

    def own_secret_env(field: str) -> str:
        return (f"!has({pod}.{field}) || {pod}.{field}.all(c, "
                "(!has(c.env) || c.env.all(e, !has(e.valueFrom) || "
                "!has(e.valueFrom.secretKeyRef) || "
                f"e.valueFrom.secretKeyRef.name == '{secret}')) && "
                "(!has(c.envFrom) || c.envFrom.all(f, !has(f.secretRef) || "
                f"f.secretRef.name == '{secret}')))")

    rules = [
        *[(f"request.resource.resource != '{kind}' || "
           f"object.metadata.name in {_cel_list(names[kind])}",
           f"the controller creates only its replica groups' {kind}")
          for kind in ("statefulsets", "services", "configmaps")],
        (sts + " && ".join(
            f"(!has({pod}.{f}) || !{pod}.{f})" for f in ("hostNetwork", "hostPID", "hostIPC")),
         "no host namespaces in a replica pod"),
        (sts + f"({no_privileged('containers')}) && ({no_privileged('initContainers')})",
         "no privileged container in a replica pod"),
        (sts + f"!has({pod}.volumes) || {pod}.volumes.all(v, !has(v.hostPath) && "
         f"(!has(v.secret) || v.secret.secretName == '{secret}') && "
         "(!has(v.projected) || !has(v.projected.sources) || v.projected.sources.all(s, "
         f"!has(s.secret) || s.secret.name == '{secret}')))",
         f"a replica pod mounts no hostPath and no Secret but {secret}"),
        (sts + f"({own_secret_env('containers')}) && ({own_secret_env('initContainers')})",
         f"a replica pod's environment reads no Secret but {secret}"),
        (sts + f"has({pod}.serviceAccountName) && "
         f"{pod}.serviceAccountName == '{plan.service_account}'",
         f"a replica pod runs as the ServiceAccount {plan.service_account}"),
    ]
    if controller_ha(plan):
        rules.append((f"request.resource.resource != 'leases' || "
                      f"object.metadata.name == '{lease_name(plan)}'",
                      f"the controller writes only the Lease {lease_name(plan)}"))
    return [{"expression": e, "message": m} for e, m in rules]


def admission_policy_spec(plan: DeploymentPlan) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) that holds the
    controller's ServiceAccount to ``admission_validations``."""
    return {
        "failure_policy": "Fail",
        "match_constraints": {"resource_rules": [
            {"api_groups": ["apps"], "api_versions": ["*"], "resources": ["statefulsets"],
             "operations": ["CREATE", "UPDATE"]},
            {"api_groups": [""], "api_versions": ["*"],
             "resources": ["services", "configmaps"], "operations": ["CREATE", "UPDATE"]},
            *([{"api_groups": ["coordination.k8s.io"], "api_versions": ["*"],
                "resources": ["leases"], "operations": ["CREATE", "UPDATE"]}]
              if controller_ha(plan) else []),
        ]},
        "match_conditions": [{"name": "the-controller",
                              "expression": f"request.userInfo.username == "
                                            f"'{controller_username(plan)}'"}],
        "validations": admission_validations(plan),
    }


def _host(plan: DeploymentPlan, set_name: str, ordinal: int) -> str:
    """The stable DNS name of pod ``ordinal`` of a StatefulSet (via its headless Service)."""
    return f"{set_name}-{ordinal}.{set_name}.{plan.namespace}.svc.cluster.local"


def render_provider(name: str, directory: str) -> k8s.Provider:
    """An explicit provider that writes every object as YAML under ``directory`` (GitOps)
    instead of talking to a cluster: ``skyform:renderYamlToDirectory``. The provider never
    reads a kubeconfig in this mode, so it also runs where no cluster exists."""
    return k8s.Provider(name, render_yaml_to_directory=directory)


def deploy(name: str, plan: DeploymentPlan, secrets: DeploymentSecrets,
           parent: pulumi.ComponentResource, controller_size: str | None) -> CloudDeployment:
    """Create every Kubernetes component of the service under ``parent``."""
    opts = pulumi.ResourceOptions(parent=parent)
    k8s.core.v1.Namespace(f"{name}-namespace", metadata={
        "name": plan.namespace, "labels": POD_SECURITY_LABELS}, opts=opts)
    # What RBAC cannot pin (create by name, the pod template), an admission policy does.
    policy_name = f"skyform-{plan.namespace}-controller"
    k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
        f"{name}-controller-policy", metadata={"name": policy_name},
        spec=sdk_args(admission_policy_spec(plan)), opts=opts)
    k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
        f"{name}-controller-policy", metadata={"name": policy_name},
        spec=sdk_args({
            "policy_name": policy_name, "validation_actions": ["Deny"],
            "match_resources": {"namespace_selector": {"match_labels": {
                "kubernetes.io/metadata.name": plan.namespace}}},
        }), opts=opts)
    access = Access(f"{name}-access", AccessArgs(plan, secrets), opts)
    Firewall(f"{name}-firewall", FirewallArgs(plan), opts)
    cpu, memory = f"{plan.controller_offer.vcpus:g}", f"{plan.controller_offer.memory_gb:g}Gi"
    if controller_size:
        cpu, _, mem = controller_size.partition("/")
        memory = mem or memory
    # The pod specs name the Secret and the files' ConfigMap by plain name; these
    # dependencies keep the order.
    after_access = pulumi.ResourceOptions(parent=parent, depends_on=[access])
    controller = Controller(f"{name}-controller", ControllerArgs(
        plan, access.secret_name, cpu, memory), after_access)
    # The workdir and file mounts, one ConfigMap per generation (older ones frozen).
    files: dict[int, Files] = {}
    for group in plan.groups if plan.uploads else ():
        if group.generation not in files:
            suffix = "" if group.generation == 1 else f"-g{group.generation}"
            files[group.generation] = Files(f"{name}-files{suffix}", FilesArgs(
                plan, group.generation, group.frozen), opts)
    groups: list[pulumi.ComponentResource] = []
    replicas: list[pulumi.Output[dict[str, Any]]] = []
    for group in plan.groups:
        mine = files.get(group.generation)
        after_files = pulumi.ResourceOptions(parent=parent,
                                             depends_on=[access, *([mine] if mine else [])])
        component = ReplicaGroup(f"{name}-{group.group}", ReplicaGroupArgs(
            plan, group, access.secret_name, controller.admin_url, mine), after_files)
        groups.append(component)
        for index, address in enumerate(component.addresses):
            replicas.append(pulumi.Output.from_input(
                replica_entry(plan, group, index, address)))
    endpoint = controller.address.apply(lambda a: f"{plan.scheme}://{a}:{plan.lb_port}")
    return CloudDeployment(endpoint, controller.address, replicas, groups,
                           pulumi.Output.from_input(controller.admin_url))
