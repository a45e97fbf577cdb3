"""The fleet: replica groups per *generation*, the one record the program and the agent share.

A generation is a set of replicas launched from one replica spec (what the service YAML says
outside its ``service:`` section, plus the content of its local files). The first deploy is
generation 1. A ``pulumi up`` of a YAML whose replica spec differs from every live
generation's adds generation N+1 with no replicas; the agent then moves replicas from the old
generations to the new one (rolling or blue-green, lb_agent.control.rollout) by writing per-group
counts (``skyform:fleet``) and running its targeted ``up``. A change of the ``service:``
section only keeps the generation (SkyServe's in-place reuse), and a YAML reverted to a live
generation's spec makes that generation current again.

The record lives in two places, and this module reads and writes both:

* the stack config key ``skyform:fleet`` (a JSON list) that the agent writes before each of
  its ``up``s, on the controller's copy of the stack;
* the stack output ``fleet`` (the same list) that every ``up`` exports, so a ``pulumi up`` run
  elsewhere (the user's checkout, whose stack file has no ``skyform:fleet``) reads the counts
  the agent last applied from the stack's state instead of resetting them.

Group names: ``spot``/``ondemand`` for generation 1 (as before generations existed) and
``spot-g<N>``/``ondemand-g<N>`` after; a replica id is ``<group>-<index>``. Those are the
*home* groups, at the stack's own location (``skyform:region``/``zone``, the first
candidate), so a stack deployed before locations existed keeps every resource name. A group
the agent placed elsewhere (lb_agent.control.placement chose the location) is named
``<home group>-<site key>`` (``spot-us-east-1b-3f2a``, ``spot-g2-us-east-1b-3f2a``) and its
``Site`` is recorded in the generation's ``groups`` list. ``skip`` lists indices of VM
groups that are gone for good (a preempted spot replica: its replacement goes elsewhere,
the program declares no resource for that index).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lb_agent.control.rollout import replica_spec

FLEET_KEY = "skyform:fleet"
FLEET_OUTPUT = "fleet"
SPOT = "spot"
ONDEMAND = "ondemand"
KINDS = (SPOT, ONDEMAND)
#: SKYPILOT_SERVE_REPLICA_ID offsets: on-demand replicas +1000, each later generation +2000.
ONDEMAND_ID_OFFSET = 1000
GENERATION_ID_OFFSET = 2000

#: A site key: a slug of the zone (or region) and 4 hex digits of the whole site, so it
#: always holds a dash and never reads as a generation (``g2``).
_KEY = r"[a-z0-9][a-z0-9-]*-[0-9a-f]{4}"
_GROUP = re.compile(rf"^(spot|ondemand)(?:-g([1-9][0-9]*))?(?:-({_KEY}))?$")
_REPLICA = re.compile(rf"^(spot|ondemand)(?:-g([1-9][0-9]*))?(?:-({_KEY}))?-([0-9]+)$")
_SLUG_BAD = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Site:
    """Where a placed group runs: cloud, region, zone and candidate (an index into the
    service's resource candidates, with its accelerator and machine), and its hourly price
    per replica (None: unknown). The market is the group's kind."""

    cloud: str
    region: str
    zone: str | None = None
    candidate: int = 0
    accelerator: str | None = None
    instance_type: str = ""
    price: float | None = None

    @property
    def key(self) -> str:
        """Stable and name-safe: the same site always maps to the same group name (the price
        is not part of it: a price change moves nothing)."""
        where = _SLUG_BAD.sub("-", (self.zone or self.region or "any").lower()).strip("-")
        ident = json.dumps([self.cloud, self.region, self.zone, self.candidate])
        return f"{where[:16].strip('-') or 'any'}-{hashlib.sha256(ident.encode()).hexdigest()[:4]}"

    def to_json(self) -> dict[str, Any]:
        return {"cloud": self.cloud, "region": self.region, "zone": self.zone,
                "candidate": self.candidate, "accelerator": self.accelerator,
                "instance_type": self.instance_type, "price": self.price}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Site:
        price = value.get("price")
        return cls(str(value.get("cloud") or ""), str(value.get("region") or ""),
                   None if value.get("zone") in (None, "") else str(value["zone"]),
                   int(value.get("candidate") or 0),
                   None if value.get("accelerator") is None else str(value["accelerator"]),
                   str(value.get("instance_type") or ""),
                   None if price is None else float(price))


def group_name(kind: str, generation: int, key: str | None = None) -> str:
    """``spot``/``ondemand`` for generation 1, ``<kind>-g<N>`` after; ``-<site key>`` for a
    group placed away from the stack's home location."""
    base = kind if generation == 1 else f"{kind}-g{generation}"
    return f"{base}-{key}" if key else base


def parse_group(name: str | None) -> tuple[str, int] | None:
    """(kind, generation) of a group name; None when it is not one."""
    parsed = parse_group_key(name)
    return None if parsed is None else parsed[:2]


def parse_group_key(name: str | None) -> tuple[str, int, str | None] | None:
    """(kind, generation, site key or None for a home group) of a group name."""
    m = _GROUP.match(name or "")
    return (m.group(1), int(m.group(2) or 1), m.group(3)) if m else None


def parse_replica(replica_id: str) -> tuple[str, int] | None:
    """(group name, index) of a replica id ``<group>-<index>``; None when it is not one."""
    m = _REPLICA.match(replica_id)
    if not m:
        return None
    return group_name(m.group(1), int(m.group(2) or 1), m.group(3)), int(m.group(4))


def generation_of(replica_id: str) -> int | None:
    """The generation of a replica id ``<group>-<index>``; None when it is not one."""
    m = _REPLICA.match(replica_id)
    return int(m.group(2) or 1) if m else None


def replica_number(group: str | None, index: int) -> int:
    """SkyPilot's integer replica id (SKYPILOT_SERVE_REPLICA_ID): index + 1, +1000 for
    on-demand, +2000 per generation after the first, so ids never collide and a later
    launch has a larger id."""
    kind, generation = parse_group(group) or (SPOT, 1)
    return (index + 1 + (ONDEMAND_ID_OFFSET if kind == ONDEMAND else 0)
            + GENERATION_ID_OFFSET * (generation - 1))


def replica_digest(service: Mapping[str, Any], files_digest: str = "") -> str:
    """The identity of a generation: ``service`` is the spec the agent config carries
    (``ServiceTask.to_json``), ``files_digest`` the content of its local workdir and file
    mounts. Only the replica part counts (``lb_agent.control.rollout.replica_spec``), so a
    ``service:``-only change keeps the generation, as SkyServe's in-place reuse keeps the
    replicas; a spec with a workdir or file mounts is never reused, so there the whole spec
    and the files count."""
    if service.get("file_mounts") or service.get("workdir"):
        basis: Any = {"spec": {k: v for k, v in service.items() if k != "source"},
                      "files": files_digest}
    else:
        basis = replica_spec(service)
    text = json.dumps(basis, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PlacedGroup:
    """A group of one generation placed at ``site`` (away from the home location)."""

    kind: str
    site: Site
    count: int

    def name(self, generation: int) -> str:
        return group_name(self.kind, generation, self.site.key)

    def to_json(self) -> dict[str, Any]:
        return {"market": self.kind, "count": self.count, "location": self.site.to_json()}


@dataclass(frozen=True)
class Generation:
    """One generation's replica spec digest, its home groups' counts (``spot``/``ondemand``,
    the schema before locations), the groups placed elsewhere, and the gone indices."""

    generation: int
    digest: str
    spot: int = 0
    ondemand: int = 0
    placed: tuple[PlacedGroup, ...] = ()
    #: (group name, index) pairs the program declares nothing for (a preempted VM replica).
    skip: tuple[tuple[str, int], ...] = ()

    def count(self, kind: str) -> int:
        return self.spot if kind == SPOT else self.ondemand

    def total(self, kind: str) -> int:
        """Replicas of ``kind`` at every location."""
        return self.count(kind) + sum(p.count for p in self.placed if p.kind == kind)

    def group_counts(self) -> dict[str, int]:
        """Every group of this generation with its count (home groups always listed)."""
        out = {group_name(k, self.generation): self.count(k) for k in KINDS}
        out.update({p.name(self.generation): p.count for p in self.placed})
        return out

    def skipped(self, group: str) -> frozenset[int]:
        return frozenset(i for g, i in self.skip if g == group)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"generation": self.generation, "digest": self.digest,
                               "spot": self.spot, "ondemand": self.ondemand}
        # Only when used, so a single-location fleet writes exactly the schema it always had.
        if self.placed:
            out["groups"] = [p.to_json() for p in
                             sorted(self.placed, key=lambda p: p.name(self.generation))]
        if self.skip:
            by: dict[str, list[int]] = {}
            for g, i in sorted(self.skip):
                by.setdefault(g, []).append(i)
            out["skip"] = by
        return out


class FleetError(ValueError):
    """A ``skyform:fleet`` value that is not a fleet."""


@dataclass(frozen=True)
class Fleet:
    """Every live generation, and the service version the agent last recorded (a controller
    that lost its state starts from it; SkyServe #8562)."""

    generations: tuple[Generation, ...] = ()
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version,
                "generations": [g.to_json() for g in
                                sorted(self.generations, key=lambda g: g.generation)]}


def parse_fleet(value: Any) -> Fleet | None:
    """The fleet from the config key (a JSON string) or the stack output (an object); None
    when unset. Raises FleetError naming what is wrong."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FleetError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, Mapping) or not isinstance(value.get("generations"), list):
        raise FleetError('expected {"version": N, "generations": [{"generation", "digest", '
                         '"spot", "ondemand"}, ...]}')
    version = value.get("version")
    # Stack outputs come back through protobuf, where every number is a float.
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or version < 1):
        raise FleetError("version: expected an integer >= 1 or null")
    out: dict[int, Generation] = {}
    for i, item in enumerate(value["generations"]):
        if not isinstance(item, Mapping):
            raise FleetError(f"generations[{i}]: expected an object")
        try:
            numbers = [item["generation"], item.get("spot") or 0, item.get("ondemand") or 0]
            if any(isinstance(n, bool) or (isinstance(n, float) and not n.is_integer())
                   for n in numbers):
                raise ValueError
            gen = Generation(int(numbers[0]), str(item.get("digest") or ""), int(numbers[1]),
                             int(numbers[2]))
        except (KeyError, TypeError, ValueError):
            raise FleetError(f"generations[{i}]: expected integer generation, spot and "
                             "ondemand") from None
        if gen.generation < 1 or gen.spot < 0 or gen.ondemand < 0:
            raise FleetError(f"generations[{i}]: generation must be >= 1, counts >= 0")
        gen = Generation(gen.generation, gen.digest, gen.spot, gen.ondemand,
                         _parse_placed(item.get("groups"), f"generations[{i}].groups"),
                         _parse_skip(item.get("skip"), f"generations[{i}].skip"))
        out[gen.generation] = gen
    return Fleet(tuple(out[g] for g in sorted(out)), version)


def _parse_placed(value: Any, where: str) -> tuple[PlacedGroup, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FleetError(f"{where}: expected a list of groups")
    out: dict[str, PlacedGroup] = {}
    for j, item in enumerate(value):
        try:
            kind = item["market"]
            count = item["count"]
            if kind not in KINDS or isinstance(count, bool) or int(count) != count or count < 0:
                raise ValueError
            site = Site.from_json(item["location"])
            if not site.cloud:
                raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError):
            raise FleetError(f"{where}[{j}]: expected {{\"market\": \"spot\"|\"ondemand\", "
                             "\"count\": N >= 0, \"location\": {\"cloud\", \"region\", "
                             "\"zone\", \"candidate\", ...}}") from None
        group = PlacedGroup(str(kind), site, int(count))
        out[group_name(group.kind, 1, site.key)] = group
    return tuple(out.values())


def _parse_skip(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    if value is None:
        return ()
    bad = FleetError(f"{where}: expected {{group name: [index, ...]}}")
    if not isinstance(value, Mapping):
        raise bad
    out: set[tuple[str, int]] = set()
    for group, indices in value.items():
        if parse_group(str(group)) is None or not isinstance(indices, list):
            raise bad
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, (int, float)) or index < 0 \
                    or int(index) != index:
                raise bad
            out.add((str(group), int(index)))
    return tuple(sorted(out))


def fleet_json(fleet: Fleet) -> str:
    """The ``skyform:fleet`` config value."""
    return json.dumps(fleet.to_json(), sort_keys=True, separators=(",", ":"))


def current_generation(fleet: Iterable[Generation], digest: str) -> tuple[int, bool]:
    """(generation the spec with ``digest`` runs as, True when it is a new one).

    The newest live generation with that digest (a revert makes an old one current again),
    else one past the newest live one (a retired generation's groups are gone, so reusing
    its number reuses no resource)."""
    gens = sorted(fleet, key=lambda g: g.generation)
    for gen in reversed(gens):
        if gen.digest == digest:
            return gen.generation, False
    return (gens[-1].generation + 1 if gens else 1), True
