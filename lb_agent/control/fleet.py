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
``spot-g<N>``/``ondemand-g<N>`` after; a replica id is ``<group>-<index>``.
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

_GROUP = re.compile(r"^(spot|ondemand)(?:-g([1-9][0-9]*))?$")
_REPLICA = re.compile(r"^(spot|ondemand)(?:-g([1-9][0-9]*))?-([0-9]+)$")


def group_name(kind: str, generation: int) -> str:
    """``spot``/``ondemand`` for generation 1, ``<kind>-g<N>`` after."""
    return kind if generation == 1 else f"{kind}-g{generation}"


def parse_group(name: str | None) -> tuple[str, int] | None:
    """(kind, generation) of a group name; None when it is not one."""
    m = _GROUP.match(name or "")
    return (m.group(1), int(m.group(2) or 1)) if m else None


def parse_replica(replica_id: str) -> tuple[str, int] | None:
    """(group name, index) of a replica id ``<group>-<index>``; None when it is not one."""
    m = _REPLICA.match(replica_id)
    if not m:
        return None
    return group_name(m.group(1), int(m.group(2) or 1)), int(m.group(3))


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
class Generation:
    """One generation's replica spec digest and its per-kind replica counts."""

    generation: int
    digest: str
    spot: int = 0
    ondemand: int = 0

    def count(self, kind: str) -> int:
        return self.spot if kind == SPOT else self.ondemand

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "digest": self.digest,
                "spot": self.spot, "ondemand": self.ondemand}


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
        out[gen.generation] = gen
    return Fleet(tuple(out[g] for g in sorted(out)), version)


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
