"""Typed access to the ``skyform:*`` stack config (the schema is declared in Pulumi.yaml).

This module owns reading and checking the stack config, and nothing else: every key the
program understands is read here, once, into a frozen ``StackSettings``. Secret values
(``skyform:secrets``, ``skyform:agentToken``, ``skyform:apiKeys``) stay ``pulumi.Output``
secrets; they are never turned into plain strings in this process (``skyform:apiKeys`` is
checked as read, and only its SHA-256 digests leave it, still a secret Output).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.admission import AdmissionSettings, digest_entries, parse_api_keys
from components.catalog.data import GKE_ACCELERATOR_LABEL
from components.clouds.common import is_k8s_label_key
from components.spec import TARGET_CLOUDS, TargetCloud
from lb_agent.contract import UPDATE_MODES

PRICE_TABLES = ("none", "gke")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

NAMESPACE = "skyform"


class StackConfigError(Exception):
    """A stack config value is missing or invalid; the message names the key and what is valid."""


@dataclass(frozen=True)
class StackSettings:
    """Everything the program reads from the stack config, typed and checked."""

    service: str
    cloud: TargetCloud
    region: str | None = None
    zone: str | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    replicas: int | None = None
    on_demand_replicas: int | None = None
    candidate: int | None = None
    envs: Mapping[str, str] = field(default_factory=dict)
    #: Names of the secret overrides (values live only in ``secrets``).
    secret_keys: tuple[str, ...] = ()
    #: ``skyform:secrets`` as a secret Output of a dict, or None when unset.
    secrets: pulumi.Output[dict[str, str]] | None = None
    controller_instance_type: str | None = None
    allowed_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    ssh_cidrs: tuple[str, ...] = ()
    #: AWS/GCP: CIDRs allowed to the agent's admin port (``skyform status --stack``).
    admin_cidrs: tuple[str, ...] = ()
    #: ``skyform:agentToken`` as a secret Output, or None (then one is generated).
    agent_token: pulumi.Output[str] | None = None
    #: ``skyform:pulumiPassphrase`` / ``pulumiAccessToken``: what the controller's own
    #: ``pulumi up`` authenticates with (passphrase secrets provider; Pulumi Cloud).
    pulumi_passphrase: pulumi.Output[str] | None = None
    pulumi_access_token: pulumi.Output[str] | None = None
    backend_url: str | None = None
    namespace: str | None = None
    storage_classes: Mapping[str, str] = field(default_factory=dict)
    #: Kubernetes: write the objects as YAML here instead of applying them to a cluster.
    render_yaml_to_directory: str | None = None
    #: Kubernetes: the node label that names a node's GPU (GKE's by default; ``none``: no
    #: node selector, the device request alone places the pod).
    accelerator_label: str = GKE_ACCELERATOR_LABEL
    #: Kubernetes: ``none`` (hourly cost "unknown") or ``gke`` (GKE-equivalent node prices).
    price_table: str = "none"
    #: Kubernetes: the ServiceAccount replica pods run as (its cloud credentials read
    #: s3:// / gs:// file mounts).
    service_account: str = "default"
    #: Kubernetes: the store (``s3``/``gcs``) of a file mount given by bucket name only.
    bucket_store: str = "gcs"
    #: AWS/GCP: the replicas' machine image (AMI id, GCP image); None means look it up.
    image_id: str | None = None
    #: How the agent rolls out a changed service (``rolling`` or ``blue_green``).
    update_mode: str = "rolling"
    #: Admission at the endpoint: the plain settings (components/admission.py) ...
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: ... and ``skyform:apiKeys`` as the agent's ``api_key_digests`` entries, a secret
    #: Output (None when unset). The keys themselves go nowhere.
    api_key_digests: pulumi.Output[list[dict[str, Any]]] | None = None
    #: ``skyform:fleet`` as the agent wrote it (JSON; lb_agent.control.fleet), None when unset: then
    #: the program reads the stack's last ``fleet`` output.
    fleet: str | None = None
    #: AWS/GCP: more regions replicas may be placed in besides the stack's own (replicas in
    #: another region reach the controller over its public address; docs/locations.md).
    regions: tuple[str, ...] = ()
    #: The zones replicas may be placed in (Kubernetes: ``topology.kubernetes.io/zone``
    #: values; AWS/GCP: a subset of the regions' zones). Empty: every known zone.
    zones: tuple[str, ...] = ()
    #: How many load balancers run the agent (``skyform:controllerReplicas``), resolved:
    #: the cloud's default when unset (CONTROLLER_REPLICAS_DEFAULT). Every one serves
    #: traffic; one, elected by the leader lease, autoscales and runs the ``up``s.
    controller_replicas: int = 1


#: ``skyform:controllerReplicas`` when unset, by cloud: on Kubernetes two pods cost little
#: and a lost pod then loses no endpoint; on AWS/GCP each is a VM (and a cloud load balancer
#: in front), so one unless asked.
CONTROLLER_REPLICAS_DEFAULT: Mapping[str, int] = {"kubernetes": 2, "aws": 1, "gcp": 1}
#: The most load balancers a stack may ask for (a typo such as 20 would start 20 VMs).
MAX_CONTROLLER_REPLICAS = 10


#: Keys whose value is an object. Pulumi's project config schema types only string, boolean,
#: integer and array, so these are read here but cannot be declared in Pulumi.yaml.
OBJECT_KEYS: tuple[str, ...] = ("envs", "secrets", "storageClasses")
#: Secret keys: a declared ``secret: true`` key cannot have a default, so optional secret keys
#: are read here but not declared (Pulumi.yaml says why).
SECRET_KEYS: tuple[str, ...] = ("agentToken", "pulumiPassphrase", "pulumiAccessToken",
                                "apiKeys")
#: Declared integer keys default to this value, meaning "not set" (the YAML's value).
UNSET_INT = -1


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _non_negative(config: pulumi.Config, name: str) -> int | None:
    """An optional count: absent or ``UNSET_INT`` (Pulumi.yaml's default) means not set."""
    value = config.get_int(name)
    if value is None or value == UNSET_INT:
        return None
    if value < 0:
        raise StackConfigError(
            f"{_key(name)}: must be >= 0 (or {UNSET_INT} for not set), got {value}"
        )
    return value


def _text(config: pulumi.Config, name: str) -> str | None:
    """An optional string: absent or empty (Pulumi.yaml's default) means not set."""
    return config.get(name) or None


def _string_map(raw: Any, name: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise StackConfigError(f"{_key(name)}: must be an object of NAME: value, got {raw!r}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise StackConfigError(
                f"{_key(name)}: key {key!r} must match ^[a-zA-Z_][a-zA-Z0-9_]*$"
            )
        out[key] = "" if value is None else str(value)
    return out


def _names(raw: Any, name: str) -> tuple[str, ...]:
    """A list of region or zone names (lower-case letters, digits, '-' and '.')."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, str) and _DNS_NAME.match(c)
                                            for c in raw):
        raise StackConfigError(
            f"{_key(name)}: must be a list of names such as us-east-1b, got {raw!r}")
    return tuple(dict.fromkeys(raw))


def _cidrs(raw: Any, name: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise StackConfigError(f"{_key(name)}: must be a list of CIDR strings, got {raw!r}")
    for cidr in raw:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise StackConfigError(
                f"{_key(name)}: {cidr!r} is not a CIDR (for example 203.0.113.0/24)"
            ) from None
    return tuple(raw)


def _secret_names() -> tuple[str, ...]:
    """The names (not the values) of ``skyform:secrets``, read without unwrapping the secret."""
    raw = pulumi.runtime.get_config(_key("secrets"))
    try:
        names = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise StackConfigError(f"{_key('secrets')}: must be a JSON object of NAME: value") from None
    return tuple(_string_map(names, "secrets"))


def _api_key_digests() -> pulumi.Output[list[dict[str, Any]]] | None:
    """``skyform:apiKeys``, checked now (messages name the entry, never a key), as a secret
    Output of its digest entries."""
    raw = pulumi.runtime.get_config(_key("apiKeys"))
    if raw is None:
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise StackConfigError(
            f"{_key('apiKeys')}: must be a list of keys or an object NAME: key; set it with "
            f"`pulumi config set --secret --path '{_key('apiKeys')}[0]' <key>`") from None
    try:
        parse_api_keys(value, _key("apiKeys"))
    except ValueError as exc:
        raise StackConfigError(str(exc)) from None
    return pulumi.Output.secret(value).apply(
        lambda v: digest_entries(parse_api_keys(v, _key("apiKeys"))))


def _rate(config: pulumi.Config, name: str) -> float:
    """A requests-per-second string (Pulumi's schema has no number type); empty: 0, off."""
    text = _text(config, name)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        raise StackConfigError(
            f"{_key(name)}: must be a number of requests per second >= 0 (for example 5 or "
            f"0.5), got {text!r}")
    return value


def controller_replicas(config: pulumi.Config, cloud: str) -> int:
    """``skyform:controllerReplicas``: the number of load balancers, 1 to
    MAX_CONTROLLER_REPLICAS; ``UNSET_INT`` (Pulumi.yaml's default) means the cloud's default."""
    value = config.get_int("controllerReplicas")
    if value is None or value == UNSET_INT:
        return CONTROLLER_REPLICAS_DEFAULT[cloud]
    if not 1 <= value <= MAX_CONTROLLER_REPLICAS:
        raise StackConfigError(
            f"stacks/Pulumi.{pulumi.get_stack()}.yaml: {_key('controllerReplicas')}: must be a "
            f"whole number from 1 to {MAX_CONTROLLER_REPLICAS} (the load balancers running the "
            f"agent; {UNSET_INT} for the cloud's default, "
            f"{CONTROLLER_REPLICAS_DEFAULT[cloud]} on {cloud}), got {value}")
    return value


def _admission(config: pulumi.Config, api_keys: bool) -> AdmissionSettings:
    return AdmissionSettings(
        api_keys=api_keys,
        rate_limit_rps=_rate(config, "rateLimitRps"),
        rate_limit_burst=_non_negative(config, "rateLimitBurst") or 0,
        queue_wait_seconds=_non_negative(config, "queueWaitSeconds"),
        max_in_flight_per_replica=_non_negative(config, "maxInFlightPerReplica") or 0,
        trusted_proxies=_cidrs(config.get_object("trustedProxies"), "trustedProxies") or (),
    )


def read_stack_settings(config: pulumi.Config | None = None) -> StackSettings:
    """Read and check every ``skyform:*`` key; raise ``StackConfigError`` naming a bad key."""
    try:
        return _read(config or pulumi.Config(NAMESPACE))
    except pulumi.ConfigTypeError as exc:  # a value of the wrong type (names the key)
        raise StackConfigError(str(exc)) from None


def _read(config: pulumi.Config) -> StackSettings:
    service = config.get("service")
    if not service:
        raise StackConfigError(
            f"{_key('service')}: not set; run `pulumi config set {_key('service')} service.yaml`"
        )
    cloud = config.get("cloud")
    if cloud not in TARGET_CLOUDS:
        raise StackConfigError(
            f"{_key('cloud')}: must be one of {', '.join(TARGET_CLOUDS)}, got {cloud!r}"
        )
    min_r = _non_negative(config, "minReplicas")
    max_r = _non_negative(config, "maxReplicas")
    if min_r is not None and max_r is not None and max_r < min_r:
        raise StackConfigError(
            f"{_key('maxReplicas')}: {max_r} is below {_key('minReplicas')} {min_r}"
        )
    secret_keys: tuple[str, ...] = ()
    secrets: pulumi.Output[dict[str, str]] | None = None
    # The secret object is read once with require-free access; its key names are not secret
    # (they are the YAML's names), only the values are.
    raw_secret = config.get_secret_object("secrets")
    if raw_secret is not None:
        secret_keys = _secret_names()
        secrets = pulumi.Output.secret(raw_secret).apply(lambda v: _string_map(v, "secrets"))
    classes = _string_map(config.get_object("storageClasses"), "storageClasses")
    label = config.get("acceleratorLabel") or GKE_ACCELERATOR_LABEL
    if label != "none" and not is_k8s_label_key(label):
        raise StackConfigError(
            f"{_key('acceleratorLabel')}: {label!r} is not a Kubernetes label key (for example "
            f"{GKE_ACCELERATOR_LABEL} or nvidia.com/gpu.product), nor 'none'"
        )
    account = config.get("serviceAccount") or "default"
    if not _DNS_NAME.match(account):
        raise StackConfigError(
            f"{_key('serviceAccount')}: {account!r} is not a ServiceAccount name (lower-case "
            "letters, digits, '-' and '.')"
        )
    store = config.get("bucketStore") or "gcs"
    if store not in ("s3", "gcs"):
        raise StackConfigError(f"{_key('bucketStore')}: must be s3 or gcs, got {store!r}")
    prices = config.get("priceTable") or "none"
    if prices not in PRICE_TABLES:
        raise StackConfigError(
            f"{_key('priceTable')}: must be one of {', '.join(PRICE_TABLES)}, got {prices!r}"
        )
    mode = config.get("updateMode") or "rolling"
    if mode not in UPDATE_MODES:
        raise StackConfigError(
            f"{_key('updateMode')}: must be one of {', '.join(UPDATE_MODES)}, got {mode!r}"
        )
    api_key_digests = _api_key_digests()
    return StackSettings(
        service=service,
        cloud=cloud,  # checked against TARGET_CLOUDS above
        region=_text(config, "region"),
        zone=_text(config, "zone"),
        min_replicas=min_r,
        max_replicas=max_r,
        replicas=_non_negative(config, "replicas"),
        on_demand_replicas=_non_negative(config, "onDemandReplicas"),
        candidate=_non_negative(config, "candidate"),
        envs=_string_map(config.get_object("envs"), "envs"),
        secret_keys=secret_keys,
        secrets=secrets,
        controller_instance_type=_text(config, "controllerInstanceType"),
        allowed_cidrs=_cidrs(config.get_object("allowedCidrs"), "allowedCidrs") or ("0.0.0.0/0",),
        ssh_cidrs=_cidrs(config.get_object("sshCidrs"), "sshCidrs") or (),
        admin_cidrs=_cidrs(config.get_object("adminCidrs"), "adminCidrs") or (),
        agent_token=config.get_secret("agentToken"),
        pulumi_passphrase=config.get_secret("pulumiPassphrase"),
        pulumi_access_token=config.get_secret("pulumiAccessToken"),
        backend_url=_text(config, "backendUrl"),
        namespace=_text(config, "namespace"),
        storage_classes=classes,
        render_yaml_to_directory=_text(config, "renderYamlToDirectory"),
        accelerator_label=label,
        price_table=prices,
        service_account=account,
        bucket_store=store,
        image_id=_text(config, "imageId"),
        update_mode=mode,
        admission=_admission(config, api_key_digests is not None),
        api_key_digests=api_key_digests,
        fleet=_text(config, "fleet"),
        regions=_names(config.get_object("regions"), "regions"),
        zones=_names(config.get_object("zones"), "zones"),
        controller_replicas=controller_replicas(config, cloud),
    )
