"""Typed access to the ``skyform:*`` stack config (the schema is declared in Pulumi.yaml).

This module owns reading and checking the stack config, and nothing else: every key the
program understands is read here, once, into a frozen pydantic ``StackSettings`` (fields named
in Python, aliased to the config keys; one validator per rule, the same style as the agent's
config in lb_agent/contract.py). Secret values (``skyform:secrets``, ``skyform:agentToken``,
``skyform:apiKeys``) stay ``pulumi.Output`` secrets; they are never turned into plain strings
in this process (``skyform:apiKeys`` is checked as read, and only its SHA-256 digests leave
it, still a secret Output).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

import pulumi
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.admission import AdmissionSettings, digest_entries, parse_api_keys
from components.catalog.data import GKE_ACCELERATOR_LABEL
from components.clouds.common import is_k8s_label_key
from components.spec import TARGET_CLOUDS, TargetCloud
from lb_agent.contract import UPDATE_MODES

PRICE_TABLES = ("none", "gke")
BUCKET_STORES = ("s3", "gcs")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

NAMESPACE = "skyform"
#: Declared integer keys default to this value, meaning "not set" (the YAML's value).
UNSET_INT = -1
#: ``skyform:controllerReplicas`` when unset, by cloud: on Kubernetes two pods cost little
#: and a lost pod then loses no endpoint; on AWS/GCP each is a VM (and a cloud load balancer
#: in front), so one unless asked.
CONTROLLER_REPLICAS_DEFAULT: Mapping[str, int] = {"kubernetes": 2, "aws": 1, "gcp": 1}
#: The most load balancers a stack may ask for (a typo such as 20 would start 20 VMs).
MAX_CONTROLLER_REPLICAS = 10


class StackConfigError(Exception):
    """A stack config value is missing or invalid; the message names the key and what is valid."""


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


# -- one rule each (a ValueError's text follows the key in the message) ----------------------
def _unset_int(value: Any) -> Any:
    """Absent or ``UNSET_INT`` (Pulumi.yaml's default) means not set."""
    return None if value is None or value == UNSET_INT or value == str(UNSET_INT) else value


def _non_negative(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise ValueError(f"must be >= 0 (or {UNSET_INT} for not set), got {value}")
    return value


def _empty_is_unset(value: Any) -> Any:
    """An optional string: absent or empty (Pulumi.yaml's default) means not set."""
    return value or None


def _string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be an object of NAME: value, got {value!r}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise ValueError(f"key {key!r} must match {_ENV_NAME.pattern}")
        out[key] = "" if item is None else str(item)
    return out


def _names(value: Any) -> tuple[str, ...]:
    """A list of region or zone names (lower-case letters, digits, '-' and '.')."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) and _DNS_NAME.match(c)
                                              for c in value):
        raise ValueError(f"must be a list of names such as us-east-1b, got {value!r}")
    return tuple(dict.fromkeys(value))


def _cidrs(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValueError(f"must be a list of CIDR strings, got {value!r}")
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not a CIDR (for example 203.0.113.0/24)") from None
    return tuple(value)


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return AfterValidator(check)


def _rate(value: Any) -> float:
    """A requests-per-second string (Pulumi's schema has no number type); empty: 0, off."""
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not (number >= 0 and number != float("inf")):
        raise ValueError("must be a number of requests per second >= 0 (for example 5 or "
                         f"0.5), got {value!r}")
    return number


def _target_cloud(value: Any) -> TargetCloud:
    if value not in TARGET_CLOUDS:
        raise ValueError(f"must be one of {', '.join(TARGET_CLOUDS)}, got {value!r}")
    cloud: TargetCloud = value
    return cloud


Count = Annotated[int | None, BeforeValidator(_unset_int), AfterValidator(_non_negative)]
Text = Annotated[str | None, BeforeValidator(_empty_is_unset)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
Cidrs = Annotated[tuple[str, ...] | None, BeforeValidator(_cidrs)]
StringMap = Annotated[Mapping[str, str], BeforeValidator(_string_map)]


class StackSettings(BaseModel):
    """Everything the program reads from the stack config, typed and checked.

    Built by ``read_stack_settings`` from the config keys (the aliases); tests build it by
    field name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              arbitrary_types_allowed=True, alias_generator=to_camel)

    service: str = Field(min_length=1)
    cloud: Annotated[TargetCloud, PlainValidator(_target_cloud)]
    region: Text = None
    zone: Text = None
    min_replicas: Count = None
    max_replicas: Count = None
    replicas: Count = None
    on_demand_replicas: Count = None
    candidate: Count = None
    envs: StringMap = Field(default_factory=dict)
    #: Names of the secret overrides (values live only in ``secrets``).
    secret_keys: tuple[str, ...] = ()
    #: ``skyform:secrets`` as a secret Output of a dict, or None when unset.
    secrets: pulumi.Output[dict[str, str]] | None = None
    controller_instance_type: Text = None
    allowed_cidrs: Annotated[tuple[str, ...], BeforeValidator(
        lambda v: _cidrs(v) or ("0.0.0.0/0",))] = ("0.0.0.0/0",)
    ssh_cidrs: Annotated[tuple[str, ...], BeforeValidator(lambda v: _cidrs(v) or ())] = ()
    #: AWS/GCP: CIDRs allowed to the agent's admin port (``skyform status --stack``).
    admin_cidrs: Annotated[tuple[str, ...], BeforeValidator(lambda v: _cidrs(v) or ())] = ()
    #: ``skyform:agentToken`` as a secret Output, or None (then one is generated).
    agent_token: pulumi.Output[str] | None = None
    #: ``skyform:pulumiPassphrase`` / ``pulumiAccessToken``: what the controller's own
    #: ``pulumi up`` authenticates with (passphrase secrets provider; Pulumi Cloud).
    pulumi_passphrase: pulumi.Output[str] | None = None
    pulumi_access_token: pulumi.Output[str] | None = None
    backend_url: Text = None
    namespace: Text = None
    storage_classes: StringMap = Field(default_factory=dict)
    #: Kubernetes: write the objects as YAML here instead of applying them to a cluster.
    render_yaml_to_directory: Text = None
    #: Kubernetes: the node label that names a node's GPU (GKE's by default; ``none``: no
    #: node selector, the device request alone places the pod).
    accelerator_label: Annotated[str, BeforeValidator(
        lambda v: v or GKE_ACCELERATOR_LABEL)] = GKE_ACCELERATOR_LABEL
    #: Kubernetes: ``none`` (hourly cost "unknown") or ``gke`` (GKE-equivalent node prices).
    price_table: Annotated[str, BeforeValidator(lambda v: v or "none"),
                           _one_of(PRICE_TABLES)] = "none"
    #: Kubernetes: the ServiceAccount replica pods run as (its cloud credentials read
    #: s3:// / gs:// file mounts).
    service_account: Annotated[str, BeforeValidator(lambda v: v or "default")] = "default"
    #: Kubernetes: the store (``s3``/``gcs``) of a file mount given by bucket name only.
    bucket_store: Annotated[str, BeforeValidator(lambda v: v or "gcs"),
                            AfterValidator(lambda v: _bucket_store(v))] = "gcs"
    #: AWS/GCP: the replicas' machine image (AMI id, GCP image); None means look it up.
    image_id: Text = None
    #: How the agent rolls out a changed service (``rolling`` or ``blue_green``).
    update_mode: Annotated[str, BeforeValidator(lambda v: v or "rolling"),
                           _one_of(UPDATE_MODES)] = "rolling"
    #: Admission at the endpoint: the plain settings (components/admission.py) ...
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    #: ... and ``skyform:apiKeys`` as the agent's ``api_key_digests`` entries, a secret
    #: Output (None when unset). The keys themselves go nowhere.
    api_key_digests: pulumi.Output[list[dict[str, Any]]] | None = None
    #: ``skyform:fleet`` as the agent wrote it (JSON; lb_agent.control.fleet), None when
    #: unset: then the program reads the stack's last ``fleet`` output.
    fleet: Text = None
    #: AWS/GCP: more regions replicas may be placed in besides the stack's own (replicas in
    #: another region reach the controller at its private address: AWS over a peered network
    #: of the stack's, GCP over the global VPC network; docs/locations.md).
    regions: Names = ()
    #: The zones replicas may be placed in (Kubernetes: ``topology.kubernetes.io/zone``
    #: values; AWS/GCP: a subset of the regions' zones). Empty: every known zone.
    zones: Names = ()
    #: How many load balancers run the agent (``skyform:controllerReplicas``), resolved: the
    #: cloud's default when unset (CONTROLLER_REPLICAS_DEFAULT). Every one serves traffic;
    #: one, elected by the leader lease, autoscales and runs the ``up``s.
    controller_replicas: int = Field(default=UNSET_INT, validate_default=True)

    @field_validator("controller_replicas", mode="before")
    @classmethod
    def _load_balancers(cls, v: Any, info: ValidationInfo) -> int:
        cloud = str(info.data.get("cloud", ""))
        default = CONTROLLER_REPLICAS_DEFAULT.get(cloud, 1)
        if _unset_int(v) is None:
            return default
        try:
            count = int(v) if not isinstance(v, bool | float) else -2
        except (TypeError, ValueError):
            count = -2
        if not 1 <= count <= MAX_CONTROLLER_REPLICAS:
            raise ValueError(
                f"must be a whole number from 1 to {MAX_CONTROLLER_REPLICAS} (the load "
                f"balancers running the agent; {UNSET_INT} for the cloud's default, {default} "
                f"on {cloud}), got {v}")
        return count

    @field_validator("accelerator_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if v != "none" and not is_k8s_label_key(v):
            raise ValueError(f"{v!r} is not a Kubernetes label key (for example "
                             f"{GKE_ACCELERATOR_LABEL} or nvidia.com/gpu.product), nor 'none'")
        return v

    @field_validator("service_account")
    @classmethod
    def _account(cls, v: str) -> str:
        if not _DNS_NAME.match(v):
            raise ValueError(f"{v!r} is not a ServiceAccount name (lower-case letters, "
                             "digits, '-' and '.')")
        return v

    @model_validator(mode="after")
    def _replica_bounds(self) -> StackSettings:
        lo, hi = self.min_replicas, self.max_replicas
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(f"maxReplicas: {hi} is below {_key('minReplicas')} {lo}")
        return self


def _bucket_store(value: str) -> str:
    if value not in BUCKET_STORES:
        raise ValueError(f"must be s3 or gcs, got {value!r}")
    return value


class _Admission(BaseModel):
    """The endpoint admission keys (components/admission.py's settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel)

    rate_limit_rps: Annotated[float, BeforeValidator(_rate)] = 0.0
    rate_limit_burst: Count = None
    queue_wait_seconds: Count = None
    max_in_flight_per_replica: Count = None
    trusted_proxies: Cidrs = None

    def settings(self, api_keys: bool) -> AdmissionSettings:
        return AdmissionSettings(
            api_keys=api_keys,
            rate_limit_rps=self.rate_limit_rps,
            rate_limit_burst=self.rate_limit_burst or 0,
            queue_wait_seconds=self.queue_wait_seconds,
            max_in_flight_per_replica=self.max_in_flight_per_replica or 0,
            trusted_proxies=self.trusted_proxies or (),
        )


def _config_error(exc: ValidationError) -> StackConfigError:
    """The first problem as ``skyform:<key>: <what is wrong and what is valid>``."""
    err = exc.errors(include_url=False)[0]
    cause = (err.get("ctx") or {}).get("error")
    text = str(cause) if isinstance(cause, ValueError) else err["msg"]
    loc = [str(part) for part in err["loc"]]
    if not loc:  # a model rule: its text starts with the key
        key, _, text = text.partition(": ")
        return StackConfigError(f"{_key(key)}: {text}")
    if err["type"] == "missing":
        return StackConfigError(f"{_key(loc[0])}: not set; run `pulumi config set "
                                f"{_key(loc[0])} <value>`")
    return StackConfigError(f"{_key(loc[0])}: {text}")


#: Keys whose value is an object. Pulumi's project config schema types only string, boolean,
#: integer and array, so these are read here but cannot be declared in Pulumi.yaml.
OBJECT_KEYS: tuple[str, ...] = ("envs", "secrets", "storageClasses")
#: Secret keys: a declared ``secret: true`` key cannot have a default, so optional secret keys
#: are read here but not declared (Pulumi.yaml says why).
SECRET_KEYS: tuple[str, ...] = ("agentToken", "pulumiPassphrase", "pulumiAccessToken",
                                "apiKeys")
def _secret_names() -> tuple[str, ...]:
    """The names (not the values) of ``skyform:secrets``, read without unwrapping the secret."""
    raw = pulumi.runtime.get_config(_key("secrets"))
    try:
        names = json.loads(raw) if isinstance(raw, str) else raw
        return tuple(_string_map(names))
    except json.JSONDecodeError:
        raise StackConfigError(f"{_key('secrets')}: must be a JSON object of NAME: value") from None
    except ValueError as exc:
        raise StackConfigError(f"{_key('secrets')}: {exc}") from None


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


#: Keys read as plain strings (Pulumi.yaml declares them string or integer; an integer's
#: text is parsed by the model).
_SCALAR_FIELDS = ("service", "cloud", "region", "zone", "min_replicas", "max_replicas",
                  "replicas", "on_demand_replicas", "candidate", "controller_instance_type",
                  "backend_url", "namespace", "render_yaml_to_directory", "accelerator_label",
                  "price_table", "service_account", "bucket_store", "image_id", "update_mode",
                  "fleet", "controller_replicas")
#: Keys whose value is a list or an object (JSON in the stack file).
_OBJECT_FIELDS = ("envs", "allowed_cidrs", "ssh_cidrs", "admin_cidrs", "storage_classes",
                  "regions", "zones")


def read_stack_settings(config: pulumi.Config | None = None) -> StackSettings:
    """Read and check every ``skyform:*`` key; raise ``StackConfigError`` naming a bad key."""
    try:
        return _read(config or pulumi.Config(NAMESPACE))
    except pulumi.ConfigTypeError as exc:  # a value of the wrong type (names the key)
        raise StackConfigError(str(exc)) from None
    except ValidationError as exc:
        raise _config_error(exc) from None


def _read(config: pulumi.Config) -> StackSettings:
    if not config.get("service"):
        raise StackConfigError(
            f"{_key('service')}: not set; run `pulumi config set {_key('service')} service.yaml`"
        )
    raw: dict[str, Any] = {}
    for name in _SCALAR_FIELDS:
        value = config.get(to_camel(name))
        if value is not None:
            raw[to_camel(name)] = value
    raw["cloud"] = config.get("cloud")
    for name in _OBJECT_FIELDS:
        value = config.get_object(to_camel(name))
        if value is not None:
            raw[to_camel(name)] = value
    # The secret object is read once with require-free access; its key names are not secret
    # (they are the YAML's names), only the values are.
    raw_secret = config.get_secret_object("secrets")
    if raw_secret is not None:
        raw["secretKeys"] = _secret_names()
        raw["secrets"] = pulumi.Output.secret(raw_secret).apply(_string_map)
    for name in ("agentToken", "pulumiPassphrase", "pulumiAccessToken"):
        raw[name] = config.get_secret(name)
    api_key_digests = _api_key_digests()
    admission_raw = {to_camel(name): config.get(to_camel(name))
                     for name in _Admission.model_fields if name != "trusted_proxies"}
    admission_raw["trustedProxies"] = config.get_object("trustedProxies")
    admission = _Admission.model_validate(
        {k: v for k, v in admission_raw.items() if v is not None})
    raw["admission"] = admission.settings(api_key_digests is not None)
    raw["apiKeyDigests"] = api_key_digests
    return StackSettings.model_validate(raw)
