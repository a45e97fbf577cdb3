"""bench/spot_matrix.py: the relative goal's verdict, the feasibility bound, and the table, on
small traces written here (the numbers follow from spot_bench's rules)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import spot_bench as sb  # the module spot_matrix runs (it imports it by this name)
import spot_matrix as sm


def write(d: Path, zone: str, data: list[int]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{zone}_v100_1.json").write_text(
        json.dumps({"metadata": {"gap_seconds": 60}, "data": data}))


def row(sky: tuple[float, float], sh: tuple[float, float], bound: float = 0.0) -> sm.Row:
    setting = sm.Setting("x", "traces", "x", 4)
    return sm.Row(setting, {"availability": sky[0], "cost": sky[1]},
                  {"availability": sh[0], "cost": sh[1]}, bound)


def test_verdict_needs_both_availability_and_the_cost_factor() -> None:
    assert row((0.99, 0.45), (0.99, 0.50)).verdict == "yes"  # equal availability, 0.9x
    assert row((0.99, 0.4501), (0.98, 0.50)).verdict == "no"  # a hair over 0.9x
    assert row((0.9899, 0.30), (0.99, 0.50)).verdict == "no"  # cheaper, less available
    assert row((0.99, 0.45), (0.99, 0.50)).ratio == pytest.approx(0.9)


def test_bound_marks_infeasible_settings() -> None:
    # 9 zones, K = 0 in the old table: SpotHedge 0.9833 at 0.321; 0.3 * 0.9833 = 0.295 >
    # 0.9 * 0.321 = 0.289: no policy as available as SpotHedge is cheap enough.
    s = sb.Settings(replicas=4, overprovision=0)
    bound = sm.cost_bound(0.9833, s, 1.0)
    assert bound == pytest.approx(0.29499)
    r = row((0.99, 0.30), (0.9833, 0.321), bound)
    assert not r.feasible and r.verdict == "infeasible"
    # Met beats the bound's verdict only if it is met (it cannot be when infeasible).
    assert row((0.99, 0.30), (0.98, 0.40), sm.cost_bound(0.98, s, 1.0)).verdict == "yes"
    # The bound scales with the prices and with the share of steps that are counted.
    cheap = sb.Settings(replicas=4, spot_price=0.2)
    assert sm.cost_bound(1.0, cheap, 0.5) == pytest.approx(0.1)


def test_counted_share_leaves_out_the_first_provisioning() -> None:
    s = sb.Settings(replicas=2)
    whole = sm.Setting("x", "traces", "x", 2)
    assert sm.counted_share(whole, 100, s) == pytest.approx(0.95)
    windows = sm.Setting("x", "traces", "x", 2, window_hours=1, repeats=3)
    assert sm.counted_share(windows, 10_000, s) == pytest.approx(55 / 60)


def test_matrix_runs_both_policies_through_spot_bench(tmp_path: Path) -> None:
    traces, ae = tmp_path / "traces", tmp_path / "ae"
    # Set A: one zone always up, no spare. Both policies hold N spot replicas the whole
    # run and on-demand cover while they provision: SpotHedge until they are READY (steps
    # 0..4), cost (2 * 0.3 * 1000 + 2 * 5) / 2000 = 0.305; skyform until their launch has
    # gone through (STARTING from step 3), (2 * 0.3 * 1000 + 2 * 3) / 2000 = 0.303.
    # Availability 1 (steps 5..999 counted). The bound is 0.3 * 995/1000 = 0.2985
    # > 0.9 * 0.305: infeasible for any policy.
    write(traces / "a", "us-east-1a", [1] * 1000)
    # Set B: two zones; the first goes down for a while.
    write(ae / "b", "us-east-1a", [1] * 40 + [0] * 30 + [1] * 130)
    write(ae / "b", "us-west-2a", [1] * 200)
    matrix = [sm.Setting("A", "traces", "a", 2, 0), sm.Setting("B", "ae", "b", 2, 1)]
    rows = sm.run_matrix(matrix, {"traces": traces, "ae": ae}, jobs=1)
    a, b = rows
    for policy, got, cost in (("skyform", a.skyform, 0.303),
                              ("spothedge", a.spothedge, 0.305)):
        assert got["availability"] == 1.0 and got["cost"] == pytest.approx(cost), policy
    assert a.bound == pytest.approx(0.2985)
    assert a.verdict == "infeasible"
    # Set B's numbers are spot_bench's own.
    for policy, got in (("skyform", b.skyform), ("spothedge", b.spothedge)):
        direct = sb.run(sb.load_traces(ae / "b"), [policy],
                        sb.Settings(replicas=2, overprovision=1))["results"][policy]
        assert got == direct, policy
    assert b.bound == pytest.approx(0.3 * b.spothedge["availability"] * 195 / 200)
    table = sm.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| set | N | K | skyform | spothedge |")
    assert lines[2] == "| A | 2 | 0 | 1.0000 / 0.303 | 1.0000 / 0.305 | 0.99 | 0.298 | infeasible |"
    assert lines[3].startswith("| B | 2 | 1 | ") and lines[3].endswith(f"| {b.verdict} |")
    met = int(b.met)
    assert lines[-1] == (f"met {met} of 2 settings; 1 infeasible for any policy (bound > 0.9x "
                         f"SpotHedge's cost); met {met} of 1 feasible")


def test_matrix_lists_every_setting_once() -> None:
    assert len(sm.MATRIX) == 36
    keys = [(s.describe(), s.replicas, s.overprovision) for s in sm.MATRIX]
    assert len(set(keys)) == len(keys)


def test_beyond_settings_are_new_and_distinct() -> None:
    def run(s: sm.Setting) -> tuple[object, ...]:
        return (s.root, s.path, s.glob, s.replicas, s.overprovision, s.window_hours,
                s.repeats, s.seed)

    beyond = [run(s) for s in sm.BEYOND]
    assert len(set(beyond)) == len(beyond)
    assert not set(beyond) & {run(s) for s in sm.MATRIX}
    assert len({sm.key(s) for s in sm.BEYOND}) == len(sm.BEYOND)


def test_spares_settings_hold_a_copy_and_are_new() -> None:
    assert len(sm.SPARES) == 35
    assert all(s.overprovision >= s.replicas >= 2 for s in sm.SPARES)
    keys = {sm.key(s) for s in sm.SPARES}
    assert len(keys) == len(sm.SPARES)
    assert not keys & {sm.key(s) for s in (*sm.MATRIX, *sm.BEYOND)}


def test_grid_settings_are_other_targets_and_new() -> None:
    assert len(sm.GRID) == 38
    assert {(s.replicas, s.overprovision) for s in sm.GRID} == {(3, 1), (6, 1), (2, 1), (4, 3)}
    keys = {sm.key(s) for s in sm.GRID}
    assert len(keys) == len(sm.GRID)
    assert not keys & {sm.key(s) for s in (*sm.MATRIX, *sm.BEYOND, *sm.SPARES)}


def test_missing_traces_is_a_clear_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = sm.main(["--traces", str(tmp_path / "none"), "--ae", str(tmp_path), "--jobs", "1",
                  "--only", "AWS3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "spot_matrix:" in err and "AWS3" in err and "not a directory" in err


def test_known_spothedge_numbers_are_not_run_again(tmp_path: Path) -> None:
    write(tmp_path / "a", "us-east-1a", [1] * 1000)
    setting = sm.Setting("A", "traces", "a", 2, 0)
    fake = {"availability": 0.5, "cost": 1.0, "availability_any": 0.5, "preemptions": 0,
            "failed_launches": 0}
    known = {sm.key(setting): {"spothedge": {"result": fake, "steps": 1000}}}
    (r,) = sm.run_matrix([setting], {"traces": tmp_path}, jobs=1, known=known)
    assert r.spothedge is fake and r.steps == 1000
    assert r.skyform["cost"] == pytest.approx(0.303)  # skyform was run
    assert r.bound == pytest.approx(0.3 * 0.5 * 0.995) and r.verdict == "yes"


def test_provision_seconds_reach_the_runs_and_name_the_setting(tmp_path: Path) -> None:
    # One zone always up, no spare, READY 600 s (10 steps) after launch: SpotHedge holds
    # on-demand cover until spot is READY (steps 0..9), (2 * 0.3 * 1000 + 2 * 10) / 2000 =
    # 0.31; skyform until the spot launch has gone through (step 3), 0.303. Steps 10..999
    # are counted, so the bound is 0.3 * 990 / 1000.
    write(tmp_path / "a", "us-east-1a", [1] * 1000)
    slow = sm.Setting("A", "traces", "a", 2, 0, provision_seconds=600)
    (r,) = sm.run_matrix([slow], {"traces": tmp_path}, jobs=1)
    assert r.spothedge["cost"] == pytest.approx(0.31)
    assert r.skyform["cost"] == pytest.approx(0.303)
    assert r.bound == pytest.approx(0.3 * 0.99)
    assert slow.describe() == "A, 600 s to READY"
    assert sm.key(slow) != sm.key(sm.Setting("A", "traces", "a", 2, 0))
    with pytest.raises(SystemExit) as exc:
        sm.main(["--traces", str(tmp_path), "--ae", str(tmp_path), "--provision-seconds", "0"])
    assert exc.value.code == 2


def test_other_benchmark_settings_reach_the_runs_and_name_the_setting(tmp_path: Path) -> None:
    # The same zone in steps of 120 s (500 steps), spot at 0.5: READY after 3 steps
    # (300 / 120 rounded up), a launch gone through after 2 (180 / 120). SpotHedge's
    # on-demand cover for steps 0..2: (2 * 0.5 * 500 + 2 * 3) / 1000 = 0.506; skyform's for
    # steps 0..1: 0.504. Steps 3..499 are counted, so the bound is 0.5 * 497 / 500.
    write(tmp_path / "a", "us-east-1a", [1] * 1000)
    other = sm.Setting("A", "traces", "a", 2, 0, tick_seconds=120, spot_price=0.5)
    (r,) = sm.run_matrix([other], {"traces": tmp_path}, jobs=1)
    assert r.steps == 500
    assert r.spothedge["cost"] == pytest.approx(0.506)
    assert r.skyform["cost"] == pytest.approx(0.504)
    assert r.bound == pytest.approx(0.5 * 497 / 500)
    assert other.describe() == "A, steps of 120 s, spot at 0.5"
    late = sm.Setting("A", "traces", "a", 2, 0, launch_fail_seconds=60, ondemand_price=2)
    assert late.describe() == "A, failed launches noticed after 60 s, on-demand at 2"
    for flag in ("--tick-seconds", "--launch-fail-seconds", "--spot-price", "--ondemand-price"):
        with pytest.raises(SystemExit) as exc:
            sm.main(["--traces", str(tmp_path), "--ae", str(tmp_path), flag, "0"])
        assert exc.value.code == 2


def test_made_markets_run_without_public_traces(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert len(sm.MADE) == 36 and len({sm.key(s) for s in sm.MADE}) == 36
    out = tmp_path / "made.json"
    rc = sm.main(["--made", "--draw", "2", "--only", "scarce", "--jobs", "1",
                  "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["key"] for r in rows][:2] == ["made scarce, draw 2 N=4 K=1",
                                            "made scarce, draw 2 N=1 K=1"]
    assert all(r["steps"] == 14 * 1440 for r in rows)
    assert all(r["spothedge"]["cost"] > 0 and 0 < r["skyform"]["availability"] <= 1
               for r in rows)
    assert "met " in capsys.readouterr().out
    # The public sets still need their roots, and say which.
    with pytest.raises(SystemExit) as exc:
        sm.main(["--only", "aws-04-19", "--ae", str(tmp_path)])
    assert exc.value.code == 2
    assert "--traces: required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sm.main([])
    assert "--ae, --traces: required" in capsys.readouterr().err
