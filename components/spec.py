"""The parsed service: typed, immutable objects for a SkyServe service YAML.

This module owns the *shape* of a parsed service and its normalized JSON form (what
``skyform validate --json`` prints and what the controller agent reads). It does no parsing
and no validation: ``components.parser`` builds these objects, and only valid ones.

The JSON form follows SkyPilot's own serialisation (``service_spec`` and ``resources`` in the
corpus ``GROUND_TRUTH.json``), so a SkyServe user can compare the two directly.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lb_agent.contract import constants

#: The clouds skyform deploys to.
TargetCloud = Literal["aws", "gcp", "kubernetes"]
TARGET_CLOUDS: tuple[TargetCloud, ...] = ("aws", "gcp", "kubernetes")

#: A JSON value (post_data, file_mounts entries, ...).
JSONValue = Any


@dataclass(frozen=True)
class ReadinessProbe:
    """``service.readiness_probe``: GET ``path`` or POST ``post_data`` as JSON."""

    path: str = constants.DEFAULT_READINESS_PATH
    initial_delay_seconds: float = constants.DEFAULT_INITIAL_DELAY_SECONDS
    timeout_seconds: float = constants.DEFAULT_READINESS_PROBE_TIMEOUT_SECONDS
    post_data: JSONValue | None = None
    headers: Mapping[str, str] | None = None

    @property
    def method(self) -> str:
        return "GET" if self.post_data is None else "POST"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "initial_delay_seconds": self.initial_delay_seconds,
            "timeout_seconds": self.timeout_seconds,
        }
        if self.post_data is not None:
            out["post_data"] = self.post_data
        if self.headers is not None:
            out["headers"] = dict(self.headers)
        return out


@dataclass(frozen=True)
class ReplicaPolicy:
    """``service.replica_policy`` (or the ``replicas: N`` shorthand, where only min is set).

    Optional fields stay ``None`` when the YAML does not give them, exactly as SkyServe keeps
    them, so the JSON form matches SkyPilot's. Use the ``effective_*`` properties for the
    values the autoscaler works with.
    """

    min_replicas: int = constants.DEFAULT_MIN_REPLICAS
    max_replicas: int | None = None
    target_qps_per_replica: float | Mapping[str, float] | None = None
    upscale_delay_seconds: float | None = None
    downscale_delay_seconds: float | None = None
    num_overprovision: int | None = None
    base_ondemand_fallback_replicas: int | None = None
    dynamic_ondemand_fallback: bool | None = None
    spot_placer: str | None = None

    @property
    def effective_max_replicas(self) -> int:
        return self.min_replicas if self.max_replicas is None else self.max_replicas

    @property
    def base_ondemand(self) -> int:
        return self.base_ondemand_fallback_replicas or 0

    @property
    def use_ondemand_fallback(self) -> bool:
        return bool(self.dynamic_ondemand_fallback) or self.base_ondemand > 0

    @property
    def autoscaling(self) -> bool:
        return self.target_qps_per_replica is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"min_replicas": self.min_replicas}
        for key in (
            "max_replicas",
            "target_qps_per_replica",
            "upscale_delay_seconds",
            "downscale_delay_seconds",
            "num_overprovision",
            "base_ondemand_fallback_replicas",
            "dynamic_ondemand_fallback",
            "spot_placer",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value) if isinstance(value, Mapping) else value
        return out


@dataclass(frozen=True)
class TLSConfig:
    """``service.tls``: paths of the key and certificate the load balancer serves HTTPS with."""

    keyfile: str
    certfile: str


@dataclass(frozen=True)
class ServiceSpec:
    """The ``service:`` section, defaults filled in."""

    readiness_probe: ReadinessProbe = field(default_factory=ReadinessProbe)
    replica_policy: ReplicaPolicy = field(default_factory=ReplicaPolicy)
    #: As written (lower-cased); ``None`` when the YAML does not name one.
    load_balancing_policy: str | None = None
    #: ``service.ports``: the main replica port when resources open several.
    ports: int | None = None
    tls: TLSConfig | None = None
    #: True when the YAML used the ``replicas: N`` shorthand.
    fixed_replicas: bool = False
    #: True where the YAML says ``pool: false`` (kept in the parsed spec, as SkyPilot does;
    #: ``pool: true`` is refused).
    pool_false: bool = False

    @property
    def effective_load_balancing_policy(self) -> str:
        return self.load_balancing_policy or constants.DEFAULT_LOAD_BALANCING_POLICY

    def autoscaling_policy_str(self) -> str:
        """SkyServe's display string: ``Fixed 2 replicas`` / ``Autoscaling from 1 to 3 ...``."""
        policy = self.replica_policy
        low, high = policy.min_replicas, policy.max_replicas
        if high is None or low == high:
            return f"Fixed {low} replica{'' if low == 1 else 's'}"
        extra = (
            f" with {policy.num_overprovision} overprovisioned replicas"
            if policy.num_overprovision is not None
            else ""
        )
        return (
            f"Autoscaling from {low} to {high} replica{'' if high == 1 else 's'}{extra} "
            f"(target QPS per replica: {policy.target_qps_per_replica})"
        )

    def spot_policy_str(self) -> str:
        """SkyServe's display string for the spot / on-demand mixture (``spot_policy_str``)."""
        policy = self.replica_policy
        base = policy.base_ondemand_fallback_replicas
        parts: list[str] = []
        if policy.dynamic_ondemand_fallback:
            if policy.spot_placer == "dynamic_fallback":
                return "SpotHedge"
            parts.append("Dynamic on-demand fallback")
            if base is not None:
                parts.append(f"with {base} base on-demand replicas")
        elif base is not None:
            parts.append(
                f"Static spot mixture with {base} base on-demand replica{'' if base == 1 else 's'}"
            )
        if policy.spot_placer is not None:
            if not parts:
                parts.append("Spot placement")
            parts.append(f"with {policy.spot_placer} placer")
        return " ".join(parts) if parts else "No spot policy"

    def probe_str(self) -> str:
        """SkyServe's display string: ``GET /path`` or ``POST /path {json}``."""
        probe = self.readiness_probe
        out = f"{probe.method} {probe.path}"
        if probe.post_data is not None:
            out += f" {json.dumps(probe.post_data)}"
        if probe.headers:
            out += " with custom headers"
        return out

    def to_json(self) -> dict[str, Any]:
        """The same shape as ``service_spec`` in the corpus ``GROUND_TRUTH.json``."""
        out: dict[str, Any] = {
            "readiness_probe": self.readiness_probe.to_json(),
            "replica_policy": self.replica_policy.to_json(),
        }
        if self.load_balancing_policy is not None:
            out["load_balancing_policy"] = self.load_balancing_policy
        if self.ports is not None:
            out["ports"] = self.ports
        if self.tls is not None:
            out["tls"] = {"keyfile": self.tls.keyfile, "certfile": self.tls.certfile}
        if self.pool_false:
            out["pool"] = False
        return out


@dataclass(frozen=True)
class Candidate:
    """One resources candidate: exactly one accelerator type and count (or none: CPU-only).

    ``any_of`` / ``ordered`` / multi-accelerator forms expand to several candidates.
    Strings keep SkyPilot's normalisation (``cpus: "4+"``, ``memory: "32.0+"``, ports as
    merged ranges such as ``"8080-8081"``).
    """

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    #: Accelerator name as written (``A10g``), as SkyPilot keeps it; the catalog's
    #: ``canonical_accelerator`` gives its canonical spelling (``A10G``).
    accelerator: str | None = None
    accelerator_count: int | float | None = None
    cpus: str | None = None
    memory: str | None = None
    instance_type: str | None = None
    #: ``None`` when not written (serialised only when written, as SkyPilot does).
    use_spot: bool | None = None
    disk_size: int = constants.DEFAULT_DISK_SIZE_GB
    disk_tier: str | None = None
    network_tier: str | None = None
    ports: tuple[str, ...] = ()
    labels: Mapping[str, str] | None = None
    #: ``{region_or_None: image}``; ``docker:<image>`` means a container image.
    image_id: Mapping[str | None, str] | None = None
    job_recovery: Mapping[str, Any] | None = None
    #: ``accelerator_args`` as written (TPU settings); skyform does not place TPUs.
    accelerator_args: Mapping[str, Any] | None = None
    #: SkyPilot's job priority (-1000..1000), kept as written; a service does not use it.
    priority: int | None = None
    #: SkyPilot's autostop as it re-serialises it (False, or idle_minutes/down/...); a
    #: service's replicas do not stop themselves, so skyform only keeps it.
    autostop: Mapping[str, Any] | Literal[False] | None = None

    @property
    def spot(self) -> bool:
        return bool(self.use_spot)

    @property
    def infra(self) -> str | None:
        """``cloud[/region[/zone]]`` as SkyPilot re-serialises it (``*`` for a missing part)."""
        if self.cloud is None and self.region is None and self.zone is None:
            return None
        parts = [self.cloud or "*", self.region or "*", self.zone or "*"]
        while parts and parts[-1] == "*":
            parts.pop()
        return "/".join(parts)

    def port_numbers(self) -> tuple[int, ...]:
        """Every port this candidate opens, ranges expanded."""
        out: list[int] = []
        for item in self.ports:
            lo, _, hi = item.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """The same shape as a ``resources`` entry in the corpus ``GROUND_TRUTH.json``."""
        out: dict[str, Any] = {}
        if self.infra is not None:
            out["infra"] = self.infra
        if self.instance_type is not None:
            out["instance_type"] = self.instance_type
        if self.cpus is not None:
            out["cpus"] = self.cpus
        if self.memory is not None:
            out["memory"] = self.memory
        if self.accelerator is not None:
            out["accelerators"] = {self.accelerator: self.accelerator_count}
        if self.accelerator_args is not None:
            out["accelerator_args"] = dict(self.accelerator_args)
        if self.use_spot is not None:
            out["use_spot"] = self.use_spot
        if self.job_recovery is not None:
            out["job_recovery"] = dict(self.job_recovery)
        out["disk_size"] = self.disk_size
        if self.disk_tier is not None:
            out["disk_tier"] = self.disk_tier
        if self.network_tier is not None:
            out["network_tier"] = self.network_tier
        if self.ports:
            out["ports"] = list(self.ports)
        if self.labels is not None:  # SkyPilot keeps an empty mapping as written
            out["labels"] = dict(self.labels)
        if self.image_id is not None:
            out["image_id"] = {("null" if k is None else k): v for k, v in self.image_id.items()}
        if self.priority is not None:
            out["priority"] = self.priority
        if self.autostop is not None:
            out["autostop"] = False if self.autostop is False else dict(self.autostop)
        return out


SECRET_MASK = "<secret>"


@dataclass(frozen=True)
class ServiceTask:
    """A whole, valid service YAML: the service section plus the task it serves."""

    #: Path of the YAML file this came from.
    source: str
    service: ServiceSpec
    candidates: tuple[Candidate, ...]
    #: True for a preference-ordered list (``ordered`` or a list of accelerators).
    ordered: bool
    #: The replica port the load balancer sends traffic to.
    service_port: int
    name: str | None = None
    num_nodes: int = 1
    envs: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    setup: str | None = None
    run: str | None = None
    workdir: str | Mapping[str, Any] | None = None
    file_mounts: Mapping[str, Any] | None = None

    @property
    def use_ondemand_fallback(self) -> bool:
        return self.service.replica_policy.use_ondemand_fallback

    @property
    def load_balancing_policy(self) -> str:
        return self.service.effective_load_balancing_policy

    def to_json(self, *, reveal_secrets: bool = False, secret_refs: bool = False
                ) -> dict[str, Any]:
        """The normalized spec: ``skyform validate --json`` and the agent's ``service`` config.

        Secret values are masked unless ``reveal_secrets``; they never leave the process in
        plain text by default. With ``secret_refs`` a secret value substituted into the
        service section, workdir or file mounts becomes ``${NAME}`` (its secret's name)
        instead of the mask, so the controller agent can put the value back from its
        secrets file (``secrets_file``) without the config holding it.
        """
        secrets = (
            dict(self.secrets)
            if reveal_secrets
            else {key: SECRET_MASK for key in self.secrets}
        )
        # ``$SECRET`` substituted into the service section (probe headers) or file mounts
        # is masked too, unless revealed.
        hide: Callable[[Any], Any]
        if reveal_secrets:
            hide = lambda value: value  # noqa: E731
        elif secret_refs:
            hide = functools.partial(self._mask_secret_values, refs=True)
        else:
            hide = self._mask_secret_values
        return {
            "source": self.source,
            "name": self.name,
            "service_spec": hide(self.service.to_json()),
            "service_port": self.service_port,
            "load_balancing_policy": self.load_balancing_policy,
            "use_ondemand_fallback": self.use_ondemand_fallback,
            "resources_container": "list" if self.ordered else "set",
            "resources": [c.to_json() for c in self.candidates],
            "num_nodes": self.num_nodes,
            "envs": dict(self.envs),
            "secrets": secrets,
            "setup": self.setup,
            "run": self.run,
            "workdir": hide(self.workdir),
            "file_mounts": hide(dict(self.file_mounts)) if self.file_mounts is not None else None,
        }

    def _mask_secret_values(self, value: Any, *, refs: bool = False) -> Any:
        """``value`` with every secret value (4+ characters) inside a string masked, or with
        ``refs`` replaced by ``${NAME}``; longer values first so a value containing another
        is replaced whole."""
        secrets = sorted(((v, k) for k, v in self.secrets.items() if len(v) >= 4),
                         key=lambda item: len(item[0]), reverse=True)
        if not secrets:
            return value
        if isinstance(value, str):
            # One pass, so a replacement is never searched again for another value.
            names = {secret: name for secret, name in reversed(secrets)}
            pattern = "|".join(re.escape(secret) for secret, _ in secrets)
            return re.sub(pattern, lambda m: f"${{{names[m.group(0)]}}}" if refs
                          else SECRET_MASK, value)
        if isinstance(value, list):
            return [self._mask_secret_values(v, refs=refs) for v in value]
        if isinstance(value, Mapping):
            return {k: self._mask_secret_values(v, refs=refs) for k, v in value.items()}
        return value
