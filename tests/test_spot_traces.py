"""bench/spot_traces.py: made markets are drawn as stated (format, seeds, regions that go
together, counts that shrink, capacity that holds longer the longer it has held)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import spot_bench as sb
import spot_traces as st


def test_markets_are_distinct_and_named() -> None:
    names = [m.name for m in st.MARKETS]
    assert len(set(names)) == len(names)
    assert st.market("counts").counts > 1
    with pytest.raises(ValueError, match="valid: steady, flappy"):
        st.market("nope")


def test_a_market_out_of_range_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="market 'x': regions must be 1 to 5"):
        replace(st.market("steady"), name="x", regions=6)
    with pytest.raises(ValueError, match="short_share from 0 to 1"):
        replace(st.market("steady"), short_share=1.5)
    with pytest.raises(ValueError, match="must be > 0"):
        replace(st.market("steady"), down_hours=0)
    with pytest.raises(ValueError, match="region_down_hours too"):
        replace(st.market("steady"), region_down_hours=0)
    assert replace(st.market("steady"), region_outages_per_day=0, region_down_hours=0)


def test_a_draw_is_the_same_for_its_seed_and_differs_for_another() -> None:
    m = st.market("flappy")
    assert st.make(m, 1) == st.make(m, 1)
    assert st.make(m, 1) != st.make(m, 2)


def test_written_sets_load_in_spot_bench_with_their_regions(tmp_path: Path) -> None:
    m = st.market("steady")
    st.write(m, 3, tmp_path)
    traces = sb.load_traces(tmp_path)
    assert [t.zone for t in traces] == sorted(z for _, z in m.zones())
    assert {sb.zone_region(t.zone)[1] for t in traces} == {"us-east-1", "us-east-2", "us-west-2"}
    assert all(len(t.data) == 14 * 1440 and t.gap_seconds == 60 for t in traces)
    # A 1-node market: any number of instances or none.
    assert {v for t in traces for v in t.data} == {0, sb.UNLIMITED}
    raw = json.loads(next(tmp_path.iterdir()).read_text())
    assert raw["metadata"] == {"gap_seconds": 60, "market": "steady", "seed": 3}


def test_a_count_market_shrinks_as_well_as_going_out() -> None:
    m = st.market("counts")
    data = st.make(m, 1)
    values = {v for d in data.values() for v in d}
    assert values == set(range(m.counts + 1))
    partial = sum(1 for d in data.values() for a, b in pairwise(d) if a > b > 0)
    whole = sum(1 for d in data.values() for a, b in pairwise(d) if a > b == 0)
    assert partial > 0 and whole > 0


def test_a_regions_zones_go_out_together() -> None:
    # Zones that almost never go out alone, regions that go out often: every spell without
    # capacity is a region's, so the zones of a region are out at the same steps, and a
    # zone of another region is not.
    m = replace(st.market("regional"), short_share=0.0, long_up_hours=1e6, down_hours=1e-3,
                region_outages_per_day=4.0)
    data = st.make(m, 1)
    out = {z: {i for i, v in enumerate(d) if v == 0} for z, d in data.items()}
    assert out["us-east-1a"] and out["us-east-1a"] == out["us-east-1b"]
    assert out["us-east-2a"] == out["us-east-2b"] != out["us-east-1a"]


def test_capacity_that_has_held_is_less_likely_to_go() -> None:
    # Flaps and long spells: a zone's chance of losing capacity in a minute falls with the
    # time it has had it (as on the public traces).
    m = replace(st.market("flappy"), days=60.0, region_outages_per_day=0.0)
    young = old = young_lost = old_lost = 0
    for d in st.make(m, 1).values():
        age = 0
        for a, b in pairwise(d):
            if not a:
                age = 0
                continue
            age += 1
            if age <= 30:
                young, young_lost = young + 1, young_lost + (b == 0)
            elif age > 240:
                old, old_lost = old + 1, old_lost + (b == 0)
    assert young_lost / young > 5 * (old_lost / old)


def test_cli_writes_each_market_and_refuses_an_unknown_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert st.main(["--out", str(tmp_path), "--market", "scarce", "--seed", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "scarce").iterdir()) == [
        "us-east-1a_made_1.json", "us-east-1b_made_1.json", "us-east-1c_made_1.json"]
    assert "scarce: 3 zones" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        st.main(["--out", str(tmp_path), "--market", "nope"])
    assert exc.value.code == 2
    assert "no market 'nope'; valid:" in capsys.readouterr().err
