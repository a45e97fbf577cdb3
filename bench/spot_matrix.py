"""skyform against SpotHedge on every set and setting of docs/placement.md (the relative goal).

Runs each setting of ``MATRIX`` with the policies ``skyform`` and ``spothedge`` through
``bench/spot_bench.py``'s own code (its ``load_traces`` and ``run``: the agent's real
autoscaler and placer), ``--jobs`` processes at a time, and prints a markdown table: per
setting both policies' availability / cost, the cost ratio, and whether skyform meets the
relative goal (availability at least SpotHedge's at no more than 0.9x its cost).

A feasibility bound per setting: a policy that has N replicas READY on a share A of the
counted steps holds at least N spot instances on those steps, so its normalised cost is at
least ``spot_price / ondemand_price * A * counted / steps``. Matching SpotHedge's availability
A_sh therefore costs at least that much with A = A_sh, and when this bound exceeds
0.9x SpotHedge's cost the relative goal is out of reach for *any* policy: such settings are
marked ``infeasible`` (with the bound) and counted apart.

Run: ``.venv/bin/python bench/spot_matrix.py --traces $TRACES --ae $AE --jobs 2`` with
``$TRACES`` the public spot traces (github.com/skypilot-org/spot-traces) and ``$AE`` the
SpotHedge artifact's data (folders AWS1, AWS2, AWS3, GCP1). ``--only TEXT`` runs the settings
whose label contains TEXT; ``--beyond`` runs ``BEYOND`` (settings no policy change was
measured against) instead, ``--spares`` runs ``SPARES`` (as many spares as the target, or
more), ``--grid`` runs ``GRID`` (other targets and spare counts on every set);
``--made`` runs ``MADE`` (the markets of ``bench/spot_traces.py``, drawn with ``--draw D``
into a temporary folder: traces no policy change was measured on, and no ``--traces`` or
``--ae`` needed);
``--provision-seconds S`` runs every setting with replicas READY S seconds after launch
(spot_bench's 300 by default), and ``--tick-seconds``, ``--launch-fail-seconds``,
``--spot-price`` and ``--ondemand-price`` likewise set spot_bench's flags of those names for
every setting (a row's label names each that is not spot_bench's default); ``--json OUT``
writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# The repository (for lb_agent) and this folder (spot_bench, a sibling script).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import spot_bench as sb  # noqa: E402
import spot_traces as made  # noqa: E402

#: The two policies compared, and the relative goal's cost factor.
POLICIES = ("skyform", "spothedge")
COST_FACTOR = 0.9


@dataclass(frozen=True)
class Setting:
    """One row: a trace set (``root`` names which root folder it is under) and a run."""

    label: str
    root: str  # "traces" or "ae"
    path: str
    replicas: int
    overprovision: int = 1
    glob: str = "*.json"
    window_hours: float | None = None
    repeats: int = 1
    seed: int = 0
    #: spot_bench's benchmark settings (``RUN_FIELDS``; the flags of the same names here set
    #: them for every setting).
    tick_seconds: float = sb.Settings.tick_seconds
    provision_seconds: float = sb.Settings.provision_seconds
    launch_fail_seconds: float = sb.Settings.launch_fail_seconds
    spot_price: float = sb.Settings.spot_price
    ondemand_price: float = sb.Settings.ondemand_price

    def describe(self) -> str:
        """The row's label: the set, its windows, and each benchmark setting that is not
        spot_bench's default (so that keys of runs under other settings never mix)."""
        other = "".join(", " + text.format(getattr(self, f)) for f, text in RUN_FIELDS.items()
                        if getattr(self, f) != getattr(sb.Settings, f))
        if self.window_hours is None:
            return self.label + other
        seed = f" (seed {self.seed})" if self.seed != 1 else ""
        return f"{self.label}, {self.repeats} x {self.window_hours:g} h windows{seed}{other}"


#: The benchmark settings of spot_bench (its ``Settings`` fields and flags) that a matrix run
#: may change for every setting, each with how a row's label names a value other than
#: spot_bench's default.
RUN_FIELDS: dict[str, str] = {
    "tick_seconds": "steps of {:g} s",
    "provision_seconds": "{:g} s to READY",
    "launch_fail_seconds": "failed launches noticed after {:g} s",
    "spot_price": "spot at {:g}",
    "ondemand_price": "on-demand at {:g}",
}


def _flag(field: str) -> str:
    """The flag of a ``RUN_FIELDS`` setting, spelt as spot_bench spells it."""
    return "--" + field.replace("_", "-")


_NINE = ("aws-02-15-2023 (9 zones)", "traces", "availability/1-node/aws-02-15-2023")
_TWO = ("aws-10-26-2022 v100_1 (2 zones)", "traces", "availability/1-node/aws-10-26-2022")
_THREE = ("aws-08-27-2023 16-node (3 zones)", "traces", "availability/16-node/aws-08-27-2023")
_V100 = "*_v100_1.json"


def _set(base: tuple[str, str, str], n: int, k: int = 1, **kw: Any) -> Setting:
    return Setting(base[0], base[1], base[2], n, k, **kw)


def _ae(name: str, n: int, k: int = 1) -> Setting:
    return Setting(f"SpotHedge artifact {name}", "ae", name, n, k)


def _k80(n: int, k: int = 1) -> Setting:
    return Setting("aws-10-26-2022 k80_1 (2 zones)", "traces", _TWO[2], n, k, glob="*_k80_1.json")


def _pre(name: str, n: int = 4, k: int = 1) -> Setting:
    return Setting(f"preemption {name.replace('/', ' ')}", "traces", f"preemption/{name}", n, k)


#: The 36 settings: the three goal sets at N = 1, 2, 4, 8 and K = 0, 1, 2, windows of them,
#: another accelerator's 2-zone set, the SpotHedge artifact's sets and the preemption traces.
MATRIX: tuple[Setting, ...] = (
    *(_set(_NINE, n) for n in (4, 1, 2, 8)), _set(_NINE, 4, 0), _set(_NINE, 4, 2),
    *(_set(_TWO, n, glob=_V100) for n in (4, 1, 2, 8)),
    _set(_TWO, 4, 0, glob=_V100), _set(_TWO, 4, 2, glob=_V100),
    *(_set(_THREE, n) for n in (4, 1, 2, 8)), _set(_THREE, 4, 0), _set(_THREE, 4, 2),
    _set(_NINE, 4, window_hours=72, repeats=10, seed=1),
    _set(_TWO, 4, glob=_V100, window_hours=48, repeats=10, seed=1),
    _k80(4),
    _pre("4-node/aws-08-03-2023"),
    _ae("AWS1", 4), _ae("AWS2", 4), _ae("AWS3", 4), _ae("GCP1", 4),
    _pre("1-node/aws-04-19-2023"), _pre("1-node/aws-04-22-2023"), _pre("1-node/gcp-04-30-2023"),
    _ae("AWS1", 2), _ae("GCP1", 8), _ae("AWS2", 4, 0),
    _k80(1),
    _set(_THREE, 4, window_hours=24, repeats=20, seed=2),
    _ae("GCP1", 1), _ae("AWS3", 2, 2),
)

#: Settings beyond the matrix, which no policy change was measured against: the 2-zone set's
#: 8-node files, other targets, the 9-zone set cut to one region, windows with another seed,
#: and other targets on the preemption and artifact sets (``--beyond`` runs these instead).
BEYOND: tuple[Setting, ...] = (
    Setting("aws-10-26-2022 v100_8 (2 zones)", "traces", _TWO[2], 4, glob="*_v100_8.json"),
    Setting("aws-10-26-2022 k80_8 (2 zones)", "traces", _TWO[2], 4, glob="*_k80_8.json"),
    _set(_NINE, 3), _set(_NINE, 6),
    Setting("aws-02-15-2023 us-east-1 (4 zones)", "traces", _NINE[2], 4, glob="us-east-1*"),
    Setting("aws-02-15-2023 us-west-2 (3 zones)", "traces", _NINE[2], 4, glob="us-west-2*"),
    _set(_NINE, 4, window_hours=24, repeats=20, seed=7),
    _set(_THREE, 6), _set(_THREE, 3, 2),
    _pre("1-node/aws-04-22-2023", 2), _pre("4-node/aws-08-03-2023", 2),
    _ae("AWS2", 8), _ae("AWS3", 8), _ae("GCP1", 2),
)


def _every_set(n: int, k: int) -> tuple[Setting, ...]:
    """The matrix's twelve trace sets (whole, no windows) at N = ``n``, K = ``k``."""
    return (
        _set(_NINE, n, k), _set(_TWO, n, k, glob=_V100), _set(_THREE, n, k),
        _k80(n, k),
        *(_ae(name, n, k) for name in ("AWS1", "AWS2", "AWS3", "GCP1")),
        *(_pre(name, n, k) for name in ("4-node/aws-08-03-2023", "1-node/aws-04-19-2023",
                                        "1-node/aws-04-22-2023", "1-node/gcp-04-30-2023")),
    )


#: Spares enough for a second copy of the fleet (K >= N >= 2) on every set of the matrix
#: (``--spares`` runs these instead; the matrix's own AWS3 N = 2 K = 2 is left out).
SPARES: tuple[Setting, ...] = tuple(
    s for n, k in ((2, 2), (3, 3), (2, 3)) for s in _every_set(n, k) if s not in MATRIX)

#: Every set of the matrix at other targets and spare counts (N = 3, 6, 2 with K = 1, and
#: N = 4 K = 3), those not in the matrix or BEYOND: a check of the policy away from the
#: settings it was measured on (``--grid`` runs these instead).
GRID: tuple[Setting, ...] = tuple(
    s for n, k in ((3, 1), (6, 1), (2, 1), (4, 3)) for s in _every_set(n, k)
    if s not in MATRIX and s not in BEYOND)


def made_settings(draw: int) -> tuple[Setting, ...]:
    """The made markets of ``bench/spot_traces.py`` drawn with ``draw``, each at the matrix's
    targets and spare counts: N = 4, 1, 2, 8 with K = 1, and N = 4 with K = 0 and 2."""
    return tuple(Setting(f"made {m.name}, draw {draw}", "made", f"{m.name}/{draw}", n, k)
                 for m in made.MARKETS
                 for n, k in ((4, 1), (1, 1), (2, 1), (8, 1), (4, 0), (4, 2)))


#: The made markets' first draw (``--made``; ``--draw`` another).
MADE: tuple[Setting, ...] = made_settings(1)


def write_made(matrix: Sequence[Setting], root: Path) -> None:
    """Draw the made markets that ``matrix`` names into ``root/<market>/<draw>``."""
    for path in sorted({s.path for s in matrix if s.root == "made"}):
        name, draw = path.split("/")
        made.write(made.market(name), int(draw), root / path)


@dataclass(frozen=True)
class Row:
    """One setting's outcome: both policies' numbers, the ratio, the bound and the verdict."""

    setting: Setting
    skyform: dict[str, float]
    spothedge: dict[str, float]
    #: Least normalised cost of any policy as available as SpotHedge here.
    bound: float
    #: Steps of the set (cut to its shortest trace).
    steps: int = 0

    @property
    def ratio(self) -> float:
        c = self.spothedge["cost"]
        return self.skyform["cost"] / c if c else float("inf")

    @property
    def feasible(self) -> bool:
        return self.bound <= COST_FACTOR * self.spothedge["cost"]

    @property
    def met(self) -> bool:
        return (self.skyform["availability"] >= self.spothedge["availability"]
                and self.skyform["cost"] <= COST_FACTOR * self.spothedge["cost"])

    @property
    def verdict(self) -> str:
        if self.met:
            return "yes"
        return "no" if self.feasible else "infeasible"


def cost_bound(availability: float, settings: sb.Settings, counted_share: float) -> float:
    """The least normalised cost of a policy READY with N replicas on ``availability`` of the
    counted steps (``counted_share`` of all steps are counted): N spot prices on each."""
    return settings.spot_price / settings.ondemand_price * availability * counted_share


def counted_share(setting: Setting, steps: int, settings: sb.Settings) -> float:
    """Share of a run's steps that availability counts (all but the first provisioning)."""
    length = settings.window_steps(steps, setting.window_hours)
    provision = settings.steps(settings.provision_seconds)
    return max(0, length - provision) / length if length else 0.0


def bench_settings(setting: Setting) -> sb.Settings:
    """spot_bench's settings for ``setting``."""
    return sb.Settings(replicas=setting.replicas, overprovision=setting.overprovision,
                       **{f: getattr(setting, f) for f in RUN_FIELDS})


def run_one(setting: Setting, policy: str, roots: dict[str, Path]) -> dict[str, Any]:
    """One policy on one setting through spot_bench's own loader and runner."""
    traces = sb.load_traces(roots[setting.root] / setting.path, setting.glob)
    out = sb.run(traces, [policy], bench_settings(setting), window_hours=setting.window_hours,
                 repeats=setting.repeats, seed=setting.seed)
    return {"result": out["results"][policy], "steps": out["steps"]}


def build_row(setting: Setting, results: dict[str, dict[str, Any]]) -> Row:
    """The row for ``results`` = ``{policy: run_one(...)}`` of both policies."""
    s = bench_settings(setting)
    sh = results["spothedge"]["result"]
    share = counted_share(setting, results["spothedge"]["steps"], s)
    return Row(setting, results["skyform"]["result"], sh,
               cost_bound(sh["availability"], s, share), results["spothedge"]["steps"])


def key(setting: Setting) -> str:
    """A setting's name in ``--json`` files."""
    return f"{setting.describe()} N={setting.replicas} K={setting.overprovision}"


def run_matrix(matrix: Sequence[Setting], roots: dict[str, Path], jobs: int = 2,
               verbose: bool = False,
               known: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Row]:
    """Every setting with both policies, ``jobs`` processes at a time (1: in this process);
    ``verbose``: each run's numbers on stderr as it ends. ``known``: ``{key(setting):
    {policy: run_one(...)}}`` already measured (SpotHedge's runs, when only skyform
    changed), not run again."""
    known = known or {}
    done: dict[tuple[int, str], dict[str, Any]] = {}
    for i, st in enumerate(matrix):
        for p, got in known.get(key(st), {}).items():
            done[(i, p)] = got
    tasks = [(i, p) for i in range(len(matrix)) for p in POLICIES if (i, p) not in done]

    finished = [0]

    def progress(t: tuple[int, str]) -> None:
        finished[0] += 1
        if verbose:
            print(f"[{finished[0]}/{len(tasks)}] {key(matrix[t[0]])} {t[1]}: "
                  f"{_ac(done[t]['result'])}", file=sys.stderr, flush=True)

    if jobs <= 1:
        for t in tasks:
            done[t] = run_one(matrix[t[0]], t[1], roots)
            progress(t)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_one, matrix[t[0]], t[1], roots): t for t in tasks}
            for f in as_completed(futures):
                done[futures[f]] = f.result()
                progress(futures[f])
    return [build_row(s, {p: done[(i, p)] for p in POLICIES}) for i, s in enumerate(matrix)]


def _ac(r: dict[str, float]) -> str:
    return f"{r['availability']:.4f} / {r['cost']:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    """The markdown table and, last, the count line."""
    lines = ["| set | N | K | skyform | spothedge | cost ratio | bound | 0.9x |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.setting
        lines.append(f"| {s.describe()} | {s.replicas} | {s.overprovision} | {_ac(r.skyform)} "
                     f"| {_ac(r.spothedge)} | {r.ratio:.2f} | {r.bound:.3f} | {r.verdict} |")
    lines.append("")
    lines.append(count_line(rows))
    return "\n".join(lines)


def count_line(rows: Sequence[Row]) -> str:
    met = sum(r.met for r in rows)
    feasible = sum(r.feasible for r in rows)
    infeasible = len(rows) - feasible
    met_feasible = sum(r.met and r.feasible for r in rows)
    return (f"met {met} of {len(rows)} settings; {infeasible} infeasible for any policy "
            f"(bound > {COST_FACTOR}x SpotHedge's cost); met {met_feasible} of {feasible}"
            " feasible")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, default=None,
                    help="root of the public spot traces (availability/, preemption/)")
    ap.add_argument("--ae", type=Path, default=None,
                    help="root of the SpotHedge artifact's data (AWS1, AWS2, AWS3, GCP1)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (2)")
    ap.add_argument("--only", default=None, help="run the settings whose label contains this")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--beyond", action="store_true",
                       help="run the settings beyond the matrix (BEYOND) instead")
    which.add_argument("--spares", action="store_true",
                       help="run the settings with spares enough for a copy (SPARES) instead")
    which.add_argument("--grid", action="store_true",
                       help="run other targets and spare counts on every set (GRID) instead")
    which.add_argument("--made", action="store_true",
                       help="run the made markets of bench/spot_traces.py (MADE) instead")
    ap.add_argument("--draw", type=int, default=1, help="the made markets' draw (1)")
    for f in RUN_FIELDS:
        ap.add_argument(_flag(f), type=float, default=getattr(sb.Settings, f),
                        help=f"spot_bench's {_flag(f)} for every setting "
                             f"({getattr(sb.Settings, f):g})")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--spothedge-from", type=Path, default=None,
                    help="take SpotHedge's numbers from this earlier --json (when only the "
                         "skyform policy changed)")
    a = ap.parse_args(argv)
    if a.jobs < 1:
        ap.error("--jobs must be >= 1")
    run = {f: getattr(a, f) for f in RUN_FIELDS}
    for f, value in run.items():
        if not value > 0:
            ap.error(f"{_flag(f)} must be > 0, not {value:g}")
    group = (made_settings(a.draw) if a.made else BEYOND if a.beyond else SPARES if a.spares
             else GRID if a.grid else MATRIX)
    matrix = [replace(s, **run) for s in group if a.only is None or a.only in s.describe()]
    if not matrix:
        ap.error(f"--only {a.only!r}: no setting matches")
    made_root = tempfile.TemporaryDirectory(prefix="skyform-made-")
    given = {"traces": a.traces, "ae": a.ae, "made": Path(made_root.name)}
    roots = {name: path for name, path in given.items() if path is not None}
    missing = sorted({s.root for s in matrix} - roots.keys())
    if missing:
        ap.error(f"{', '.join('--' + m for m in missing)}: required for these settings "
                 "(the roots of their traces)")
    write_made(matrix, roots["made"])
    known: dict[str, dict[str, dict[str, Any]]] = {}
    if a.spothedge_from is not None:
        try:
            earlier = json.loads(a.spothedge_from.read_text())
            known = {e["key"]: {"spothedge": {"result": e["spothedge"], "steps": e["steps"]}}
                     for e in earlier}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            ap.error(f"--spothedge-from {a.spothedge_from}: not a --json of this script "
                     f"({type(exc).__name__}: {exc})")
    started = time.monotonic()
    try:
        rows = run_matrix(matrix, roots, a.jobs, verbose=True, known=known)
    except sb.TraceError as exc:
        print(f"spot_matrix: {exc}", file=sys.stderr)
        return 2
    finally:
        made_root.cleanup()
    print(format_table(rows))
    print(f"ran {len(rows)} settings in {time.monotonic() - started:.0f} s with {a.jobs} jobs")
    if a.json is not None:
        a.json.write_text(json.dumps([
            {"key": key(r.setting), "steps": r.steps, "setting": r.setting.describe(),
             "replicas": r.setting.replicas,
             "overprovision": r.setting.overprovision, "skyform": r.skyform,
             "spothedge": r.spothedge, "ratio": r.ratio, "bound": r.bound,
             "verdict": r.verdict} for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
