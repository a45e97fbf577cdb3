"""Kubernetes: a SkyServe service as StatefulSets, a NetworkPolicy and a controller Deployment.

Components (children of ``skyform:index:SkyService``):

- ``skyform:kubernetes:Access``: the namespace's Secret (agent token + service secrets).
- ``skyform:kubernetes:Firewall``: a NetworkPolicy so replicas accept traffic only from the
  controller pods (and the admin port only from replicas).
- ``skyform:kubernetes:Controller``: a ServiceAccount with a Role limited to this namespace's
  StatefulSets (and their scale), a Deployment running ``skyform agent`` and a Service of type
  LoadBalancer for the LB port (the admin port has a ClusterIP Service of its own).
- ``skyform:kubernetes:ReplicaGroup``: a StatefulSet per group (pods ``<name>-<group>-<i>``;
  scale-down removes the highest ordinal first), a headless Service and the start-up files.

GPUs: ``nvidia.com/gpu`` limits and a node selector on ``cloud.google.com/gke-accelerator``
(the catalog's value). Spot groups select and tolerate ``cloud.google.com/gke-spot``.
Disk: a volume claim of ``disk_size`` GiB mounted at /data; its storage class comes from
``skyform:storageClasses`` keyed by tier (``low``...``best``), else the cluster default.
Readiness: a GET probe becomes an ``httpGet`` probe (path, port, headers); a POST probe
becomes an ``exec`` probe that POSTs the JSON body with python3. SkyServe's
``initial_delay_seconds`` is a grace period for failures, not a delay, so the probe starts at
once (an unready pod simply gets no traffic) and the agent applies the grace period.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.clouds.common import (
    PULUMI_CLI_VERSION,
    CloudDeployment,
    DeploymentPlan,
    DeploymentSecrets,
    GroupPlan,
    agent_config,
    k8s_labels,
    sdk_args,
)
from components.startup import (
    TLS_CERTFILE,
    TLS_KEYFILE,
    ControllerBoot,
    ReplicaBoot,
    render_controller_script,
    replica_files,
)

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
SPOT_LABEL = "cloud.google.com/gke-spot"
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
DATA_DIR = "/data"


def _meta(plan: DeploymentPlan, name: str, **labels: str) -> Any:
    return {"name": name, "namespace": plan.namespace,
            "labels": k8s_labels({**plan.labels, "app.kubernetes.io/part-of": "skyform",
                                  "skyform-service": plan.name, **labels})}


def _selector(plan: DeploymentPlan, role: str, group: str | None = None) -> dict[str, str]:
    out = {"skyform-service": plan.name, "skyform-role": role}
    if group:
        out["skyform-group"] = group
    return out


def _secret_env(plan: DeploymentPlan, secret_name: pulumi.Input[str]) -> list[dict[str, Any]]:
    """The agent token and every service secret as env vars from the Secret."""
    return [
        {"name": TOKEN_ENV, "value_from": {"secret_key_ref": {"name": secret_name,
                                                              "key": TOKEN_KEY}}},
        *[{"name": key, "value_from": {"secret_key_ref": {"name": secret_name, "key": key}}}
          for key in _secret_names(plan)],
    ]


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

    secret_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:Access", name, None, opts)
        plan = args.plan
        data: pulumi.Output[dict[str, str]] = pulumi.Output.all(
            args.secrets.agent_token, args.secrets.service_secrets, args.secrets.tls
        ).apply(lambda a: {
            TOKEN_KEY: a[0], **(a[1] or {}),
            **({SERVICE_SECRETS_KEY: json.dumps(a[1], sort_keys=True)}
               if a[1] is not None else {}),
            **({TLS_KEY: a[2]["keyfile"], TLS_CERT: a[2]["certfile"]} if a[2] else {}),
        })
        secret = k8s.core.v1.Secret(
            f"{name}-secret", metadata=_meta(plan, f"{plan.name}-secrets"), type="Opaque",
            # Both the token and the service secrets are secret Outputs, so this one is too.
            string_data=data, opts=pulumi.ResourceOptions(parent=self),
        )
        self.secret_name = secret.metadata.apply(lambda m: m["name"] if isinstance(m, dict)
                                                 else m.name)
        self.register_outputs({"secret_name": self.secret_name})


@dataclass
class FirewallArgs:
    plan: DeploymentPlan


class Firewall(pulumi.ComponentResource):
    """NetworkPolicies: replica ports only from controller pods; admin port only from replicas
    (the LB port stays open to the LoadBalancer)."""

    def __init__(
        self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:Firewall", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        replica_pods = {"match_labels": _selector(plan, "replica")}
        controller_pods = {"match_labels": _selector(plan, "controller")}
        k8s.networking.v1.NetworkPolicy(
            f"{name}-replicas", metadata=_meta(plan, f"{plan.name}-replicas"),
            spec=sdk_args({
                "pod_selector": replica_pods, "policy_types": ["Ingress"],
                "ingress": [{"from_": [{"pod_selector": controller_pods}],
                             "ports": [{"protocol": "TCP", "port": p}
                                       for p in plan.replica_ports]}],
            }),
            opts=child,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-controller", metadata=_meta(plan, f"{plan.name}-controller"),
            spec=sdk_args({
                "pod_selector": controller_pods, "policy_types": ["Ingress"],
                "ingress": [
                    {"ports": [{"protocol": "TCP", "port": plan.lb_port}],
                     "from_": [{"ip_block": {"cidr": c}} for c in plan.allowed_cidrs]},
                    {"ports": [{"protocol": "TCP", "port": plan.admin_port}],
                     "from_": [{"pod_selector": replica_pods}]},
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
            rules=sdk_args([
                {"api_groups": ["apps"], "resources": ["statefulsets", "statefulsets/scale"],
                 "verbs": ["get", "list", "watch", "patch", "update"]},
                {"api_groups": [""], "resources": ["services", "configmaps"],
                 "verbs": ["get", "list", "watch"]},
            ]),
            opts=child,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-binding", metadata=_meta(plan, full),
            role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": full},
            subjects=[{"kind": "ServiceAccount", "name": full, "namespace": plan.namespace}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        config = agent_config(plan)
        config.pop("token_file")
        config["token_env"] = TOKEN_ENV
        config["state_file"] = f"{DATA_DIR}/agent.db"
        script = render_controller_script(ControllerBoot(
            cloud="kubernetes", service_name=plan.name, agent_config=config, token_id=TOKEN_ENV,
            source_repo=plan.source_repo, source_ref=plan.source_ref,
            pulumi_version=PULUMI_CLI_VERSION,
        ))
        files = k8s.core.v1.ConfigMap(
            f"{name}-files", metadata=_meta(plan, f"{full}-files"),
            data={"agent.json": json.dumps(config, indent=2, sort_keys=True),
                  "controller.sh": script},
            opts=child,
        )
        labels = _selector(plan, "controller")
        tls = plan.task.service.tls is not None
        secrets_file = config.get("secrets_file")
        env: list[dict[str, Any]] = [
            {"name": TOKEN_ENV, "value_from": {"secret_key_ref": {"name": args.secret_name,
                                                                  "key": TOKEN_KEY}}},
        ]
        if plan.backend_url:
            env.append({"name": "PULUMI_BACKEND_URL", "value": plan.backend_url})
        k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=_meta(plan, full, **labels),
            spec=sdk_args({
                "replicas": 1, "strategy": {"type": "Recreate"},
                "selector": {"match_labels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "service_account_name": full,
                        "containers": [{
                            "name": "agent", "image": CONTROLLER_IMAGE,
                            "command": ["bash", "-c",
                                        "apt-get update -q && apt-get install -y -q git curl "
                                        "&& bash /etc/skyform/controller.sh install "
                                        "&& exec skyform agent --config /etc/skyform/agent.json"],
                            "env": env,
                            "ports": [{"name": "lb", "container_port": plan.lb_port},
                                      {"name": "admin", "container_port": plan.admin_port}],
                            "readiness_probe": {"http_get": {"path": "/health",
                                                             "port": plan.admin_port},
                                                "period_seconds": 10},
                            "resources": {"requests": {"cpu": args.cpu,
                                                       "memory": args.memory}},
                            "volume_mounts": [
                                {"name": "files", "mount_path": "/etc/skyform"},
                                {"name": "state", "mount_path": DATA_DIR},
                                *([{"name": "tls", "mount_path": str(Path(TLS_KEYFILE).parent),
                                    "read_only": True}] if tls else []),
                                *([{"name": "service-secrets",
                                    "mount_path": str(Path(secrets_file).parent),
                                    "read_only": True}] if secrets_file else []),
                            ],
                        }],
                        "volumes": [
                            {"name": "files", "config_map": {"name": files.metadata.name}},
                            {"name": "state", "empty_dir": {}},
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
                        ],
                    },
                },
            }),
            opts=child,
        )
        lb = k8s.core.v1.Service(
            f"{name}-lb", metadata=_meta(plan, full),
            spec=sdk_args({"type": "LoadBalancer", "selector": labels,
                  "load_balancer_source_ranges": list(plan.allowed_cidrs)
                  if plan.allowed_cidrs != ("0.0.0.0/0",) else None,
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
class ReplicaGroupArgs:
    plan: DeploymentPlan
    group: GroupPlan
    secret_name: pulumi.Input[str]
    controller_admin_url: str


class ReplicaGroup(pulumi.ComponentResource):
    """A StatefulSet of ``count`` pods (ordinals 0..count-1) and its headless Service."""

    addresses: list[str]

    def __init__(
        self, name: str, args: ReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:kubernetes:ReplicaGroup", name, None, opts)
        plan, group = args.plan, args.group
        child = pulumi.ResourceOptions(parent=self)
        full = f"{plan.name}-{group.group}"
        offer = plan.offer
        boot = ReplicaBoot(
            cloud="kubernetes", service_name=plan.name, group=group.group, index=None,
            replica_id_base=group.replica_id_base, spot=group.spot,
            accelerator=offer.accelerator, num_gpus=plan.num_gpus,
            service_port=plan.service_port, controller_url=args.controller_admin_url,
            token_id=TOKEN_ENV, envs=plan.envs, setup=plan.task.setup, run=plan.task.run,
            workdir=DATA_DIR,
        )
        files = k8s.core.v1.ConfigMap(
            f"{name}-files", metadata=_meta(plan, f"{full}-files"), data=replica_files(boot),
            opts=child,
        )
        labels = _selector(plan, "replica", group.group)
        k8s.core.v1.Service(
            f"{name}-headless", metadata=_meta(plan, full, **labels),
            spec=sdk_args({"cluster_ip": "None", "selector": labels,
                  "ports": [{"name": f"p{p}", "port": p} for p in plan.replica_ports]}),
            opts=child,
        )
        limits: dict[str, str] = {}
        if plan.num_gpus:
            limits["nvidia.com/gpu"] = str(plan.num_gpus)
        node_selector: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        if offer.accelerator_type:
            node_selector[ACCELERATOR_LABEL] = offer.accelerator_type
        if group.spot:
            node_selector[SPOT_LABEL] = "true"
            tolerations.append({"key": SPOT_LABEL, "operator": "Equal", "value": "true",
                                "effect": "NoSchedule"})
        if plan.num_gpus:
            tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"})
        storage: dict[str, Any] = {
            "access_modes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{plan.candidate.disk_size}Gi"}},
        }
        if plan.storage_classes.get(plan.disk_tier):
            storage["storage_class_name"] = plan.storage_classes[plan.disk_tier]
        image = plan.docker_image or (GPU_IMAGE if plan.num_gpus else CPU_IMAGE)
        k8s.apps.v1.StatefulSet(
            f"{name}-set", metadata=_meta(plan, full, **labels),
            spec=sdk_args({
                "replicas": group.count, "service_name": full,
                "pod_management_policy": "Parallel",
                "selector": {"match_labels": labels},
                "template": {
                    "metadata": {"labels": {**k8s_labels(plan.labels), **labels}},
                    "spec": {
                        "termination_grace_period_seconds": 120,
                        "node_selector": node_selector or None,
                        "tolerations": tolerations or None,
                        "containers": [{
                            "name": "replica", "image": image,
                            "command": ["bash", "/opt/skyform/replica.sh", "start"],
                            "env": [
                                {"name": "POD_IP",
                                 "value_from": {"field_ref": {"field_path": "status.podIP"}}},
                                *_secret_env(plan, args.secret_name),
                            ],
                            "ports": [{"container_port": p} for p in plan.replica_ports],
                            "readiness_probe": readiness_probe(plan),
                            "lifecycle": {"pre_stop": {"exec_": {"command": [
                                "bash", "/opt/skyform/replica.sh", "deregister"]}}},
                            "resources": {
                                "requests": {"cpu": f"{offer.vcpus:g}",
                                             "memory": f"{offer.memory_gb:g}Gi"},
                                "limits": limits or None,
                            },
                            "volume_mounts": [
                                {"name": "files", "mount_path": "/opt/skyform"},
                                {"name": "data", "mount_path": DATA_DIR},
                            ],
                        }],
                        "volumes": [{"name": "files", "config_map": {
                            "name": files.metadata.name, "default_mode": 0o755}}],
                    },
                },
                "volume_claim_templates": [{"metadata": {"name": "data"}, "spec": storage}],
            }),
            opts=child,
        )
        self.addresses = [
            f"{full}-{i}.{full}.{plan.namespace}.svc.cluster.local" for i in range(group.count)
        ]
        self.register_outputs({"addresses": self.addresses})


def render_provider(name: str, directory: Path) -> k8s.Provider:
    """An explicit provider that writes every object as YAML under ``directory`` (GitOps)
    instead of talking to a cluster: ``skyform:renderYamlToDirectory``. The provider never
    reads a kubeconfig in this mode, so it also runs where no cluster exists."""
    return k8s.Provider(name, render_yaml_to_directory=str(directory))


def deploy(name: str, plan: DeploymentPlan, secrets: DeploymentSecrets,
           parent: pulumi.ComponentResource, controller_size: str | None) -> CloudDeployment:
    """Create every Kubernetes component of the service under ``parent``."""
    opts = pulumi.ResourceOptions(parent=parent)
    k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": plan.namespace}, opts=opts)
    access = Access(f"{name}-access", AccessArgs(plan, secrets), opts)
    Firewall(f"{name}-firewall", FirewallArgs(plan), opts)
    cpu, memory = f"{plan.controller_offer.vcpus:g}", f"{plan.controller_offer.memory_gb:g}Gi"
    if controller_size:
        cpu, _, mem = controller_size.partition("/")
        memory = mem or memory
    controller = Controller(f"{name}-controller", ControllerArgs(
        plan, access.secret_name, cpu, memory), opts)
    groups: list[pulumi.ComponentResource] = []
    replicas: list[pulumi.Output[dict[str, Any]]] = []
    for group in plan.groups:
        component = ReplicaGroup(f"{name}-{group.group}", ReplicaGroupArgs(
            plan, group, access.secret_name, controller.admin_url), opts)
        groups.append(component)
        for index, address in enumerate(component.addresses):
            replicas.append(pulumi.Output.from_input({
                "index": index, "group": group.group, "spot": group.spot,
                "instanceType": plan.offer.instance_type, "address": address,
            }))
    endpoint = controller.address.apply(lambda a: f"{plan.scheme}://{a}:{plan.lb_port}")
    return CloudDeployment(endpoint, controller.address, replicas, groups)
