"""The Pulumi deployer's side of placement: which group a location's replicas go to.

Owns the mapping between the placer's ``Location`` (lb_agent.control.placement) and the fleet's
groups (lb_agent.control.fleet): the menu comes from the agent config (``deployer.locations``,
the program's sorted, priced candidate locations, components/locations.py) with each entry's
``Site`` (region, zone, candidate index, machine); the home location (``deployer.home``) maps
to the ``spot``/``ondemand`` groups a stack always had, every other one to
``<kind>[-g<N>]-<site key>``. It also finds which groups a failed ``up`` is about, from the
engine's error text.

This is a thin adapter: the placement module's ``Location.candidate`` is a label (its key is
too long for a resource name), so the fleet keeps its own ``Site`` and short key per location.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lb_agent.control.fleet import ONDEMAND, SPOT, Site, group_name, parse_group_key
from lb_agent.control.launch_errors import LaunchFailure
from lb_agent.control.placement.locations import Location


def candidate_label(site: Site) -> str:
    """The placement module's ``candidate``: the machine (instance type, or the Kubernetes
    accelerator request), else the accelerator, else the candidate's index."""
    return site.instance_type or site.accelerator or f"candidate-{site.candidate}"


def location_of(site: Site, spot: bool) -> Location:
    return Location(site.cloud, site.region, site.zone, candidate_label(site), spot,
                    site.price if site.price is not None else 0.0)


class Menu:
    """The candidate locations, their sites, and the home location."""

    def __init__(self, entries: Sequence[Mapping[str, Any]] = (),
                 home: Mapping[str, Any] | None = None) -> None:
        self.sites: dict[Location, Site] = {}
        for entry in entries:
            site = Site.from_json(entry)
            self.sites[location_of(site, bool(entry.get("spot")))] = site
        #: The home site (the ``spot``/``ondemand`` groups). It is on the menu when the
        #: program listed it; on Kubernetes without zones it is "any zone" and is not, so
        #: placed replicas go to the listed zones while the home group keeps its pods.
        self.home: Site | None = Site.from_json(home) if home else None

    @property
    def locations(self) -> list[Location]:
        """The menu in the program's order."""
        return list(self.sites)

    def is_home(self, site: Site | None) -> bool:
        return site is None or (self.home is not None and site.key == self.home.key)

    def group_for(self, loc: Location | None, spot: bool, generation: int
                  ) -> tuple[str, Site | None]:
        """(group name, site or None for a home group) of a location."""
        kind = SPOT if spot else ONDEMAND
        site = None if loc is None else self.sites.get(loc)
        if self.is_home(site):
            return group_name(kind, generation), None
        assert site is not None
        return group_name(kind, generation, site.key), site

    def location_for(self, group: str, sites: Mapping[str, Site]) -> Location | None:
        """The location of a group (``sites``: the placed groups' sites); None when the
        group is a home group of a deployer without a home site."""
        parsed = parse_group_key(group)
        if parsed is None:
            return None
        spot = parsed[0] == SPOT
        site = sites.get(group) if parsed[2] is not None else self.home
        return None if site is None else location_of(site, spot)


_SUFFIXES = r"(?:-(?:\d+|set|files|headless|nodes|node\d+))*"


def failed_groups(text: str, failure: LaunchFailure, grown: Iterable[str],
                  zones: Mapping[str, str | None]) -> list[str]:
    """The groups (among ``grown``, those the failed ``up`` added replicas to) a launch
    failure is about: those whose resources the engine's error names (``svc-spot-0``,
    ``svc-spot-us-east-1b-3f2a-0``, ``svc-spot-g2-...-set``), else those in the zone the
    error names, else the only group that grew. Empty when it cannot tell."""
    grown = list(grown)
    named = [g for g in grown
             if re.search(rf"-{re.escape(g)}{_SUFFIXES}(?![\w-])", text)]
    if named:
        return named
    if failure.where:
        in_zone = [g for g in grown if zones.get(g) == failure.where]
        if in_zone:
            return in_zone
    return grown if len(grown) == 1 else []
