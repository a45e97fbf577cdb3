"""The stack's admission settings (docs/routing.md): the API keys of ``skyform:apiKeys``
and the plain settings, checked, and turned into the agent config's sections.

``skyform:apiKeys`` is a secret, either a list of keys (named ``key-0``, ``key-1``, ...) or
an object keyed by name whose value is the key, or ``{key, rateLimitRps, rateLimitBurst}``
for a key with limits of its own. The keys never reach the agent config: only their
SHA-256 digests (``api_key_digests``) do, computed inside the secret Output, so the agent
config the controller gets stays a Pulumi secret too. Messages name the key's name or index,
never its value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from lb_agent.contract import key_digest

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_KEY_CHARS = 16
_KEY_FIELDS = {"key", "rateLimitRps", "rateLimitBurst"}


@dataclass(frozen=True)
class ApiKey:
    """One accepted key (``key`` is the secret; the rest is not)."""

    name: str
    key: str
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None


def _number(value: Any, where: str, *, integer: bool) -> float | int:
    """A number >= 0; ``pulumi config set --path`` stores ``0.5`` as a string, so a numeric
    string counts too."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ValueError(f"{where}: expected {kind} >= 0, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)):
        raise ValueError(f"{where}: expected {kind} >= 0, got {type(value).__name__}")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{where}: expected {kind} >= 0, got {value!r}")
    return value


def _one(name: str, value: Any, where: str) -> ApiKey:
    if not _NAME.match(name):
        raise ValueError(f"{where}: the name {name!r} must match ^[A-Za-z0-9_.-]{{1,64}}$")
    rps: float | None = None
    burst: int | None = None
    if isinstance(value, dict):
        unknown = sorted(set(value) - _KEY_FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(_KEY_FIELDS))}")
        if "rateLimitRps" in value:
            rps = float(_number(value["rateLimitRps"], f"{where}.rateLimitRps", integer=False))
        if "rateLimitBurst" in value:
            burst = int(_number(value["rateLimitBurst"], f"{where}.rateLimitBurst",
                                integer=True))
        if "key" not in value:
            raise ValueError(f"{where}: missing the field key")
        value = value["key"]
    if not isinstance(value, str):
        raise ValueError(f"{where}: the key must be a string (the value is not shown)")
    if len(value) < MIN_KEY_CHARS or value != value.strip():
        raise ValueError(f"{where}: the key must be at least {MIN_KEY_CHARS} characters without "
                         "spaces around it (the value is not shown)")
    return ApiKey(name, value, rps, burst)


def parse_api_keys(raw: Any, config_key: str) -> list[ApiKey]:
    """The keys of ``skyform:apiKeys`` (a list, or an object keyed by name); ValueError names
    ``config_key`` and the bad entry, never a key."""
    if raw is None:
        return []
    if isinstance(raw, list):
        keys = [_one(f"key-{i}", v, f"{config_key}[{i}]") for i, v in enumerate(raw)]
    elif isinstance(raw, dict):
        keys = [_one(str(n), v, f"{config_key}.{n}") for n, v in raw.items()]
    else:
        raise ValueError(f"{config_key}: expected a list of keys or an object NAME: key "
                         f"(or NAME: {{key, rateLimitRps, rateLimitBurst}}), got "
                         f"{type(raw).__name__}")
    digests = [key_digest(k.key) for k in keys]
    for i, d in enumerate(digests):
        if d in digests[:i]:
            raise ValueError(f"{config_key}: {keys[i].name} repeats the key of "
                             f"{keys[digests.index(d)].name}; each key must be different")
    return keys


def digest_entries(keys: list[ApiKey]) -> list[dict[str, Any]]:
    """The agent config's ``admission.api_key_digests`` for ``keys`` (no key in them)."""
    out: list[dict[str, Any]] = []
    for k in keys:
        entry: dict[str, Any] = {"name": k.name, "sha256": key_digest(k.key)}
        if k.rate_limit_rps is not None:
            entry["rate_limit_rps"] = k.rate_limit_rps
        if k.rate_limit_burst is not None:
            entry["rate_limit_burst"] = k.rate_limit_burst
        out.append(entry)
    return out


@dataclass(frozen=True)
class AdmissionSettings:
    """The plain (not secret) admission settings of the stack."""

    #: ``skyform:apiKeys`` is set (its digests travel as a secret; see the module).
    api_keys: bool = False
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 0
    #: None: the agent's rule (wait 300 s when min_replicas is 0, else no queue); 0: off.
    queue_wait_seconds: int | None = None
    max_in_flight_per_replica: int = 0
    trusted_proxies: tuple[str, ...] = ()

    def agent_sections(self) -> dict[str, dict[str, Any]]:
        """The agent config's ``admission`` section (and ``proxy`` for the queue), only
        what differs from the agent's defaults, so an unset stack changes nothing."""
        adm: dict[str, Any] = {}
        if self.rate_limit_rps:
            adm["rate_limit_rps"] = self.rate_limit_rps
        if self.rate_limit_burst:
            adm["rate_limit_burst"] = self.rate_limit_burst
        if self.max_in_flight_per_replica:
            adm["max_in_flight_per_replica"] = self.max_in_flight_per_replica
        if self.trusted_proxies:
            adm["trusted_proxies"] = list(self.trusted_proxies)
        out: dict[str, dict[str, Any]] = {"admission": adm} if adm else {}
        if self.queue_wait_seconds is not None:
            out["proxy"] = {"queue_wait_seconds": self.queue_wait_seconds}
        return out
