"""Shared pytest setup: make the helper modules in tests/ importable by plain name
(``from agent_helpers import ...`` works whether or not tests/ is a package), and the
session's real Kubernetes control plane (``kube_cluster``, tests/kube_cluster.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import pytest  # noqa: E402 - after the path setup above
from kube_cluster import KubeCluster  # noqa: E402


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A real Kubernetes control plane on 127.0.0.1 for the session (tests/kube_cluster.py):
    started on first use, stopped and removed at the end. Tests that use it are marked
    ``kube``; a missing toolchain fails them with the command that builds it."""
    cluster = KubeCluster.start(tmp_path_factory.mktemp("kube-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
