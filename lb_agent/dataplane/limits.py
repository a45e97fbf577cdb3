"""The agent's limits against slow, huge or too many peers: the ``limits`` config section.

Owns the values and their validation (``parse_limits``) and the file-descriptor budget
(``connection_cap``); ``lb_agent.dataplane.client_guard`` enforces the per-port client limits and
``lb_agent.dataplane.upstream`` the response-head limit. Defaults follow nginx where it has one::

    limits:
      request_head_timeout_seconds: 60     # nginx client_header_timeout
      max_request_head_bytes: 16384        # request line + fields; 431 beyond
      max_connections: 4096                # public port; 503 beyond
      max_response_head_bytes: 65536       # a replica's status line + fields; 502 beyond
      upstream_keepalive_seconds: 4        # pooled idle connection lifetime (< uvicorn's 5 s)
      admin:                               # the admin port's own limits
        request_head_timeout_seconds: 10
        max_request_head_bytes: 16384
        max_connections: 64
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("lb_agent.dataplane.limits")

#: Descriptors kept free for the state file, logs, probes and the admin port's listener.
FD_RESERVE = 256


@dataclass(frozen=True)
class PortLimits:
    """Limits on the client connections of one listening port."""

    request_head_timeout_seconds: float = 60.0
    max_request_head_bytes: int = 16 * 1024
    max_connections: int = 4096


ADMIN_DEFAULTS = PortLimits(request_head_timeout_seconds=10.0, max_connections=64)


@dataclass(frozen=True)
class Limits:
    """The whole ``limits`` section."""

    public: PortLimits = PortLimits()
    admin: PortLimits = ADMIN_DEFAULTS
    max_response_head_bytes: int = 64 * 1024
    upstream_keepalive_seconds: float = 4.0


_PORT_KEYS = {f.name for f in dataclasses.fields(PortLimits)}
_TOP_KEYS = _PORT_KEYS | {"max_response_head_bytes", "upstream_keepalive_seconds", "admin"}


def _positive(value: Any, name: str, *, integer: bool) -> float:
    from lb_agent.config import ConfigError  # config imports this module

    if isinstance(value, bool) or not isinstance(value, int | float) or (
        integer and not isinstance(value, int)
    ):
        kind = "whole number" if integer else "number"
        raise ConfigError(name, f"expected a positive {kind}, got {value!r}")
    if value <= 0:
        raise ConfigError(name, f"must be > 0, got {value!r}")
    return value


def _port(value: dict[str, Any], prefix: str, base: PortLimits, valid: set[str]) -> PortLimits:
    from lb_agent.config import ConfigError

    unknown = sorted(set(value) - valid)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}",
                          f"unknown field; valid: {', '.join(sorted(valid))}")
    changes: dict[str, Any] = {}
    for key in _PORT_KEYS & set(value):
        integer = key != "request_head_timeout_seconds"
        num = _positive(value[key], f"{prefix}.{key}", integer=integer)
        changes[key] = int(num) if integer else float(num)
    return dataclasses.replace(base, **changes)


def parse_limits(value: Any) -> Limits:
    """Validate the ``limits`` mapping (None gives the defaults); raises ConfigError."""
    from lb_agent.config import ConfigError

    if value is None:
        return Limits()
    if not isinstance(value, dict):
        raise ConfigError("limits", "expected an object")
    public = _port(value, "limits", PortLimits(), _TOP_KEYS)
    admin_value = value.get("admin")
    if admin_value is None:
        admin = ADMIN_DEFAULTS
    elif not isinstance(admin_value, dict):
        raise ConfigError("limits.admin", "expected an object")
    else:
        admin = _port(admin_value, "limits.admin", ADMIN_DEFAULTS, _PORT_KEYS)
    out = Limits(public=public, admin=admin)
    changes: dict[str, Any] = {}
    if "max_response_head_bytes" in value:
        changes["max_response_head_bytes"] = int(_positive(
            value["max_response_head_bytes"], "limits.max_response_head_bytes", integer=True))
    if "upstream_keepalive_seconds" in value:
        changes["upstream_keepalive_seconds"] = float(_positive(
            value["upstream_keepalive_seconds"], "limits.upstream_keepalive_seconds",
            integer=False))
    return dataclasses.replace(out, **changes)


def connection_cap(limits: Limits) -> int:
    """The public port's connection cap, lowered to fit the descriptor limit.

    Raises the soft RLIMIT_NOFILE to the hard one first. Every public client connection may
    hold a replica connection too, so the cap is at most half of what is left after the
    admin port's connections and ``FD_RESERVE``: descriptors never run out, and the admin port
    keeps answering when the public one is full.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # pragma: no cover - platform refuses
            pass
    cap = limits.public.max_connections
    if soft != resource.RLIM_INFINITY:
        budget = max(1, (int(soft) - limits.admin.max_connections - FD_RESERVE) // 2)
        if budget < cap:
            log.warning("limits.max_connections %d lowered to %d to fit the descriptor "
                        "limit (RLIMIT_NOFILE %d)", cap, budget, soft)
            cap = budget
    return cap
