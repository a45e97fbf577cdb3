"""The accelerator catalog: one source of truth mapping (accelerator, count) to a machine per cloud.

- ``MachineOffer``: one concrete machine on one cloud, with prices.
- ``offer_for(candidate, cloud)``: the cheapest offer that satisfies a candidate on a cloud,
  or ``None`` when that cloud has none.
- ``place(task, cloud, pin=None)``: the first feasible candidate (honouring ``ordered``
  preference, else cheapest of the set) and its offer; raises ``PlacementError``.
- ``clouds_offering(candidate)``, ``canonical_accelerator(name)``, ``controller_offer(cloud)``,
  and the memory-selector helpers (``80GB+``, ``24GB:2``, ``nvidia:80GB+:2``).

The facts (machines, sizes, prices, their sources and dates) live in ``catalog.data``; the
lookup rules live in ``catalog.lookup``.
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
    #: GCP ``guest_accelerators`` type (``nvidia-tesla-a100``); Kubernetes node-selector value
    #: (GKE label ``cloud.google.com/gke-accelerator``).
    accelerator_type: str | None = None
    #: None: no known price (a Kubernetes GPU pod GCP has no node for).
    ondemand_hourly_usd: float | None = 0.0
    spot_hourly_usd: float | None = 0.0
    region: str = ""
    #: Where the prices come from, and when.
    price_source: str = ""

    def hourly_usd(self, spot: bool) -> float | None:
        return self.spot_hourly_usd if spot else self.ondemand_hourly_usd


@dataclass(frozen=True)
class Placement:
    """The candidate chosen for a cloud and the machine it runs on."""

    candidate_index: int
    offer: MachineOffer
    #: Whether the candidate asks for spot capacity (its price is then the spot estimate).
    spot: bool = False

    @property
    def hourly_usd(self) -> float | None:
        return self.offer.hourly_usd(self.spot)


from components.catalog.lookup import (  # noqa: E402  (the dataclasses above come first)
    accelerator_memory_gb,
    canonical_accelerator,
    clouds_offering,
    controller_offer,
    describe_candidate,
    expand_memory_selector,
    gke_node_price,
    is_tpu,
    k8s_device_resource,
    k8s_node_selector,
    known_accelerators,
    offer_for,
    parse_memory_selector,
    place,
    why_no_offer,
)

__all__ = [
    "MachineOffer",
    "Placement",
    "accelerator_memory_gb",
    "canonical_accelerator",
    "clouds_offering",
    "controller_offer",
    "describe_candidate",
    "expand_memory_selector",
    "gke_node_price",
    "is_tpu",
    "k8s_device_resource",
    "k8s_node_selector",
    "known_accelerators",
    "offer_for",
    "parse_memory_selector",
    "place",
    "why_no_offer",
]
