"""Deployers: how scale decisions become replicas (``pulumi``: the stack, ``local``: processes).

``build_deployer(config, runtime)`` builds the one named by the config's ``deployer`` section.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lb_agent import credentials
from lb_agent.control.deployers.base import Deployer, PlannedReplica

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from lb_agent.config import AgentConfig
    from lb_agent.runtime import AgentRuntime

__all__ = ["Deployer", "PlannedReplica", "build_deployer"]


def _service_uses_spot(service: dict[str, Any] | None) -> bool:
    resources = (service or {}).get("resources") or []
    return any(bool(r.get("use_spot")) for r in resources if isinstance(r, dict))


def build_deployer(config: AgentConfig, runtime: AgentRuntime, *,
                   metrics_registry: CollectorRegistry | None = None) -> Deployer | None:
    """The deployer the config asks for, or None (then the scaler only reports).
    ``metrics_registry``: where its metrics go (default: the runtime's)."""
    section = config.deployer
    if not section:
        return None
    kind = section.get("kind")
    if kind == "local":
        from lb_agent.control.deployers.local import LocalDeployer
        from lb_agent.control.deployers.local_stack import LocalStack

        if not config.service:
            raise ValueError("deployer.kind local needs the service (normalized spec) in config")
        log_dir = section.get("log_dir") or tempfile.mkdtemp(prefix="skyform-local-")
        return LocalDeployer(
            runtime.registry,
            config.service,
            log_dir=str(log_dir),
            work_dir=section.get("work_dir"),
            env={str(k): str(v) for k, v in (section.get("env") or {}).items()},
            store=runtime.store,
            grace_seconds=float(section.get("grace_seconds", 5.0)),
            credential_key=credentials.registration_key(config.token),
            stack=None if not section.get("stack_file")
            else LocalStack(str(section["stack_file"])),
            leadership=runtime.leadership,
        )
    if kind == "pulumi":
        from lb_agent.control.deployers.pulumi import PulumiDeployer, local_stack_factory

        work_dir = str(section.get("work_dir") or os.getcwd())
        stack = str(section.get("stack") or "dev")
        env = {str(k): str(v) for k, v in (section.get("env") or {}).items()}
        env_files = {str(k): str(v) for k, v in (section.get("env_files") or {}).items()}
        service = config.service or {}
        return PulumiDeployer(
            runtime.registry,
            stack_factory=local_stack_factory(work_dir, stack, env, env_files),
            stack_name=stack,
            service_port=int(service.get("service_port") or 8080),
            spot_default=_service_uses_spot(service),
            generation=int(section.get("generation") or 1),
            digest=str(section.get("digest") or ""),
            retry_initial_seconds=float(section.get("retry_initial_seconds", 5.0)),
            metrics_registry=metrics_registry or runtime.metrics_registry,
            cloud=str(section.get("cloud") or ""),
            locations=list(section.get("locations") or []),
            home=section.get("home"),
            placer=str(section.get("placer") or "skyform"),
            unschedulable_seconds=_unschedulable_seconds(section),
            clock=runtime.clock,
        )
    raise ValueError(f"deployer.kind: expected 'pulumi' or 'local', got {kind!r}")


#: Kubernetes: seconds a launched replica may stay unregistered before its location counts
#: as failed (its pod stayed Unschedulable: no node of that zone and accelerator). A replica
#: registers once its setup ran, so this also covers a slow setup and image pull; set
#: ``deployer.unschedulable_seconds`` to change it.
UNSCHEDULABLE_SECONDS = 1800.0


def _unschedulable_seconds(section: Mapping[str, Any]) -> float | None:
    value = section.get("unschedulable_seconds")
    if value is not None:
        return float(value)
    return UNSCHEDULABLE_SECONDS if section.get("cloud") == "kubernetes" else None
