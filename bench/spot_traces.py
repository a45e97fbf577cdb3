"""Made spot traces: markets of a stated kind, written in the public traces' format.

The public traces (skypilot-org/spot-traces, the SpotHedge artifact) are a handful of
markets, and a policy measured only on them can be a fit to those files. This module makes
more: each ``Market`` states how its zones gain and lose spot capacity, and ``make`` draws a
set of traces from it with a seed, the same set for the same seed. ``bench/spot_matrix.py
--made`` runs skyform against SpotHedge on every market here; ``--out DIR`` writes the
files for ``bench/spot_bench.py --traces DIR/<market>``.

The model, per zone: spells of capacity and of none alternate. A spell of capacity is short
(a flap) with probability ``short_share`` and long otherwise, each exponential with its
mean, so that a zone's chance of losing capacity falls with the time it has held (as
measured on the public traces: docs/placement.md); a spell of none is exponential, and
zones differ (``zone_spread``: some are out far more than others). On top,
each region has outages that take every zone of it at once (zones of one region tend to go
together). A 1-node market writes 1 (any number) or 0; a count market writes how many
instances a zone gives, a level from 1 to ``counts`` that moves one up or down at
``count_changes_per_hour`` while the zone has capacity (a shrinking zone preempts some of
a fleet, not all). Zone names are AWS-shaped (``us-east-1a``) so that spot_bench finds their
regions.

Run: ``.venv/bin/python bench/spot_traces.py --out DIR [--seed S] [--market NAME]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REGION_NAMES = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "ap-south-1")


@dataclass(frozen=True)
class Market:
    """How a made set's zones gain and lose spot capacity (means in hours)."""

    name: str
    regions: int
    zones_per_region: int
    short_share: float
    short_up_hours: float
    long_up_hours: float
    down_hours: float
    #: Outages per day per region, each taking every zone of the region for a spell.
    region_outages_per_day: float
    region_down_hours: float
    #: 0: a 1-node market (any number or none); else the most instances a zone gives.
    counts: int = 0
    count_changes_per_hour: float = 0.0
    #: Zones differ: each zone's spells of none are longer, and its long spells of capacity
    #: shorter, by one factor drawn log-uniformly from 1/spread to spread.
    zone_spread: float = 2.0
    days: float = 14.0
    gap_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.regions <= len(REGION_NAMES) or not 1 <= self.zones_per_region <= 6:
            raise ValueError(f"market {self.name!r}: regions must be 1 to {len(REGION_NAMES)} "
                             f"and zones_per_region 1 to 6, not {self.regions} and "
                             f"{self.zones_per_region}")
        if (min(self.short_up_hours, self.long_up_hours, self.down_hours, self.days,
                self.gap_seconds, self.zone_spread) <= 0 or not 0 <= self.short_share <= 1
                or min(self.region_outages_per_day, self.counts,
                       self.count_changes_per_hour) < 0
                or (self.region_outages_per_day > 0 and self.region_down_hours <= 0)):
            raise ValueError(f"market {self.name!r}: spells, days, the gap and zone_spread "
                             "must be > 0 (region_down_hours too with region outages), rates "
                             "and counts >= 0, short_share from 0 to 1")

    @property
    def steps_per_hour(self) -> float:
        """Trace steps in an hour (spells and rates are stated in hours)."""
        return 3600.0 / self.gap_seconds

    def zones(self) -> list[tuple[str, str]]:
        """``(region, zone)`` of every zone, regions first."""
        return [(REGION_NAMES[r], REGION_NAMES[r] + "abcdef"[z])
                for r in range(self.regions) for z in range(self.zones_per_region)]


#: The made markets: stated kinds, not fits to any trace. Each differs from the others in
#: one way that matters to placement: how long capacity holds, how often it flaps, how much
#: of the time spot is missing, how strongly a region's zones go together, and whether a
#: zone gives any number of instances or a count that shrinks.
MARKETS: tuple[Market, ...] = (
    Market("steady", 3, 3, short_share=0.5, short_up_hours=0.5, long_up_hours=24.0,
           down_hours=1.0, region_outages_per_day=0.2, region_down_hours=1.0, zone_spread=4.0),
    Market("flappy", 2, 2, short_share=0.8, short_up_hours=0.25, long_up_hours=6.0,
           down_hours=0.5, region_outages_per_day=0.5, region_down_hours=0.5),
    Market("scarce", 1, 3, short_share=0.5, short_up_hours=1.0, long_up_hours=8.0,
           down_hours=6.0, region_outages_per_day=0.3, region_down_hours=3.0),
    Market("regional", 3, 2, short_share=0.3, short_up_hours=0.5, long_up_hours=24.0,
           down_hours=0.5, region_outages_per_day=1.0, region_down_hours=1.0),
    Market("counts", 2, 2, short_share=0.4, short_up_hours=1.0, long_up_hours=12.0,
           down_hours=2.0, region_outages_per_day=0.2, region_down_hours=1.0,
           counts=6, count_changes_per_hour=0.5),
    Market("thin-counts", 1, 3, short_share=0.6, short_up_hours=0.5, long_up_hours=6.0,
           down_hours=1.0, region_outages_per_day=0.3, region_down_hours=1.0,
           counts=3, count_changes_per_hour=1.0),
)


def _spells(rng: random.Random, m: Market, steps: int) -> list[bool]:
    """One zone's own spells of capacity (True) and none, per step; starts with capacity."""
    per_hour = m.steps_per_hour
    worse = math.exp(rng.uniform(-1.0, 1.0) * math.log(m.zone_spread))
    out: list[bool] = []
    up = True
    while len(out) < steps:
        if up:
            short = rng.random() < m.short_share
            mean = m.short_up_hours if short else m.long_up_hours / worse
        else:
            mean = m.down_hours * worse
        out.extend([up] * max(1, round(rng.expovariate(1.0 / mean) * per_hour)))
        up = not up
    return out[:steps]


def _region_outages(rng: random.Random, m: Market, steps: int) -> list[bool]:
    """Steps on which a region is out (every zone of it without capacity)."""
    per_hour = m.steps_per_hour
    out = [False] * steps
    if m.region_outages_per_day <= 0:
        return out
    t = 0.0
    while True:
        t += rng.expovariate(m.region_outages_per_day / 24.0) * per_hour
        if t >= steps:
            return out
        length = max(1, round(rng.expovariate(1.0 / m.region_down_hours) * per_hour))
        for i in range(int(t), min(steps, int(t) + length)):
            out[i] = True


def _levels(rng: random.Random, m: Market, steps: int) -> list[int]:
    """A count market's level per step: a walk between 1 and ``counts``."""
    p = m.count_changes_per_hour / m.steps_per_hour
    level = rng.randint(1, m.counts)
    out = []
    for _ in range(steps):
        if rng.random() < p:
            level = min(m.counts, max(1, level + rng.choice((-1, 1))))
        out.append(level)
    return out


def make(m: Market, seed: int) -> dict[str, list[int]]:
    """``{zone: data}``: the market's traces drawn with ``seed`` (the same for the same seed)."""
    rng = random.Random(f"{m.name}/{seed}")
    steps = round(m.days * 24 * m.steps_per_hour)
    regions = {REGION_NAMES[r]: _region_outages(rng, m, steps) for r in range(m.regions)}
    traces = {}
    for region, zone in m.zones():
        own = _spells(rng, m, steps)
        levels = _levels(rng, m, steps) if m.counts else [1] * steps
        traces[zone] = [lv if up and not out else 0
                        for up, out, lv in zip(own, regions[region], levels, strict=True)]
    return traces


def write(m: Market, seed: int, directory: Path) -> list[Path]:
    """Write the market's traces as ``<zone>_made_<counts or 1>.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for zone, data in make(m, seed).items():
        path = directory / f"{zone}_made_{m.counts or 1}.json"
        path.write_text(json.dumps({"metadata": {"gap_seconds": m.gap_seconds,
                                                 "market": m.name, "seed": seed},
                                    "data": data}))
        paths.append(path)
    return paths


def market(name: str) -> Market:
    """The market called ``name`` (ValueError naming the valid ones otherwise)."""
    for m in MARKETS:
        if m.name == name:
            return m
    raise ValueError(f"no market {name!r}; valid: {', '.join(m.name for m in MARKETS)}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True,
                    help="write each market's traces into OUT/<market>/")
    ap.add_argument("--seed", type=int, default=1, help="the draw (1)")
    ap.add_argument("--market", action="append", default=None,
                    help=f"only this market (repeatable): {', '.join(m.name for m in MARKETS)}")
    a = ap.parse_args(argv)
    try:
        chosen = [market(n) for n in a.market] if a.market else list(MARKETS)
    except ValueError as exc:
        ap.error(str(exc))
    for m in chosen:
        paths = write(m, a.seed, a.out / m.name)
        print(f"{m.name}: {len(paths)} zones, {m.days:g} days, in {a.out / m.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
