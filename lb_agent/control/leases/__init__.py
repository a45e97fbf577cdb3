"""Lease stores: where the leader lease of several load balancers lives.

``open_store(config)`` opens the store the agent config's ``lease`` section names: ``none``
(one load balancer: no store, it always leads), ``file`` (a lock file on this machine,
``file.py``), ``kubernetes`` (a ``coordination.k8s.io`` Lease, ``kubernetes.py``), ``s3`` and
``gcs`` (an object in the stack's files bucket written conditionally, ``s3.py``/``gcs.py``).
Each kind's module is imported only when that kind is configured, so an agent never loads a
client library it does not use. Every store implements
lb_agent.control.leadership.LeaseStore and is built by the module's ``open_store``.
"""

from __future__ import annotations

import importlib

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseStore

#: Lease kinds and the module (in this package) that implements each.
MODULES = {"file": "file", "kubernetes": "kubernetes", "s3": "s3", "gcs": "gcs"}


class LeaseStoreError(ValueError):
    """The configured lease store cannot be opened (its module is missing or the section is
    incomplete); the message names the ``lease`` field."""


def open_store(config: LeaseConfig) -> LeaseStore | None:
    """The lease store ``config`` names; None for ``kind: none`` (a lone load balancer)."""
    if config.kind == "none":
        return None
    module_name = MODULES.get(config.kind)
    if module_name is None:
        raise LeaseStoreError(f"lease.kind: unknown kind {config.kind!r}; valid: none, "
                              f"{', '.join(MODULES)}")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module_name}":
            raise LeaseStoreError(
                f"lease.kind: {config.kind} needs the Python package {exc.name!r}, which is "
                "not installed") from None
        raise LeaseStoreError(
            f"lease.kind: {config.kind} is not available in this agent build "
            f"(no lb_agent/control/leases/{module_name}.py); use one of: none, "
            f"{', '.join(k for k in MODULES if _present(k))}") from None
    store: LeaseStore = module.open_store(config)
    return store


def _present(kind: str) -> bool:
    from importlib.util import find_spec

    return find_spec(f"{__name__}.{MODULES[kind]}") is not None
