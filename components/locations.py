"""Candidate locations: where on the stack's cloud a service's replicas may run, priced.

This module owns the menu the agent's placer chooses from (lb_agent.control.placement): every
(candidate, region, zone, market) the service YAML allows on the stack's cloud. The YAML
gives the candidates (an accelerator set, ``any_of``, ``ordered``) and their ``region``/
``zone`` pins; the stack gives its home region (``skyform:region``, else the candidate's,
else the catalog's default), the extra regions it allows (``skyform:regions``) and a zone
subset (``skyform:zones``; on Kubernetes the ``topology.kubernetes.io/zone`` values, since a
cluster's zones are not in any catalog). Prices come from the catalog, the same in every
zone of a region (the catalog has no per-zone price; the placer learns zones from what it
sees). The *home* location is where the stack's ``spot``/``ondemand`` groups always ran.
On AWS a region other than the home one gets a network of its own, peered with the
controller's (components/clouds/aws_regions.py).

Services whose candidates name several clouds place on the stack's cloud only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components import catalog
from components.catalog.data import GKE_ACCELERATOR_LABEL
from components.spec import ServiceTask, TargetCloud
from lb_agent.contract import Site

#: The zones skyform places in per region (AWS/GCP), as the clouds list them. A region not
#: listed here has only its ``a`` zone unless ``skyform:zones`` names others.
REGION_ZONES: dict[str, dict[str, tuple[str, ...]]] = {
    "aws": {
        "us-east-1": ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"),
        "us-east-2": ("us-east-2a", "us-east-2b", "us-east-2c"),
        "us-west-2": ("us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"),
        "eu-west-1": ("eu-west-1a", "eu-west-1b", "eu-west-1c"),
    },
    "gcp": {
        "us-central1": ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"),
        "us-east1": ("us-east1-b", "us-east1-c", "us-east1-d"),
        "us-west1": ("us-west1-a", "us-west1-b", "us-west1-c"),
        "europe-west4": ("europe-west4-a", "europe-west4-b", "europe-west4-c"),
    },
}


def default_zone(cloud: str, region: str) -> str | None:
    """The zone a stack without ``skyform:zone`` always used: ``<region>a`` (AWS),
    ``<region>-a`` (GCP); none on Kubernetes (the scheduler's choice)."""
    if cloud == "aws":
        return f"{region}a"
    if cloud == "gcp":
        return f"{region}-a"
    return None


def zone_region(cloud: str, zone: str) -> str:
    """The region a zone is in: ``us-west-2b`` -> ``us-west-2`` (AWS), ``us-east1-c`` ->
    ``us-east1`` (GCP)."""
    if cloud == "gcp":
        return zone.rsplit("-", 1)[0]
    found = re.match(r"[a-z]{2}(?:-gov)?-[a-z]+-\d+", zone)  # also Local Zones' ids
    return found.group(0) if found else zone


def region_zones(cloud: str, region: str) -> tuple[str, ...]:
    known = REGION_ZONES.get(cloud, {}).get(region)
    if known:
        return known
    zone = default_zone(cloud, region)
    return (zone,) if zone else ()


@dataclass(frozen=True)
class CandidateLocation:
    """One entry of the menu: a site and a market."""

    site: Site
    spot: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.site.to_json(), "spot": self.spot, "key": self.site.key}


def candidate_locations(task: ServiceTask, cloud: TargetCloud, *, home: Site,
                        regions: Sequence[str] = (), zones: Sequence[str] = (),
                        zone_pin: str | None = None,
                        accelerator_label: str = GKE_ACCELERATOR_LABEL
                        ) -> list[CandidateLocation]:
    """Every location the service may run in on ``cloud``, sorted: spot before on-demand,
    then (``ordered`` services) preference, then price, candidate, region, zone. A spot
    candidate yields its on-demand locations too (SkyServe's on-demand fallback)."""
    out: dict[tuple[str, bool], tuple[tuple[Any, ...], CandidateLocation]] = {}
    for index, candidate in enumerate(task.candidates):
        offer = catalog.offer_for(candidate, cloud, accelerator_label=accelerator_label)
        if offer is None:
            continue
        if cloud == "kubernetes":
            in_zones: list[str | None] = ([candidate.zone] if candidate.zone
                                          else list(zones) or [None])
            where: list[tuple[str, str | None]] = [("", z) for z in in_zones]
        else:
            if candidate.region or candidate.zone:
                in_regions = [candidate.region or zone_region(cloud, str(candidate.zone))]
            else:
                in_regions = list(dict.fromkeys([home.region, *regions]))
            where = []
            for region in in_regions:
                if candidate.zone or zone_pin:
                    pinned = candidate.zone or zone_pin
                    if candidate.zone or str(pinned).startswith(region):
                        where.append((region, pinned))
                    continue
                allowed = region_zones(cloud, region)
                if zones:
                    allowed = tuple(z for z in zones if z.startswith(region)) or allowed
                where += [(region, z) for z in allowed]
        markets = (True, False) if candidate.spot else (False,)
        for region, zone in where:
            for spot in markets:
                price = offer.hourly_usd(spot)
                site = Site(cloud, region, zone, index, offer.accelerator, offer.instance_type,
                            price)
                rank = (not spot, index if task.ordered else 0,
                        float("inf") if price is None else price, index, region, zone or "")
                key = (site.key, spot)
                if key not in out or rank < out[key][0]:
                    out[key] = (rank, CandidateLocation(site, spot))
    return [loc for _, loc in sorted(out.values(), key=lambda item: item[0])]
