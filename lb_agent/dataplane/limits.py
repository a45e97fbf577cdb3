"""The agent's limits against slow, huge or too many peers: the ``limits`` config section.

Owns the values and their validation (the pydantic model ``Limits``) and the file-descriptor
budget (``connection_cap``); ``lb_agent.dataplane.client_guard`` enforces the per-port client
limits and ``lb_agent.dataplane.upstream`` the response-head limit. Defaults follow nginx where
it has one::

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

import logging
import resource

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("lb_agent.dataplane.limits")

#: Descriptors kept free for the state file, logs, probes and the admin port's listener.
FD_RESERVE = 256


class PortLimits(BaseModel):
    """Limits on the client connections of one listening port."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request_head_timeout_seconds: float = Field(default=60.0, gt=0)
    max_request_head_bytes: int = Field(default=16 * 1024, gt=0)
    max_connections: int = Field(default=4096, gt=0)


class AdminPortLimits(PortLimits):
    """The admin port's limits: the same keys, tighter defaults."""

    request_head_timeout_seconds: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=64, gt=0)


class Limits(PortLimits):
    """The whole ``limits`` section; its own port keys are the public port's.

    Validated like every section of the agent config (lb_agent.config): pydantic, strict,
    unknown keys refused, each problem named by its path (``limits.admin.max_connections``).
    """

    admin: AdminPortLimits = Field(default_factory=AdminPortLimits)
    max_response_head_bytes: int = Field(default=64 * 1024, gt=0)
    upstream_keepalive_seconds: float = Field(default=4.0, gt=0)

    @field_validator("admin", mode="before")
    @classmethod
    def _null_is_default(cls, v: object) -> object:
        return {} if v is None else v

    @property
    def public(self) -> PortLimits:
        """The public port's limits."""
        return PortLimits(request_head_timeout_seconds=self.request_head_timeout_seconds,
                          max_request_head_bytes=self.max_request_head_bytes,
                          max_connections=self.max_connections)


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
