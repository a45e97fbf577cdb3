"""The generator-agent contract: the agent config file, the fleet schema, shared constants.

``components/`` (the Pulumi program) builds an ``AgentConfigFile`` for each controller and
dumps it (``dump``) into the controller's files; the agent (lb_agent.config) validates the
same model when it loads that file and adds what only the controller knows (the token read
from its file or variable, the service secrets, the cross-field rules, the probe merged from
the service's readiness_probe). The models are pydantic v2, strict (no ``"5"`` for 5, no
``true`` for 1), unknown keys refused, immutable; a section gains a key by gaining one
annotated field.

The generator imports the agent only through this module (tests/test_import_graph.py): the
section models, the stack-config keys the agent owns, the fleet schema
(lb_agent.control.fleet, re-exported), the replica-policy rule both sides compute group caps
with (lb_agent.control.autoscaler.PolicyParams), the update modes, the API-key digest, the
replicas' registration credentials (lb_agent.credentials) and the constants
(lb_agent.constants).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lb_agent import constants, credentials
from lb_agent import constants as C
from lb_agent.control.autoscaler import PolicyParams
from lb_agent.control.fleet import (
    FLEET_KEY,
    FLEET_OUTPUT,
    GENERATION_ID_OFFSET,
    KINDS,
    ONDEMAND,
    SPOT,
    Fleet,
    FleetError,
    Generation,
    Site,
    current_generation,
    group_name,
    parse_fleet,
    parse_group,
    parse_group_key,
    replica_digest,
)
from lb_agent.control.rollout import UPDATE_MODES
from lb_agent.credentials import CREDENTIAL_ENV
from lb_agent.dataplane.admission import key_digest
from lb_agent.dataplane.limits import AdminPortLimits, Limits, PortLimits
from lb_agent.dataplane.policies import prefix_aware as PA
from lb_agent.socket_activation import PUBLIC as PUBLIC_FD_NAME

__all__ = [
    "CREDENTIAL_ENV",
    "FLEET_KEY",
    "FLEET_OUTPUT",
    "GENERATION_ID_OFFSET",
    "KINDS",
    "ONDEMAND",
    "PUBLIC_FD_NAME",
    "SPOT",
    "UPDATE_MODES",
    "AdminPortLimits",
    "Fleet",
    "FleetError",
    "Generation",
    "Limits",
    "PolicyParams",
    "PortLimits",
    "Site",
    "constants",
    "credentials",
    "current_generation",
    "group_name",
    "key_digest",
    "parse_fleet",
    "parse_group",
    "parse_group_key",
    "replica_digest",
]

#: Stack config keys the agent writes before each of its ``up``s; the project bundle leaves
#: them out of the stack file it ships (components/bundle.py). The fleet also carries the
#: service version, so a controller that lost its state starts from it.
AGENT_OWNED_KEYS = (FLEET_KEY,)
#: Validation context key: set when the agent loads the file on the controller, where the
#: files it names must exist.
ON_AGENT = "on_agent"


class _Section(BaseModel):
    """A config section: strict types, unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Listen(_Section):
    """A host/port pair the agent listens on."""

    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=C.LOAD_BALANCER_PORT, ge=0, le=65535)
    #: Bind with SO_REUSEPORT, so several agents on one machine share the port and the
    #: kernel spreads connections over them (``skyform local --lbs N``).
    reuse_port: bool = False


class AdminListen(Listen):
    """The admin API's address: 127.0.0.1 unless the config says otherwise."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=C.ADMIN_PORT, ge=0, le=65535)


def replica_id(value: str) -> str:
    """``value`` when it is a replica id (``constants.REPLICA_ID_PATTERN``), else a
    ValueError saying what one is (a pydantic field validator for the config file and the
    admin API's registration)."""
    if not re.fullmatch(C.REPLICA_ID_PATTERN, value):
        raise ValueError(f"{C.REPLICA_ID_RULE}, got {value!r}")
    return value


class StaticReplica(_Section):
    """A replica listed in the config file (``replicas:``; a bare URL string works too)."""

    url: str
    #: Empty: ``static-<i>``, its place in the list.
    replica_id: str = ""
    spot: bool = False
    accelerator: str | None = None
    version: int = Field(default=C.INITIAL_VERSION, ge=0)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("replica_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return v and replica_id(v)


class ProbeConfig(_Section):
    """Readiness probing: SkyServe's defaults, the spec's readiness_probe, then overrides."""

    path: str = C.DEFAULT_READINESS_PATH
    # Not in repr: these may hold secret values filled in from ``secrets_file``.
    post_data: Any = Field(default=None, repr=False)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout_seconds: float = Field(default=C.DEFAULT_READINESS_PROBE_TIMEOUT_SECONDS, gt=0)
    initial_delay_seconds: float = Field(default=C.DEFAULT_INITIAL_DELAY_SECONDS, ge=0)
    interval_seconds: float = Field(default=C.ENDPOINT_PROBE_INTERVAL_SECONDS, gt=0)
    failure_window_seconds: float = Field(default=C.CONSECUTIVE_FAILURE_THRESHOLD_SECONDS, ge=0)

    @field_validator("path")
    @classmethod
    def _slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"expected a path starting with '/', got {v!r}")
        return v

    @field_validator("headers", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def method(self) -> str:
        """GET, or POST when the spec gives ``post_data``."""
        return "GET" if self.post_data is None else "POST"


class ProxyConfig(_Section):
    """Proxy timeouts, retries and the optional wait queue (one field per config key)."""

    connect_timeout_seconds: float = Field(default=C.LB_CONNECT_TIMEOUT_SECONDS, gt=0)
    idle_timeout_seconds: float = Field(default=C.LB_STREAM_TIMEOUT_SECONDS, ge=0)
    max_attempts: int = Field(default=C.LB_MAX_ATTEMPTS, ge=1)
    queue_wait_seconds: float = Field(default=0.0, ge=0)
    backoff_seconds: float = Field(default=C.LB_RETRY_BACKOFF_SECONDS, ge=0)
    retry_body_limit: int = Field(default=C.LB_RETRY_BODY_LIMIT_BYTES, ge=0)
    max_connections_per_replica: int = Field(default=C.LB_MAX_CONNECTIONS_PER_REPLICA, ge=1)


class RoutingConfig(_Section):
    """Settings of the request-aware policies (``prefix_aware``; docs/routing.md)."""

    prefix_block_chars: int = Field(default=PA.DEFAULT_BLOCK_CHARS, ge=1)
    prefix_max_chars: int = Field(default=PA.DEFAULT_MAX_PREFIX_CHARS, ge=1)
    prefix_max_entries: int = Field(default=PA.DEFAULT_MAX_ENTRIES, ge=1)
    prefix_balance_abs: int = Field(default=PA.DEFAULT_BALANCE_ABS, ge=0)
    prefix_balance_rel: float = Field(default=PA.DEFAULT_BALANCE_REL, ge=0)
    #: How many matched prefix blocks outweigh one request in flight (prefix_aware's score).
    prefix_blocks_per_request: float = Field(default=PA.DEFAULT_BLOCKS_PER_REQUEST, gt=0)
    #: The rendezvous anchor (the same choice on every load balancer): how many leading blocks
    #: of a prompt name its replica (0: none), and what that is worth in requests in flight.
    prefix_anchor_blocks: int = Field(default=PA.DEFAULT_ANCHOR_BLOCKS, ge=0)
    prefix_anchor_credit: float = Field(default=PA.DEFAULT_ANCHOR_CREDIT, ge=0)
    #: What a block of prefill still owed on a replica (routed there, not finished) weighs
    #: against a matched block (0: in-flight counts only).
    prefix_owed_weight: float = Field(default=PA.DEFAULT_OWED_WEIGHT, ge=0)
    #: Session affinity (lb_agent.dataplane.affinity): the header naming a session; "" turns it off.
    session_header: str = Field(default="x-session-id", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*$")
    max_sessions: int = Field(default=100_000, ge=1)

    def policy_options(self) -> dict[str, Any]:
        """Keyword arguments for ``lb_agent.dataplane.policies.build_policy``."""
        return {
            "block_chars": self.prefix_block_chars,
            "max_prefix_chars": self.prefix_max_chars,
            "max_entries": self.prefix_max_entries,
            "balance_abs": self.prefix_balance_abs,
            "balance_rel": self.prefix_balance_rel,
            "blocks_per_request": self.prefix_blocks_per_request,
            "anchor_blocks": self.prefix_anchor_blocks,
            "anchor_credit": self.prefix_anchor_credit,
            "owed_weight": self.prefix_owed_weight,
        }


class ApiKeyDigest(_Section):
    """An accepted key given by its SHA-256 digest (the deployed agent config holds only
    these), with a name (metrics, limits) and optionally limits of its own."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Requests per second of this key (0: unlimited); unset: ``admission.rate_limit_rps``.
    rate_limit_rps: float | None = Field(default=None, ge=0)
    rate_limit_burst: int | None = Field(default=None, ge=0)


class AdmissionConfig(_Section):
    """Admission at the public endpoint (lb_agent.dataplane.admission); everything off by
    default."""

    #: Accepted ``Authorization: Bearer`` keys (empty: no key needed). Not in repr.
    api_keys: list[str] = Field(default_factory=list, repr=False)
    #: Accepted keys as SHA-256 digests, each named, optionally with its own rate limit.
    api_key_digests: list[ApiKeyDigest] = Field(default_factory=list)
    #: A file of keys, one a line (``#`` comments), added to ``api_keys``; or a JSON list of
    #: ``api_key_digests`` entries, added to those (the Kubernetes controller's mounted file).
    api_keys_file: str | None = Field(default=None, min_length=1)
    #: Forward the client's ``Authorization`` header to the replica even though admission
    #: checked it as an API key (off: a key the agent consumed stays at the agent).
    forward_api_key: bool = False
    rate_limit_rps: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=0, ge=0)
    #: Per-replica concurrency cap (0: none); at the cap requests wait in the queue.
    max_in_flight_per_replica: int = Field(default=0, ge=0)
    queue_max_depth: int = Field(default=C.LB_QUEUE_MAX_WAITERS, ge=0)
    breaker_failures: int = Field(default=0, ge=0)
    breaker_cooldown_seconds: float = Field(default=10.0, gt=0)
    breaker_successes: int = Field(default=2, ge=1)
    #: CIDRs of proxies in front of the agent (a cloud load balancer) whose
    #: ``X-Forwarded-For`` names the client (lb_agent.dataplane.forwarding.client_address).
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for i, cidr in enumerate(v):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"entry {i} {cidr!r} is not a CIDR (for example 10.0.0.0/8 "
                                 "or 2001:db8::/32)") from None
        return v

    @field_validator("api_key_digests")
    @classmethod
    def _unique(cls, v: list[ApiKeyDigest]) -> list[ApiKeyDigest]:
        for what in ("name", "sha256"):
            seen = [getattr(d, what) for d in v]
            dup = next((x for i, x in enumerate(seen) if x in seen[:i]), None)
            if dup is not None:
                shown = repr(dup) if what == "name" else "a digest"
                raise ValueError(f"{shown} is given twice; each key's {what} must be unique")
        return v

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for i, k in enumerate(v):
            if len(k) < 16 or k != k.strip():
                raise ValueError(f"key {i} must be at least 16 characters without spaces "
                                 "around it (the value is not shown)")
        return v


class TLSFiles(_Section):
    """Key and certificate the public port serves HTTPS with."""

    keyfile: str = Field(min_length=1)
    certfile: str = Field(min_length=1)

    @field_validator("keyfile", "certfile")
    @classmethod
    def _exists(cls, v: str, info: ValidationInfo) -> str:
        if not (info.context or {}).get(ON_AGENT):
            return v  # the generator names files of the controller, not of this machine
        path = os.path.expanduser(v)
        if not os.path.isfile(path):
            raise ValueError(f"file not found: {path}")
        return path


class LeaseConfig(_Section):
    """Where the service's leader lease lives when several load balancers run
    (lb_agent/control/leadership.py). ``none``: one load balancer, always the leader."""

    kind: str = Field(default="none", pattern=r"^(none|file|kubernetes|s3|gcs)$")
    #: file: the lock file's path; kubernetes: the Lease's name; s3/gcs: the object key.
    name: str = ""
    #: kubernetes: the Lease's namespace.
    namespace: str = ""
    #: s3/gcs: the stack's files bucket.
    bucket: str = ""
    duration_seconds: float = Field(default=15.0, gt=0)
    renew_seconds: float = Field(default=5.0, gt=0)
    #: This load balancer's identity in the lease (empty: $SKYFORM_LB_IDENTITY, else
    #: ``<hostname>-<pid>``; a pod's hostname is its name).
    identity: str = ""
    #: ``host:port`` where the other load balancers reach this one's admin API (empty:
    #: $SKYFORM_LB_ADDRESS, else the admin listen address, a wildcard host replaced by this
    #: host's address).
    address: str = ""


class AgentConfigFile(_Section):
    """The agent config file: what the generator builds and dumps (``dump``) and the agent
    loads (lb_agent.config.AgentConfig.from_dict adds the cross-field rules, the token and
    the secrets)."""

    service: dict[str, Any] | None = None
    public: Listen = Field(default_factory=Listen)
    admin: AdminListen = Field(default_factory=AdminListen)
    token: str | None = Field(default=None, min_length=1)
    token_file: str | None = Field(default=None, min_length=1)
    token_env: str | None = Field(default=None, min_length=1)
    policy: str | None = None
    state_file: str = Field(default=C.DEFAULT_AGENT_STATE_FILE, min_length=1)
    replicas: list[StaticReplica] = Field(default_factory=list)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    autoscaler: dict[str, Any] | None = None
    deployer: dict[str, Any] | None = None
    tls: TLSFiles | None = None
    secrets_file: str | None = Field(default=None, min_length=1)
    limits: Limits = Field(default_factory=Limits)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)

    @field_validator("replicas", mode="before")
    @classmethod
    def _urls(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"url": r} if isinstance(r, str) else r for r in v]
        return [] if v is None else v

    @field_validator("public", "admin", "proxy", "probe", "routing", "admission", "limits", "lease",
                     mode="before")
    @classmethod
    def _null_is_default(cls, v: Any) -> Any:
        return {} if v is None else v


def dump(config: AgentConfigFile) -> dict[str, Any]:
    """The file's JSON form: only what the generator set, so an unset option leaves the
    agent's default (and the file) unchanged."""
    out: dict[str, Any] = config.model_dump(mode="json", exclude_unset=True)
    return out


def dump_json(config: AgentConfigFile) -> str:
    """``dump`` as the JSON text the controller's file holds (sorted keys: stable)."""
    return json.dumps(dump(config), sort_keys=True)
