"""The accelerator catalog: one source of truth mapping (accelerator, count) to a machine per cloud.

Interface (implemented by the catalog data and lookups in this package):

- ``MachineOffer``: one concrete machine on one cloud, with prices.
- ``offer_for(candidate, cloud)``: the cheapest offer that satisfies a candidate on a cloud,
  or ``None`` when that cloud has none.
- ``place(task, cloud, pin=None)``: the first feasible candidate (honouring ``ordered``
  preference, else cheapest of the set) and its offer; raises ``PlacementError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.spec import TargetCloud


@dataclass(frozen=True)
class MachineOffer:
    """A concrete machine: instance type (AWS), machine type + guest accelerator (GCP), or a
    node selector for the accelerator (Kubernetes)."""

    cloud: TargetCloud
    instance_type: str
    vcpus: float
    memory_gb: float
    accelerator: str | None = None
    accelerator_count: float = 0
    gpu_memory_gb: float = 0
    #: GCP ``guest_accelerators`` type (``nvidia-tesla-a100``); Kubernetes node-selector value.
    accelerator_type: str | None = None
    ondemand_hourly_usd: float = 0.0
    spot_hourly_usd: float = 0.0
    region: str = ""


@dataclass(frozen=True)
class Placement:
    """The candidate chosen for a cloud and the machine it runs on."""

    candidate_index: int
    offer: MachineOffer
