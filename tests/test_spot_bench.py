"""bench/spot_bench.py on small traces written here, with numbers that follow from its rules
(tick 60 s, READY 300 s after launch, failures noticed after 180 s, newest preempted first,
cost normalised to N on-demand replicas, availability counted after the first provisioning).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import spot_bench as sb


def write(d: Path, zone: str, data: list[int], gap: int = 60) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{zone}_v100_1.json").write_text(
        json.dumps({"metadata": {"gap_seconds": gap}, "data": data}))


def bench(d: Path, policy: str, n: int, k: int = 0, pattern: str = "*.json") -> dict:
    traces = sb.load_traces(d, pattern)
    out = sb.run(traces, [policy], sb.Settings(replicas=n, overprovision=k))
    return dict(out["results"][policy])


def test_one_zone_up_spot_costs_its_price(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1] * 100)
    write(tmp_path, "us-east-1b", [0] * 100)
    r = bench(tmp_path, "single-zone", 2)
    assert r == {"availability": 1.0, "availability_any": 1.0, "cost": pytest.approx(0.3),
                 "preemptions": 0, "failed_launches": 0}
    r = bench(tmp_path, "on-demand", 2, k=1)
    assert r["availability"] == 1.0 and r["cost"] == pytest.approx(1.0)


def test_dead_first_zone(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [0] * 100)
    write(tmp_path, "us-east-1b", [1] * 100)
    # Two launches every 3 steps, each noticed 3 steps later: 33 rounds noticed by step 99.
    r = bench(tmp_path, "single-zone", 2)
    assert r == {"availability": 0.0, "availability_any": 0.0, "cost": 0.0,
                 "preemptions": 0, "failed_launches": 66}
    r = bench(tmp_path, "single-zone-fallback", 2)
    assert r["availability"] == 1.0 and r["cost"] == pytest.approx(1.0)
    # skyform: with no spare, a zone loss costs the same whether it takes one replica or
    # both, so both go to one zone (fewer zones, fewer chances of a loss): the first, dead
    # one. Both failures (step 3) block it and the relaunches go to the live zone. On-demand
    # covers 2 from step 0 to READY spot at step 8: 2 * 97 spot steps at 0.3, 2 * 8
    # on-demand steps.
    r = bench(tmp_path, "skyform", 2)
    assert r["failed_launches"] == 2 and r["availability"] == 1.0
    assert r["cost"] == pytest.approx((0.3 * 2 * 97 + 2 * 8) / 200)
    # SpotHedge resets its locations when fewer than two stay active, so it keeps trying.
    hedge = bench(tmp_path, "spothedge", 2)
    assert hedge["availability"] == 1.0 and hedge["failed_launches"] > 10


def test_newest_replica_goes_first_when_capacity_drops(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [2] * 20 + [1] * 80)
    traces = sb.load_traces(tmp_path)
    caps, _steps = sb.per_step(traces, 60)
    survivors: list[set[str]] = []
    res = sb.simulate("single-zone", ["us-east-1a"], caps, sb.Settings(replicas=2,
                                                                        overprovision=0),
                      observe=lambda step, live: survivors.append(
                          {r.rid for r in live if r.ready}))
    assert res.preemptions == 1
    assert survivors[25] == {"r1"}  # r2, the newer, was preempted at step 20
    s = res.summary(sb.Settings(replicas=2))
    assert s["availability"] == pytest.approx(15 / 95)  # steps 5..19 of 5..99
    assert s["availability_any"] == 1.0
    # Relaunches fail while the zone holds only what we have there.
    assert s["failed_launches"] == len(range(23, 100, 3))


def test_skyform_holds_no_spare_in_the_only_live_zone(tmp_path: Path) -> None:
    """Zone b never has capacity: a spare in zone a would fall with the replicas beside it,
    so skyform holds N spot replicas there (no loss has shown whether losses are whole, and
    a spare is then held only where it would cover a whole zone's loss: not even b is
    probed).
    The one-zone policy holds N + 1 in zone a; SpotHedge keeps launching its spare into b
    and covers it with on-demand meanwhile."""
    write(tmp_path, "us-east-1a", [1] * 300)
    write(tmp_path, "us-east-1b", [0] * 300)
    caps, _steps = sb.per_step(sb.load_traces(tmp_path), 60)
    settings = sb.Settings(replicas=2, overprovision=1)

    def most_in_a(policy: str) -> tuple[int, sb.Result]:
        held: list[int] = []
        res = sb.simulate(policy, ["us-east-1a", "us-east-1b"], caps, settings,
                          observe=lambda step, live: held.append(sum(
                              1 for r in live if r.loc.spot and not r.failed
                              and r.loc.zone == "us-east-1a")))
        return max(held[10:]), res

    sky_most, sky = most_in_a("skyform")
    one_most, one = most_in_a("single-zone-fallback")
    _, hedge = most_in_a("spothedge")
    assert sky_most == 2 and one_most == 3
    assert sky.failed_launches < hedge.failed_launches
    s, o, h = (r.summary(settings) for r in (sky, one, hedge))
    assert s["availability"] == o["availability"] == h["availability"] == 1.0
    assert s["cost"] < o["cost"] and s["cost"] < h["cost"]


def test_skyform_at_a_target_of_one_holds_on_demand_alone_when_nothing_can_pair(
        tmp_path: Path) -> None:
    """N = 1 with a spare; zone a loses its capacity for 10 min every 100, zone b never
    has any: a spot replica in a can never be paired with one in another zone, so once its
    on-demand cover is READY skyform releases it and holds the on-demand replica alone
    (re-trying a only once its zone's park ends). SpotHedge holds the spot replica in a and
    covers its missing spare with on-demand the whole run. Both are always available (a
    lone spot replica in a would not be: each outage of a takes it); skyform pays for about
    one replica, SpotHedge for more."""
    write(tmp_path, "us-east-1a", ([1] * 90 + [0] * 10) * 6)
    write(tmp_path, "us-east-1b", [0] * 600)
    caps, _steps = sb.per_step(sb.load_traces(tmp_path), 60)
    settings = sb.Settings(replicas=1, overprovision=1)

    def run(policy: str) -> tuple[int, dict[str, float]]:
        both: list[bool] = []
        res = sb.simulate(policy, ["us-east-1a", "us-east-1b"], caps, settings,
                          observe=lambda step, live: both.append(
                              any(r.ready and r.loc.spot for r in live)
                              and any(r.ready and not r.loc.spot for r in live)))
        return sum(both), res.summary(settings)

    sky_both, sky = run("skyform")
    hedge_both, hedge = run("spothedge")
    assert sky["availability"] == hedge["availability"] == 1.0
    assert hedge_both > 400  # spot in a beside on-demand most of the run
    assert sky_both < 30  # a few steps each time a is re-tried after its park
    assert sky["cost"] < 1.1 < hedge["cost"]


def test_sets_are_cut_to_the_shortest_trace(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1] * 50, gap=120)  # 100 minutes
    write(tmp_path, "us-east-1b", [1] * 300)  # 300 minutes
    caps, steps = sb.per_step(sb.load_traces(tmp_path), 60)
    assert steps == 100 and all(len(c) == 100 for c in caps)


def test_windows_are_the_same_for_every_policy(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1] * 300 + [0] * 300)
    write(tmp_path, "us-east-1b", [0] * 300 + [1] * 300)
    traces = sb.load_traces(tmp_path)
    one = sb.run(traces, ["single-zone", "on-demand"], sb.Settings(replicas=1),
                 window_hours=2, repeats=6, seed=3)
    two = sb.run(traces, ["single-zone"], sb.Settings(replicas=1),
                 window_hours=2, repeats=6, seed=3)
    assert one["windows"] == 6
    assert one["results"]["single-zone"] == two["results"]["single-zone"]
    assert one["results"]["on-demand"]["availability"] == 1.0
    with pytest.raises(sb.TraceError, match="--window-hours 20"):
        sb.run(traces, ["single-zone"], sb.Settings(replicas=1), window_hours=20, repeats=2)


def test_cli_json_and_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "t"
    write(d, "us-east-1a", [1] * 100)
    write(d, "us-west-2a", [0] * 50 + [1] * 50)
    out = tmp_path / "out.json"
    assert sb.main(["--traces", str(d), "--replicas", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == set(sb.POLICIES)
    for r in data["results"].values():
        assert set(r) == {"availability", "availability_any", "cost", "preemptions",
                          "failed_launches"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"skyform availability (\d\.\d{4}) cost (\d\.\d{4})", last)
    assert m is not None
    assert float(m.group(1)) == pytest.approx(data["results"]["skyform"]["availability"],
                                              abs=1e-4)


def test_cli_bad_input_names_the_problem(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert sb.main(["--traces", str(tmp_path / "missing"), "--replicas", "2"]) == 2
    assert "missing: not a directory of trace files" in capsys.readouterr().err
    (tmp_path / "us-east-1a_x.json").write_text('{"data": [1]}')
    assert sb.main(["--traces", str(tmp_path), "--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert "us-east-1a_x.json" in err and "gap_seconds" in err
    with pytest.raises(SystemExit):
        sb.main(["--traces", str(tmp_path), "--replicas", "2", "--policy", "best"])
    for flag, value, said in (("--ondemand-price", "0", "--ondemand-price must be > 0"),
                              ("--window-hours", "0", "--window-hours must be > 0")):
        with pytest.raises(SystemExit) as info:
            sb.main(["--traces", str(tmp_path), "--replicas", "2", flag, value])
        assert info.value.code == 2 and said in capsys.readouterr().err


PUBLIC = Path(__file__).resolve().parents[1] / ".." / "shared" / "spot-traces"


@pytest.mark.traces
def test_public_three_zone_set_skyform_beats_spothedge() -> None:
    """On the public three-zone 16-node set, skyform is at least as available as SpotHedge
    for less money (the benchmark's claim, checked on real data)."""
    d = PUBLIC / "availability" / "16-node" / "aws-08-27-2023"
    if not d.is_dir():
        pytest.fail(f"public spot traces not found at {d.resolve()}: this test replays them "
                    "(deselect with -m 'not traces')")
    traces = sb.load_traces(d)
    out = sb.run(traces, ["skyform", "spothedge"], sb.Settings(replicas=4, overprovision=1))
    sky, hedge = out["results"]["skyform"], out["results"]["spothedge"]
    assert sky["availability"] >= hedge["availability"]
    assert sky["cost"] <= 0.9 * hedge["cost"]


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "spot-traces"


def held_per_step(name: str) -> list[tuple[int, int, int]]:
    """skyform on a fixture set, N=2, one spare: per step (spot in us-east-1a, spot
    elsewhere, on-demand) held (launching or running, failed launches excluded)."""
    traces = sb.load_traces(FIXTURES / name)
    caps, _steps = sb.per_step(traces, 60)
    out: list[tuple[int, int, int]] = []

    def observe(step: int, live: list[sb._Replica]) -> None:
        held = [r for r in live if not r.failed]
        out.append((sum(1 for r in held if r.loc.spot and r.loc.zone == "us-east-1a"),
                    sum(1 for r in held if r.loc.spot and r.loc.zone != "us-east-1a"),
                    sum(1 for r in held if not r.loc.spot)))

    sb.simulate("skyform", [t.zone for t in traces], caps,
                sb.Settings(replicas=2, overprovision=1), observe=observe)
    return out


def test_a_backup_or_a_spare_goes_where_a_zone_loss_can_leave_it_standing() -> None:
    """Both sets: us-east-1a holds the fleet (the other zones have no capacity) until its
    capacity drops at step 50; us-east-2a opens at step 120. In `whole-zone-loss` the drop
    takes both replicas there (1-node trace): a single spare in us-east-2a would not keep two
    READY when us-east-1a goes, so none is launched before; after the preemption the market
    is unstable (for 150 steps, past the set's end), so a backup copy of both goes to
    us-east-2a once it opens (and the block its failed launches there earned ends). In
    `partial-zone-loss` the drop leaves one (a count trace): losses are partial, so no
    backup, and the spare goes to us-east-2a once it opens (and its block ends)."""
    whole = held_per_step("whole-zone-loss")
    partial = held_per_step("partial-zone-loss")
    assert set(whole[10:50]) == {(2, 0, 0)}
    assert set(whole[65:125]) == {(2, 0, 0)}  # us-east-2a still closed
    assert set(whole[150:]) == {(2, 2, 0)}
    assert set(partial[150:]) == {(2, 1, 0)}


def test_on_demand_covers_the_loss_then_goes() -> None:
    """When us-east-1a's capacity leaves at step 50 (both replicas in `whole-zone-loss`, one
    in `partial-zone-loss`) on-demand covers the shortfall at once and is released as soon
    as spot is READY again: never while spot holds, never kept for good."""
    for name, lost, back in (("whole-zone-loss", 2, 65), ("partial-zone-loss", 1, 60)):
        steps = held_per_step(name)
        assert all(od == 0 for _a, _o, od in steps[10:50])
        assert all(od == lost for _a, _o, od in steps[50:back])
        assert all(od == 0 for _a, _o, od in steps[back:])
