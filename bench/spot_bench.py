"""Spot placement policies replayed on spot availability traces (availability and cost).

Runs the agent's real autoscaler (``lb_agent.control.autoscaler``) and placer
(``lb_agent.control.placement``) on a virtual clock against a simulated cloud read from trace
files, and compares policies. Traces are files ``<zone>_<anything>.json`` in the public format
``{"metadata": {"gap_seconds": G}, "data": [n, ...]}``: per step, how many spot instances the
zone can give (a file whose values are all 0/1 means "any number" or "none").

Semantics (so that numbers are comparable):

* steps of ``--tick-seconds`` (60); at each step the zones' capacities apply first (when a zone
  holds fewer than we have there, the newest of ours go first: preempted), then launches issued
  earlier resolve (READY ``--provision-seconds`` (300) after launch; a failed spot launch is
  noticed ``--launch-fail-seconds`` (180) after it was issued, and a launch that has not
  failed by then has gone through: the autoscaler sees it STARTING until it is READY, as the
  agent sees a replica that has registered), then the autoscaler decides and
  the placer places each new replica (and hears of each replica scaled down, as it does from
  the deployer);
* a spot launch succeeds iff the zone's capacity at that step exceeds our instances there;
  on-demand always succeeds;
* cost: the price of every instance held (provisioning or READY) per step, ``--spot-price``
  0.3 and ``--ondemand-price`` 1.0, normalised to N on-demand replicas for the whole run;
* availability: the share of steps with at least N READY replicas (and at least 1), counted
  after the first provisioning delay; ``availability_any``: at least 1 READY;
* a set is cut to its shortest trace; ``--window-hours H --repeats R --seed S`` replays R random
  windows, the zone order shuffled per repeat, the same windows and orders for every policy.

Policies: ``skyform`` (the default placer), ``spothedge`` (SkyServe's ``dynamic_fallback``
placer with dynamic on-demand fallback), ``single-zone`` (every replica spot in the first zone),
``single-zone-fallback`` (the same with dynamic on-demand fallback), ``on-demand``.

Run: ``.venv/bin/python bench/spot_bench.py --traces DIR --replicas 4`` with DIR a folder of
the public spot traces (github.com/skypilot-org/spot-traces, e.g.
``availability/1-node/aws-02-15-2023``); docs/placement.md has the table and every command.
Last line: ``skyform availability A cost C``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import random
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lb_agent.control.autoscaler import (
    FallbackRequestRateAutoscaler,
    Operator,
    PolicyParams,
    ReplicaView,
    build_autoscaler,
)
from lb_agent.control.placement import build_placer
from lb_agent.control.placement.locations import Location
from lb_agent.control.placement.policy import Placer
from lb_agent.control.states import ReplicaState

POLICIES = ("skyform", "spothedge", "single-zone", "single-zone-fallback", "on-demand")
#: policy -> (placer name, dynamic on-demand fallback, spot)
_POLICY = {
    "skyform": ("skyform", True, True),
    "spothedge": ("spothedge", True, True),
    "single-zone": ("single-zone", False, True),
    "single-zone-fallback": ("single-zone", True, True),
    "on-demand": ("single-zone", False, False),
}
UNLIMITED = 1 << 30


class TraceError(ValueError):
    """A trace file or directory the benchmark cannot use (the message names it)."""


@dataclass(frozen=True)
class Trace:
    zone: str
    gap_seconds: float
    data: tuple[int, ...]

    @property
    def seconds(self) -> float:
        return self.gap_seconds * len(self.data)


def load_traces(directory: Path, pattern: str = "*.json") -> list[Trace]:
    """The traces in ``directory`` matching ``pattern``, sorted by file name."""
    if not directory.is_dir():
        raise TraceError(f"{directory}: not a directory of trace files")
    files = sorted(p for p in directory.iterdir() if fnmatch.fnmatch(p.name, pattern))
    if not files:
        raise TraceError(f"{directory}: no file matches {pattern!r}")
    out = []
    for path in files:
        try:
            raw = json.loads(path.read_text())
            gap = float(raw["metadata"]["gap_seconds"])
            data = [int(v) for v in raw["data"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TraceError(
                f"{path}: expected {{\"metadata\": {{\"gap_seconds\": G}}, \"data\": [n, ...]}}"
                f" ({type(exc).__name__}: {exc})") from None
        if gap <= 0 or not data or min(data) < 0:
            raise TraceError(f"{path}: gap_seconds must be > 0 and data non-empty, >= 0")
        if max(data) <= 1:
            data = [UNLIMITED if v else 0 for v in data]
        out.append(Trace(path.name.split("_", 1)[0], gap, tuple(data)))
    zones = [t.zone for t in out]
    if len(set(zones)) != len(zones):
        raise TraceError(f"{directory}: two files for one zone among {zones}; narrow --glob")
    return out


def zone_region(zone: str) -> tuple[str, str]:
    """(cloud, region) guessed from a zone name: AWS ``us-east-1a``, GCP ``us-central1-a``."""
    if re.fullmatch(r"[a-z]+(?:-[a-z]+)+-\d+[a-z]", zone):
        return "aws", zone[:-1]
    if re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", zone):
        return "gcp", zone.rsplit("-", 1)[0]
    return "sim", zone


@dataclass
class Settings:
    replicas: int = 4
    overprovision: int = 1
    tick_seconds: float = 60.0
    provision_seconds: float = 300.0
    launch_fail_seconds: float = 180.0
    spot_price: float = 0.3
    ondemand_price: float = 1.0

    def steps(self, seconds: float) -> int:
        """Whole steps (at least one) that ``seconds`` take: a replica launched at step s is
        READY at step s + steps(provision_seconds), and availability is counted from that
        step of the run on."""
        return max(1, math.ceil(seconds / self.tick_seconds))

    def window_steps(self, steps: int, window_hours: float | None) -> int:
        """Steps one replay covers: the whole set of ``steps``, or ``window_hours`` of it."""
        return steps if window_hours is None else int(window_hours * 3600 // self.tick_seconds)


@dataclass
class _Replica:
    rid: str
    seq: int
    loc: Location
    launched: int
    #: Step at which it becomes READY, or at which its failure is noticed.
    due: int
    failed: bool
    ready: bool = False


@dataclass
class Result:
    steps: int = 0
    counted: int = 0
    ready_steps: int = 0
    any_steps: int = 0
    cost: float = 0.0
    preemptions: int = 0
    failed_launches: int = 0
    launches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, s: Settings) -> dict[str, Any]:
        norm = s.replicas * s.ondemand_price * self.steps
        return {
            "availability": self.ready_steps / self.counted if self.counted else 0.0,
            "availability_any": self.any_steps / self.counted if self.counted else 0.0,
            "cost": self.cost / norm if norm else 0.0,
            "preemptions": self.preemptions,
            "failed_launches": self.failed_launches,
        }


def simulate(policy: str, zones: Sequence[str], capacity: Sequence[Sequence[int]],
             settings: Settings, seed: int = 0,
             observe: Callable[[int, Sequence[_Replica]], None] | None = None) -> Result:
    """One run: ``capacity[z][step]`` is zone ``zones[z]``'s spot capacity at each step.
    ``observe(step, live replicas)`` is called after each step's decisions (diagnostics)."""
    placer_name, dynamic, use_spot = _POLICY[policy]
    s = settings
    steps = min(len(c) for c in capacity)
    spot_locs, od_locs = [], []
    for z in zones:
        cloud, region = zone_region(z)
        spot_locs.append(Location(cloud, region, z, "trace", True, s.spot_price))
        od_locs.append(Location(cloud, region, z, "trace", False, s.ondemand_price))
    zone_index = {loc: i for i, loc in enumerate(spot_locs)}
    placer: Placer = build_placer(placer_name, spot_locs + od_locs, random.Random(seed))
    params = PolicyParams(min_replicas=s.replicas, max_replicas=s.replicas,
                          # The on-demand baseline holds N replicas, no spare.
                          num_overprovision=s.overprovision if use_spot else 0,
                          dynamic_ondemand_fallback=dynamic)
    scaler = build_autoscaler(params)
    if isinstance(scaler, FallbackRequestRateAutoscaler):
        scaler.counts_hook = placer.fallback_counts
    tick = s.tick_seconds
    provision = s.steps(s.provision_seconds)
    notice = s.steps(s.launch_fail_seconds)
    live: dict[str, _Replica] = {}
    held: list[list[_Replica]] = [[] for _ in zones]  # per zone, spot held, oldest first
    res = Result(steps=steps)
    seq = 0
    for step in range(steps):
        now = step * tick
        # 1. capacities: the newest go first.
        for zi, h in enumerate(held):
            cap = capacity[zi][step]
            while len(h) > cap:
                r = h.pop()
                del live[r.rid]
                res.preemptions += 1
                placer.preempted(r.loc, now)
        # 2. launches resolve.
        for r in list(live.values()):
            if r.due == step:
                if r.failed:
                    del live[r.rid]
                    res.failed_launches += 1
                    placer.launch_failed(r.loc, now, "capacity")
                else:
                    r.ready = True
                    placer.ready(r.loc, now, launched_at=r.launched * tick)
        # 3. the autoscaler decides, the placer places.
        views = [ReplicaView(r.rid, r.seq, ReplicaState.READY if r.ready else
                             ReplicaState.STARTING if not r.failed and step - r.launched >= notice
                             else ReplicaState.PROVISIONING, spot=r.loc.spot,
                             launched_at=r.launched * tick)
                 for r in live.values()]
        if isinstance(scaler, FallbackRequestRateAutoscaler):
            scaler.now = now
        for d in scaler.generate_decisions(views, now):
            if d.operator is Operator.SCALE_DOWN:
                assert d.replica_id is not None
                r = live.pop(d.replica_id)
                if r.loc.spot and not r.failed:
                    held[zone_index[r.loc]].remove(r)
                placer.released(r.loc, now)
                continue
            spot = use_spot if d.spot is None else d.spot
            loc = placer.choose(spot, [r.loc for r in live.values()], now)
            assert loc is not None
            seq += 1
            res.launches += 1
            placer.launched(loc, now)
            ok = True
            if spot:
                zi = zone_index[loc]
                ok = capacity[zi][step] > len(held[zi])
            r = _Replica(f"r{seq}", seq, loc, step, step + (provision if ok else notice),
                         failed=not ok)
            live[r.rid] = r
            if spot and ok:
                held[zone_index[loc]].append(r)
        # 4. measure.
        n_ready = 0
        cost = 0.0
        for r in live.values():
            if not r.failed:
                cost += r.loc.price
                n_ready += r.ready
        res.cost += cost
        if observe is not None:
            observe(step, list(live.values()))
        if step >= provision:
            res.counted += 1
            res.ready_steps += n_ready >= max(1, s.replicas)
            res.any_steps += n_ready >= 1
    return res


def per_step(traces: Sequence[Trace], tick: float) -> tuple[list[list[int]], int]:
    """Each trace resampled to steps of ``tick`` seconds, all cut to the shortest."""
    seconds = min(t.seconds for t in traces)
    steps = int(seconds // tick)
    out = []
    for t in traces:
        out.append([t.data[min(len(t.data) - 1, int(i * tick // t.gap_seconds))]
                    for i in range(steps)])
    return out, steps


def run(traces: Sequence[Trace], policies: Sequence[str], settings: Settings, *,
        window_hours: float | None = None, repeats: int = 1, seed: int = 0) -> dict[str, Any]:
    """Every policy over the same windows; returns ``{"results": {policy: summary}}``:
    availability and cost are the mean over the windows, preemptions and failed launches the
    total."""
    caps, steps = per_step(traces, settings.tick_seconds)
    zones = [t.zone for t in traces]
    rng = random.Random(seed)
    windows: list[tuple[int, int, list[int]]] = []
    if window_hours is None and repeats == 1:
        windows.append((0, steps, list(range(len(zones)))))
    else:
        length = settings.window_steps(steps, window_hours)
        if length <= 0 or length > steps:
            raise TraceError(f"--window-hours {window_hours}: the set has "
                             f"{steps * settings.tick_seconds / 3600:.1f} hours")
        for _ in range(repeats):
            start = rng.randrange(0, steps - length + 1)
            order = list(range(len(zones)))
            rng.shuffle(order)
            windows.append((start, length, order))
    results: dict[str, Any] = {}
    for policy in policies:
        sums: dict[str, float] = {}
        for i, (start, length, order) in enumerate(windows):
            res = simulate(policy, [zones[j] for j in order],
                           [caps[j][start:start + length] for j in order], settings, seed + i)
            for k, v in res.summary(settings).items():
                sums[k] = sums.get(k, 0.0) + v
        results[policy] = {k: (v / len(windows) if k in ("availability", "availability_any",
                                                          "cost") else v)
                           for k, v in sums.items()}
        for k in ("preemptions", "failed_launches"):
            results[policy][k] = int(results[policy][k])
    return {"results": results, "steps": steps, "windows": len(windows),
            "zones": zones}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, required=True, help="directory of trace files")
    ap.add_argument("--glob", default="*.json", help="trace file name pattern")
    ap.add_argument("--replicas", type=int, required=True, help="N: replicas wanted READY")
    ap.add_argument("--overprovision", type=int, default=1, help="num_overprovision (1)")
    ap.add_argument("--tick-seconds", type=float, default=60.0)
    ap.add_argument("--provision-seconds", type=float, default=300.0)
    ap.add_argument("--launch-fail-seconds", type=float, default=180.0)
    ap.add_argument("--spot-price", type=float, default=0.3)
    ap.add_argument("--ondemand-price", type=float, default=1.0)
    ap.add_argument("--window-hours", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default=",".join(POLICIES),
                    help=f"comma-separated, from {','.join(POLICIES)}")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    a = ap.parse_args(argv)
    policies = [p.strip() for p in a.policy.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        ap.error(f"--policy: unknown {bad}; valid: {','.join(POLICIES)}")
    if a.replicas < 1 or a.overprovision < 0 or a.repeats < 1:
        ap.error("--replicas must be >= 1, --overprovision >= 0, --repeats >= 1")
    if min(a.tick_seconds, a.provision_seconds, a.launch_fail_seconds) <= 0:
        ap.error("--tick-seconds, --provision-seconds and --launch-fail-seconds must be > 0")
    if a.ondemand_price <= 0 or a.spot_price < 0:
        # Cost is normalised to N on-demand replicas: a free on-demand leaves nothing to
        # normalise to.
        ap.error("--ondemand-price must be > 0 and --spot-price >= 0")
    if a.window_hours is not None and a.window_hours <= 0:
        ap.error("--window-hours must be > 0")
    settings = Settings(a.replicas, a.overprovision, a.tick_seconds, a.provision_seconds,
                        a.launch_fail_seconds, a.spot_price, a.ondemand_price)
    try:
        traces = load_traces(a.traces, a.glob)
        out = run(traces, policies, settings, window_hours=a.window_hours,
                  repeats=a.repeats, seed=a.seed)
    except TraceError as exc:
        print(f"spot_bench: {exc}", file=sys.stderr)
        return 2
    print(f"traces {a.traces} ({a.glob}): {len(traces)} zones, {out['steps']} steps of "
          f"{a.tick_seconds:g} s, {out['windows']} window(s); N={a.replicas} "
          f"overprovision={a.overprovision}")
    print(f"{'policy':<22}{'availability':>13}{'avail_any':>11}{'cost':>8}"
          f"{'preempt':>9}{'failed':>8}")
    for p, r in out["results"].items():
        print(f"{p:<22}{r['availability']:>13.4f}{r['availability_any']:>11.4f}"
              f"{r['cost']:>8.4f}{r['preemptions']:>9}{r['failed_launches']:>8}")
    if a.json is not None:
        a.json.write_text(json.dumps({"results": out["results"]}, indent=2) + "\n")
    if "skyform" in out["results"]:
        r = out["results"]["skyform"]
        print(f"skyform availability {r['availability']:.4f} cost {r['cost']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
