"""The agent config file (JSON or YAML): parsing, defaults and clear errors.

Shape (see the README section "The agent"):
``service`` (normalized spec JSON, optional), ``public``/``admin`` listen addresses, ``token`` /
``token_file`` / ``token_env``, ``policy``, ``state_file``, static ``replicas``, ``probe``,
``proxy``, ``autoscaler``, ``deployer``, ``secrets_file``, ``limits`` (lb_agent.limits).
Probe settings come from the service's ``readiness_probe`` unless the ``probe`` section
overrides them.

``secrets_file`` (a JSON object ``{NAME: value}``, fetched by the controller from the secret
store) fills ``${NAME}`` / ``$NAME`` in the probe's path, headers and post_data strings, so a
probe like ``Authorization: Bearer $HF_TOKEN`` works while the config file only holds the
name. ``service`` keeps the config-file form; the real values live only in ``probe``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lb_agent import constants as C
from lb_agent.limits import Limits, parse_limits

_TOP_KEYS = frozenset(
    {
        "service", "public", "admin", "token", "token_file", "token_env", "policy",
        "state_file", "replicas", "probe", "proxy", "autoscaler", "deployer", "tls",
        "secrets_file", "limits",
    }
)


class ConfigError(Exception):
    """A bad agent config: names the file, the field and what would be valid."""

    def __init__(self, field_path: str, message: str, file: str | None = None) -> None:
        self.file = file
        self.field = field_path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.field}: {self.message}"


@dataclass(frozen=True)
class Listen:
    """A host/port pair the agent listens on."""

    host: str
    port: int


@dataclass(frozen=True)
class StaticReplica:
    """A replica listed in the config file (``replicas:``)."""

    url: str
    replica_id: str
    spot: bool = False
    accelerator: str | None = None
    version: int = C.INITIAL_VERSION


@dataclass(frozen=True)
class ProbeConfig:
    """Readiness probing: SkyServe's defaults, the spec's readiness_probe, then overrides."""

    path: str = C.DEFAULT_READINESS_PATH
    # Not in repr: these may hold secret values filled in from ``secrets_file``.
    post_data: Any = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout_seconds: float = C.DEFAULT_READINESS_PROBE_TIMEOUT_SECONDS
    initial_delay_seconds: float = C.DEFAULT_INITIAL_DELAY_SECONDS
    interval_seconds: float = C.ENDPOINT_PROBE_INTERVAL_SECONDS
    failure_window_seconds: float = C.CONSECUTIVE_FAILURE_THRESHOLD_SECONDS

    @property
    def method(self) -> str:
        """GET, or POST when the spec gives ``post_data``."""
        return "GET" if self.post_data is None else "POST"


@dataclass(frozen=True)
class ProxyConfig:
    """Proxy timeouts, retries and the optional wait queue."""

    connect_timeout_seconds: float = C.LB_CONNECT_TIMEOUT_SECONDS
    idle_timeout_seconds: float = C.LB_STREAM_TIMEOUT_SECONDS
    max_attempts: int = C.LB_MAX_ATTEMPTS
    queue_wait_seconds: float = 0.0
    backoff_seconds: float = C.LB_RETRY_BACKOFF_SECONDS
    retry_body_limit: int = C.LB_RETRY_BODY_LIMIT_BYTES
    max_connections_per_replica: int = C.LB_MAX_CONNECTIONS_PER_REPLICA


@dataclass(frozen=True)
class TLSFiles:
    """Key and certificate the public port serves HTTPS with."""

    keyfile: str
    certfile: str


@dataclass(frozen=True)
class AgentConfig:
    """The whole, validated agent configuration."""

    service: dict[str, Any] | None = None
    public: Listen = Listen("0.0.0.0", C.LOAD_BALANCER_PORT)
    admin: Listen = Listen("0.0.0.0", C.ADMIN_PORT)
    # Not in repr: the admin bearer token, and the deployer's env (secret values locally).
    token: str = field(default="", repr=False)
    policy: str = C.DEFAULT_LOAD_BALANCING_POLICY
    state_file: str = C.DEFAULT_AGENT_STATE_FILE
    replicas: tuple[StaticReplica, ...] = ()
    probe: ProbeConfig = ProbeConfig()
    proxy: ProxyConfig = ProxyConfig()
    autoscaler: dict[str, Any] | None = None
    deployer: dict[str, Any] | None = field(default=None, repr=False)
    tls: TLSFiles | None = None
    source: str | None = None
    #: The service secrets file the probe's ``${NAME}`` references were filled from.
    secrets_file: str | None = None
    #: The ``limits`` section (lb_agent.limits).
    limits: Limits = field(default_factory=Limits)

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
            raise ConfigError("<file>", f"cannot read: {exc.strerror or exc}", path) from None
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
            raise ConfigError(exc.field, exc.message, path) from None

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None) -> AgentConfig:
        """Validate a parsed config mapping; raises ConfigError naming the bad field."""
        if not isinstance(d, dict):
            raise ConfigError("<root>", "expected a mapping (JSON object) at the top level", source)
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise ConfigError(
                unknown[0], f"unknown field; valid fields: {', '.join(sorted(_TOP_KEYS))}", source
            )
        service = d.get("service")
        if service is not None and not isinstance(service, dict):
            raise ConfigError("service", "expected the normalized spec JSON object", source)
        spec = (service or {}).get("service_spec") or {}
        if not isinstance(spec, dict):
            raise ConfigError("service.service_spec", "expected an object", source)

        public = _listen(d.get("public"), "public", C.LOAD_BALANCER_PORT)
        admin = _listen(d.get("admin"), "admin", C.ADMIN_PORT)
        if public.port == admin.port and public.port != 0:
            raise ConfigError("admin.port", "must differ from public.port", source)

        token = _token(d)
        policy = _policy(d.get("policy"), service)
        state_file = d.get("state_file", C.DEFAULT_AGENT_STATE_FILE)
        if not isinstance(state_file, str) or not state_file:
            raise ConfigError("state_file", "expected a file path (string)", source)

        replicas = tuple(_replica(r, i) for i, r in enumerate(_list(d.get("replicas"), "replicas")))
        ids = [r.replica_id for r in replicas]
        if len(set(ids)) != len(ids):
            raise ConfigError("replicas", "replica_id values must be unique", source)

        secrets_file = d.get("secrets_file")
        if secrets_file is not None and (not isinstance(secrets_file, str) or not secrets_file):
            raise ConfigError("secrets_file", "expected a file path (string)", source)
        secrets = _secrets(secrets_file) if secrets_file else None
        probe = _probe(spec.get("readiness_probe"), d.get("probe"), secrets)
        proxy = _proxy(d.get("proxy"))
        autoscaler = _opt_dict(d.get("autoscaler"), "autoscaler")
        deployer = _opt_dict(d.get("deployer"), "deployer")
        if deployer is not None and deployer.get("kind") not in ("pulumi", "local"):
            raise ConfigError("deployer.kind", "expected 'pulumi' or 'local'", source)
        tls = _tls(d.get("tls", spec.get("tls")))
        return cls(
            service=service,
            public=public,
            admin=admin,
            token=token,
            policy=policy,
            state_file=state_file,
            replicas=replicas,
            probe=probe,
            proxy=proxy,
            autoscaler=autoscaler,
            deployer=deployer,
            tls=tls,
            source=source,
            secrets_file=secrets_file,
            limits=parse_limits(d.get("limits")),
        )


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(name, "expected a list")
    return value


def _opt_dict(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(name, "expected an object or null")
    return dict(value)


def _number(value: Any, name: str, *, minimum: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"expected a {'whole ' if integer else ''}number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(name, f"expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum:g}, got {value!r}")
    return float(value)


def _listen(value: Any, name: str, default_port: int) -> Listen:
    if value is None:
        return Listen("0.0.0.0", default_port)
    if not isinstance(value, dict):
        raise ConfigError(name, "expected an object like {host: 0.0.0.0, port: 30001}")
    unknown = sorted(set(value) - {"host", "port"})
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", "unknown field; valid: host, port")
    host = value.get("host", "0.0.0.0")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{name}.host", "expected a host name or IP address")
    port = value.get("port", default_port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{name}.port", f"expected a port number 0-65535, got {port!r}")
    return Listen(host, port)


def _token(d: dict[str, Any]) -> str:
    given = [k for k in ("token", "token_file", "token_env") if d.get(k) is not None]
    if len(given) > 1:
        raise ConfigError(given[1], f"give only one of token, token_file, token_env (got {given})")
    if not given:
        raise ConfigError(
            "token", "the admin API needs a bearer token: set token, token_file or token_env"
        )
    key = given[0]
    value = d[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "expected a non-empty string")
    if key == "token_file":
        try:
            with open(value, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError("token_file", f"cannot read {value}: {exc.strerror}") from None
    elif key == "token_env":
        token = os.environ.get(value, "").strip()
        if not token:
            raise ConfigError("token_env", f"environment variable {value} is unset or empty")
    else:
        token = value
    if len(token) < 8:
        raise ConfigError(key, "the token must be at least 8 characters")
    return token


def _policy(value: Any, service: dict[str, Any] | None) -> str:
    from lb_agent.policies import policy_names

    if value is None and service is not None:
        value = service.get("load_balancing_policy") or (service.get("service_spec") or {}).get(
            "load_balancing_policy"
        )
    if value is None:
        return C.DEFAULT_LOAD_BALANCING_POLICY
    if not isinstance(value, str) or value.lower() not in policy_names():
        raise ConfigError("policy", f"unknown policy {value!r}; valid: {', '.join(policy_names())}")
    return value.lower()


def _replica(value: Any, i: int) -> StaticReplica:
    name = f"replicas[{i}]"
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise ConfigError(name, "expected an object like {url: http://10.0.0.5:8080}")
    unknown = sorted(set(value) - {"url", "replica_id", "spot", "accelerator", "version"})
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}",
            "unknown field; valid: url, replica_id, spot, accelerator, version",
        )
    url = value.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name}.url", f"expected an http:// URL, got {url!r}")
    rid = value.get("replica_id", f"static-{i}")
    if not isinstance(rid, str) or not rid:
        raise ConfigError(f"{name}.replica_id", "expected a non-empty string")
    spot = value.get("spot", False)
    if not isinstance(spot, bool):
        raise ConfigError(f"{name}.spot", "expected true or false")
    acc = value.get("accelerator")
    if acc is not None and not isinstance(acc, str):
        raise ConfigError(f"{name}.accelerator", "expected a string or null")
    version = int(_number(value.get("version", C.INITIAL_VERSION), f"{name}.version", integer=True))
    return StaticReplica(url.rstrip("/"), rid, spot, acc, version)


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


def _probe(spec_probe: Any, override: Any, secrets: Mapping[str, str] | None = None
           ) -> ProbeConfig:
    merged: dict[str, Any] = {}
    if isinstance(spec_probe, dict):
        merged.update(spec_probe)
    if override is not None:
        if not isinstance(override, dict):
            raise ConfigError("probe", "expected an object")
        merged.update(override)
    if secrets:
        for key in ("path", "headers", "post_data"):
            if key in merged:
                merged[key] = fill_secrets(merged[key], secrets)
    valid = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(merged) - valid)
    if unknown:
        raise ConfigError(
            f"probe.{unknown[0]}", f"unknown field; valid: {', '.join(sorted(valid))}"
        )
    kwargs: dict[str, Any] = {}
    if "path" in merged:
        path = merged["path"]
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError("probe.path", f"expected a path starting with '/', got {path!r}")
        kwargs["path"] = path
    if "post_data" in merged:
        kwargs["post_data"] = merged["post_data"]
    if merged.get("headers") is not None:
        headers = merged["headers"]
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError("probe.headers", "expected a mapping of header name to string")
        kwargs["headers"] = dict(headers)
    for key in (
        "timeout_seconds", "initial_delay_seconds", "interval_seconds", "failure_window_seconds"
    ):
        if key in merged:
            kwargs[key] = _number(merged[key], f"probe.{key}")
    if kwargs.get("interval_seconds", 1.0) <= 0 or kwargs.get("timeout_seconds", 1.0) <= 0:
        raise ConfigError("probe", "interval_seconds and timeout_seconds must be > 0")
    return ProbeConfig(**kwargs)


def _proxy(value: Any) -> ProxyConfig:
    if value is None:
        return ProxyConfig()
    if not isinstance(value, dict):
        raise ConfigError("proxy", "expected an object")
    valid = {f.name for f in dataclasses.fields(ProxyConfig)}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise ConfigError(
            f"proxy.{unknown[0]}", f"unknown field; valid: {', '.join(sorted(valid))}"
        )
    kwargs: dict[str, Any] = {}
    for key in ("connect_timeout_seconds", "idle_timeout_seconds", "queue_wait_seconds",
                "backoff_seconds"):
        if key in value:
            kwargs[key] = _number(value[key], f"proxy.{key}")
    for key in ("max_attempts", "retry_body_limit", "max_connections_per_replica"):
        if key in value:
            kwargs[key] = int(_number(value[key], f"proxy.{key}", integer=True))
    if kwargs.get("max_attempts", 1) < 1:
        raise ConfigError("proxy.max_attempts", "must be >= 1")
    if kwargs.get("max_connections_per_replica", 1) < 1:
        raise ConfigError("proxy.max_connections_per_replica", "must be >= 1")
    if kwargs.get("connect_timeout_seconds", 1.0) <= 0:
        raise ConfigError("proxy.connect_timeout_seconds", "must be > 0")
    return ProxyConfig(**kwargs)


def _tls(value: Any) -> TLSFiles | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), str) and value.get(k) for k in ("keyfile", "certfile")
    ):
        raise ConfigError("tls", "expected {keyfile: PATH, certfile: PATH}")
    for key in ("keyfile", "certfile"):
        path = os.path.expanduser(value[key])
        if not os.path.isfile(path):
            raise ConfigError(f"tls.{key}", f"file not found: {path}")
    return TLSFiles(os.path.expanduser(value["keyfile"]), os.path.expanduser(value["certfile"]))
