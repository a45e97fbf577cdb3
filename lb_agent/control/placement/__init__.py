"""Where the next replica goes: locations, what happened at each, and the placement policies.

Owns: the ``Location`` of a replica (cloud, region, zone, candidate, spot or on-demand, price),
the ``LocationBook`` that records launches, READY replicas, failed launches and preemptions per
location and derives each location's state (active, preempted, blocked until a time), and the
placement policies behind one ``Placer`` protocol:

* ``spothedge``: SkyServe's ``spot_placer: dynamic_fallback`` (the SpotHedge policy): the
  cheapest *active* location not used by another live spot replica, else the cheapest active
  one; a preemption or a failed launch marks a location preempted, a successful launch marks it
  active again, and when fewer than two active locations remain every location is reset to
  active. On-demand replicas go to the cheapest on-demand location. Its spot/on-demand counts
  are the autoscaler's own (``FallbackRequestRateAutoscaler``).
* ``single-zone``: skyform's behaviour before placement existed: every replica in the first
  candidate's one location (spot or on-demand as asked).
* ``skyform`` (the default, a skyform extension, see docs/placement.md): takes a location's
  hazard from the age of its capacity (since it, or a sibling zone of its region, was last
  seen without), places each replica where the fleet's chance of dropping below the target
  is lowest, then spread, then cheap locations that held (a learnt preemption rate), blocks a
  location after a failed launch or a preemption with a block that doubles per strike (a
  READY replica there lifts it and forgives one strike), launches no spot while every
  location is blocked, holds a spare only where a zone loss can leave it standing (it learns
  whether losses take a whole zone), holds a backup copy of the largest zone's share in
  another zone for a while after any spot preemption (the market is unstable then; spares
  enough for a whole second copy are held only as that copy, for longer), sends
  urgent replacements (the shortfall no live spot replica replaces yet) where capacity is
  known to be, and covers with on-demand the READY shortfall below ``target`` that spot
  replicas already STARTING will not close, plus, while all of it depends on a zone whose
  capacity has just come back, that zone's share.

Everything here is pure: no I/O, the clock is passed in, randomness comes from the ``rng``
given to ``build_placer``. The agent (scaler, deployer) and ``bench/spot_bench.py`` drive it.

Modules: ``locations`` (``Location``, ``LocationBook``), ``policy`` (the ``Placer`` protocol,
the names, the shared plumbing), ``baselines`` (``spothedge``, ``single-zone``), ``skyform``
(the default); this module builds a placer by name.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lb_agent.control.placement.baselines import SingleZonePlacer, SpotHedgePlacer
from lb_agent.control.placement.locations import Location
from lb_agent.control.placement.policy import PLACERS, SINGLE_ZONE, SKYFORM, SPOTHEDGE, Placer
from lb_agent.control.placement.skyform import SkyformPlacer


def build_placer(
    name: str, candidates: Sequence[Location], rng: random.Random | None = None,
    **options: Any,
) -> Placer:
    """A placer by name (``skyform``, ``spothedge``, ``single-zone``). ``candidates`` is the
    ordered menu (spot and on-demand locations with prices); ``options`` are the policy's
    keyword settings (skyform: ``half_life_seconds``, ``block_base_seconds``,
    ``block_max_seconds``)."""
    rng = rng or random.Random(0)
    if name == SKYFORM:
        return SkyformPlacer(candidates, rng, **options)
    if options:
        raise ValueError(f"placement: {name} takes no options, got {sorted(options)}")
    if name == SPOTHEDGE:
        return SpotHedgePlacer(candidates, rng)
    if name == SINGLE_ZONE:
        return SingleZonePlacer(candidates, rng)
    raise ValueError(f"placement: unknown policy {name!r}; valid: {', '.join(PLACERS)}")
