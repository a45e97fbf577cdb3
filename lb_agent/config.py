"""The agent config file (JSON or YAML): parsing, defaults and clear errors, all at once.

Shape (see docs/agent.md, "The config file"):
``service`` (normalized spec JSON, optional), ``public``/``admin`` listen addresses, ``token`` /
``token_file`` / ``token_env``, ``policy``, ``state_file``, static ``replicas``, ``probe``,
``proxy``, ``routing``, ``admission``, ``autoscaler``, ``deployer``, ``tls``, ``secrets_file``,
``limits`` (``lb_agent.dataplane.limits``). Probe settings come from the service's
``readiness_probe`` unless the ``probe`` section overrides them.

The file's shape is the contract's model (lb_agent.contract.AgentConfigFile, the one the
generator builds): pydantic v2, strict, unknown keys refused. This module loads it: it reads
the file, resolves the token, the secrets and the key file, applies the cross-field rules and
gives the agent the resolved ``AgentConfig``. Every problem of a file is collected and
reported together (``ConfigError.issues``), each naming the field path
(``proxy.max_attempts``, ``replicas[0].url``) and what is valid. The defaults are safe: the
admin API listens on 127.0.0.1 unless ``admin.host`` says otherwise.

``secrets_file`` (a JSON object ``{NAME: value}``, fetched by the controller from the secret
store) fills ``${NAME}`` / ``$NAME`` in the probe's path, headers and post_data strings, so a
probe like ``Authorization: Bearer $HF_TOKEN`` works while the config file only holds the
name. ``service`` keeps the config-file form; the real values live only in ``probe``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from lb_agent import constants as C
from lb_agent.contract import (
    ON_AGENT,
    AdminListen,
    AdmissionConfig,
    AgentConfigFile,
    LeaseConfig,
    Limits,
    Listen,
    ProbeConfig,
    ProxyConfig,
    RoutingConfig,
    StaticReplica,
    TLSFiles,
)


class ConfigError(Exception):
    """A bad agent config: names the file, each bad field and what would be valid.

    ``issues`` holds every (field, message) found; ``field``/``message`` are the first."""

    def __init__(self, field_path: str, message: str, file: str | None = None,
                 issues: list[tuple[str, str]] | None = None) -> None:
        self.file = file
        self.issues = list(issues) if issues else [(field_path, message)]
        self.field, self.message = self.issues[0]
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return "\n".join(f"{where}{f}: {m}" for f, m in self.issues)


class ConfigFileError(ConfigError):
    """The config file itself is missing, a directory or unreadable (exit 1, not 2)."""

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def describe_file_error(exc: OSError, what: str = "file") -> str:
    """The CLI's words for a file that cannot be read (the same in every subcommand)."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory, not a {what}"
    return f"cannot read the file: {exc.strerror or exc}"


@dataclass(frozen=True)
class AgentConfig:
    """The whole, validated agent configuration."""

    service: dict[str, Any] | None = None
    public: Listen = field(default_factory=Listen)
    # The admin API is never public unless the config asks (the cloud programs set it).
    admin: Listen = field(default_factory=AdminListen)
    # Not in repr: the admin bearer token, and the deployer's env (secret values locally).
    token: str = field(default="", repr=False)
    policy: str = C.DEFAULT_LOAD_BALANCING_POLICY
    state_file: str = C.DEFAULT_AGENT_STATE_FILE
    replicas: tuple[StaticReplica, ...] = ()
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig, repr=False)
    #: Seconds a request waits for a replica (``proxy.queue_wait_seconds``, or
    #: LB_SCALE_FROM_ZERO_QUEUE_SECONDS when the service may scale to zero and it is unset).
    queue_wait_seconds: float = 0.0
    autoscaler: dict[str, Any] | None = None
    deployer: dict[str, Any] | None = field(default=None, repr=False)
    tls: TLSFiles | None = None
    source: str | None = None
    #: The service secrets file the probe's ``${NAME}`` references were filled from.
    secrets_file: str | None = None
    #: The ``limits`` section (lb_agent.dataplane.limits).
    limits: Limits = field(default_factory=Limits)
    #: The ``lease`` section: where the leader lease of several load balancers lives.
    lease: LeaseConfig = field(default_factory=LeaseConfig)

    @property
    def autoscaler_enabled(self) -> bool:
        """True when the ``autoscaler`` section is present and not ``enabled: false``."""
        return self.autoscaler is not None and bool(self.autoscaler.get("enabled", True))

    @property
    def target_qps_per_replica(self) -> float | dict[str, float] | None:
        """``replica_policy.target_qps_per_replica``: a number, a per-accelerator map, or None."""
        if not self.service:
            return None
        spec = self.service.get("service_spec") or {}
        value = (spec.get("replica_policy") or {}).get("target_qps_per_replica")
        if isinstance(value, dict):
            return {str(k): float(v) for k, v in value.items()}
        return None if value is None else float(value)

    def replace(self, **changes: Any) -> AgentConfig:
        """A copy with ``changes`` applied (tests and quick mode use it)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str) -> AgentConfig:
        """Read and validate a JSON or YAML config file."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigFileError(
                "<file>", describe_file_error(exc, "agent config file"), path
            ) from None
        except UnicodeDecodeError:
            raise ConfigError("<file>", "not UTF-8 text", path) from None
        data: Any
        if path.endswith(".json") or text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}", path
                ) from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "<file>"
                raise ConfigError(where, f"invalid YAML: {exc}", path) from None
        try:
            return cls.from_dict(data, source=path)
        except ConfigError as exc:
            raise ConfigError(exc.field, exc.message, path, exc.issues) from None

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None) -> AgentConfig:
        """Validate a parsed config mapping; raises ConfigError listing every bad field."""
        if not isinstance(d, dict):
            raise ConfigError("<root>", "expected a mapping (JSON object) at the top level", source)
        issues: list[tuple[str, str]] = _non_finite(d)
        not_finite = {f for f, _ in issues}
        raw = dict(d)
        service = raw.get("service")
        spec: Any = (service or {}).get("service_spec") if isinstance(service, dict) else None
        if not isinstance(spec, dict | None):
            issues.append(("service.service_spec", "expected an object"))
            spec = None
        spec = spec or {}
        secrets: dict[str, str] | None = None
        if isinstance(raw.get("secrets_file"), str) and raw["secrets_file"]:
            try:
                secrets = _secrets(raw["secrets_file"])
            except ConfigError as exc:
                issues.extend(exc.issues)
        raw["probe"] = _merged_probe(spec.get("readiness_probe"), raw.get("probe"), secrets,
                                     issues)
        if raw.get("tls") is None and spec.get("tls") is not None:
            raw["tls"] = spec["tls"]
        model: AgentConfigFile | None = None
        try:
            model = AgentConfigFile.model_validate(raw, context={ON_AGENT: True})
        except ValidationError as exc:
            issues.extend(i for i in _pydantic_issues(exc) if i[0] not in not_finite)
        token = _token(raw, issues)
        policy = _policy(raw.get("policy"), service if isinstance(service, dict) else None,
                         issues)
        if model is not None:
            issues.extend(_cross_field(model))
        admission = AdmissionConfig()
        if model is not None:
            admission = _with_key_file(model.admission, issues)
        if issues or model is None:
            raise ConfigError(issues[0][0], issues[0][1], source, issues)
        replicas = tuple(
            r if r.replica_id else r.model_copy(update={"replica_id": f"static-{i}"})
            for i, r in enumerate(model.replicas)
        )
        return cls(
            service=model.service,
            public=model.public,
            admin=model.admin,
            token=token,
            policy=policy,
            state_file=model.state_file,
            replicas=replicas,
            probe=model.probe,
            proxy=model.proxy,
            routing=model.routing,
            admission=admission,
            queue_wait_seconds=_queue_wait(model.proxy, spec),
            autoscaler=None if model.autoscaler is None else dict(model.autoscaler),
            deployer=None if model.deployer is None else dict(model.deployer),
            tls=model.tls,
            source=source,
            secrets_file=model.secrets_file,
            limits=model.limits,
            lease=model.lease,
        )


def _non_finite(value: Any, where: str = "") -> list[tuple[str, str]]:
    """Every ``inf``/``nan`` number anywhere in the config, by field path.

    YAML's ``.inf``/``.nan`` and JSON's ``Infinity``/``NaN`` parse as floats that compare
    unlike any real setting (the C and Python routing policies would disagree), so no field
    of the agent config accepts one.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return [(where or "<root>", f"expected a finite number, got {value!r}")]
    if isinstance(value, dict):
        return [i for k, v in value.items()
                for i in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list | tuple):
        return [i for n, v in enumerate(value) for i in _non_finite(v, f"{where}[{n}]")]
    return []


def _queue_wait(proxy: ProxyConfig, spec: dict[str, Any]) -> float:
    """The wait-queue timeout: as configured, else on when the service can scale to zero."""
    if "queue_wait_seconds" in proxy.model_fields_set:
        return proxy.queue_wait_seconds
    policy = spec.get("replica_policy") or {}
    if isinstance(policy, dict) and policy.get("min_replicas") == 0:
        return float(C.LB_SCALE_FROM_ZERO_QUEUE_SECONDS)
    return proxy.queue_wait_seconds


def _with_key_file(adm: AdmissionConfig, issues: list[tuple[str, str]]) -> AdmissionConfig:
    """``admission`` with the keys of ``api_keys_file`` added."""
    if not adm.api_keys_file:
        return adm
    path = os.path.expanduser(adm.api_keys_file)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = (describe_file_error(exc, "key file") if isinstance(exc, OSError)
                  else "not UTF-8 text")
        issues.append(("admission.api_keys_file", f"{path}: {reason}"))
        return adm
    if text.lstrip().startswith("["):
        return _with_digest_file(adm, path, text, issues)
    lines = [ln.strip() for ln in text.splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    for n, k in enumerate(keys):
        if len(k) < 16:
            issues.append(("admission.api_keys_file",
                           f"{path}: key {n} is shorter than 16 characters"))
    return adm.model_copy(update={"api_keys": [*adm.api_keys, *keys]})


def _with_digest_file(adm: AdmissionConfig, path: str, text: str,
                      issues: list[tuple[str, str]]) -> AdmissionConfig:
    """``admission`` with the ``api_key_digests`` entries of a JSON key file added."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        issues.append(("admission.api_keys_file", f"{path}: invalid JSON at line {exc.lineno} "
                       f"column {exc.colno}: {exc.msg}"))
        return adm
    try:
        return AdmissionConfig.model_validate(
            {**adm.model_dump(exclude={"api_keys_file"}),
             "api_key_digests": [*adm.model_dump()["api_key_digests"], *entries]})
    except ValidationError as exc:
        for where, message in _pydantic_issues(exc):
            issues.append(("admission.api_keys_file", f"{path}: {where}: {message}"))
        return adm


def _cross_field(model: AgentConfigFile) -> list[tuple[str, str]]:
    """Rules across fields (only checked once each field on its own is valid)."""
    out: list[tuple[str, str]] = []
    if model.public.port == model.admin.port and model.public.port != 0:
        out.append(("admin.port", "must differ from public.port"))
    ids = [r.replica_id or f"static-{i}" for i, r in enumerate(model.replicas)]
    if len(set(ids)) != len(ids):
        out.append(("replicas", "replica_id values must be unique"))
    if model.lease.kind == "file" and not model.lease.name:
        out.append(("lease.name", "a file lease needs name: the lock file's path"))
    if model.deployer is not None and model.deployer.get("kind") not in ("pulumi", "local"):
        out.append(("deployer.kind", "expected 'pulumi' or 'local'"))
    return out


_TYPE_WORDS = {
    "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "dict_type": "an object (mapping)", "list_type": "a list",
    "model_type": "an object (mapping)", "model_attributes_type": "an object (mapping)",
}


_BOUND_WORDS = {
    "greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"), "less_than_equal": ("<=", "le"),
}


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _valid_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``loc`` accepts (for "unknown field" messages)."""
    model: type[BaseModel] = AgentConfigFile
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        annotation = getattr(info, "annotation", None) if info else None
        args = getattr(annotation, "__args__", None) or (annotation,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _pydantic_issues(exc: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, message) in the agent's words."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            name = "valid fields" if len(loc) == 1 else "valid"
            out.append((_loc(loc), f"unknown field; {name}: {', '.join(valid)}"))
            continue
        given = err.get("input")
        if kind in _TYPE_WORDS:
            message = f"expected {_TYPE_WORDS[kind]}, got {given!r}"
        elif kind == "value_error":
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        elif kind in _BOUND_WORDS:
            op, key = _BOUND_WORDS[kind]
            message = f"must be {op} {err['ctx'][key]}, got {given!r}"
        elif kind == "string_too_short":
            message = "expected a non-empty string"
        else:
            message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {given!r}"
        out.append((_loc(loc), message))
    return out


def _token(d: dict[str, Any], issues: list[tuple[str, str]]) -> str:
    given = [k for k in ("token", "token_file", "token_env") if d.get(k) is not None]
    if len(given) > 1:
        issues.append((given[1], f"give only one of token, token_file, token_env (got {given})"))
        return ""
    if not given:
        issues.append(
            ("token", "the admin API needs a bearer token: set token, token_file or token_env")
        )
        return ""
    key = given[0]
    value = d[key]
    if not isinstance(value, str) or not value:
        return ""  # reported by the model
    if key == "token_file":
        try:
            with open(value, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            issues.append(("token_file", f"cannot read {value}: {exc.strerror}"))
            return ""
    elif key == "token_env":
        token = os.environ.get(value, "").strip()
        if not token:
            issues.append(("token_env", f"environment variable {value} is unset or empty"))
            return ""
    else:
        token = value
    if len(token) < 8:
        issues.append((key, "the token must be at least 8 characters"))
    return token


def _policy(value: Any, service: dict[str, Any] | None, issues: list[tuple[str, str]]) -> str:
    from lb_agent.dataplane.policies import policy_names

    if value is None and service is not None:
        value = service.get("load_balancing_policy") or (service.get("service_spec") or {}).get(
            "load_balancing_policy"
        )
    if value is None:
        return C.DEFAULT_LOAD_BALANCING_POLICY
    if not isinstance(value, str) or value.lower() not in policy_names():
        issues.append(
            ("policy", f"unknown policy {value!r}; valid: {', '.join(policy_names())}")
        )
        return C.DEFAULT_LOAD_BALANCING_POLICY
    return value.lower()


def _merged_probe(spec_probe: Any, override: Any, secrets: Mapping[str, str] | None,
                  issues: list[tuple[str, str]]) -> dict[str, Any]:
    """The spec's readiness_probe, then the ``probe`` section, secrets filled in."""
    merged: dict[str, Any] = {}
    if isinstance(spec_probe, dict):
        merged.update(spec_probe)
    if override is not None:
        if not isinstance(override, dict):
            issues.append(("probe", "expected an object"))
        else:
            merged.update(override)
    if secrets:
        for key in ("path", "headers", "post_data"):
            if key in merged:
                merged[key] = fill_secrets(merged[key], secrets)
    return merged


def _secrets(path: str) -> dict[str, str]:
    """The ``secrets_file``: a JSON object of secret name to string value. Errors name the
    file and the bad key, never a value."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError("secrets_file", f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = (f" (line {exc.lineno} column {exc.colno})"
                 if isinstance(exc, json.JSONDecodeError) else "")
        raise ConfigError(
            "secrets_file", f"{path} is not valid JSON{where}; expected {{NAME: value}}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("secrets_file", f"{path}: expected a JSON object {{NAME: value}}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(
                "secrets_file", f"{path}: the value of {key} must be a string"
            )
    return dict(data)


_SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def fill_secrets(value: Any, secrets: Mapping[str, str]) -> Any:
    """``value`` with ``${NAME}`` and ``$NAME`` of known secrets replaced in every string
    (recursively through lists and mappings); unknown names stay as they are."""
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            return secrets.get(name, match.group(0))

        return _SECRET_REF.sub(repl, value)
    if isinstance(value, list):
        return [fill_secrets(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: fill_secrets(v, secrets) for k, v in value.items()}
    return value
