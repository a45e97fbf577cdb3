"""Time to validate every corpus file (goal: under 5 s in total on the CI machine).

Run: ``.venv/bin/python bench/validate_bench.py [--rounds N]``. Prints the number of files,
the verdicts, the total and per-file time of the slowest round-trip (parse + validate +
catalog placement on every target cloud), in a cold process (imports included) and warm.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT.parent / "shared" / "corpus"


def files() -> list[Path]:
    out: list[Path] = []
    for corpus in ("skypilot", "edge"):
        folder = CORPUS / corpus
        out.extend(sorted(p for p in folder.glob("*") if p.suffix in (".yaml", ".yml")))
    return out


def validate_all(paths: list[Path]) -> tuple[int, int]:
    from components import catalog
    from components.errors import PlacementError, SpecError
    from components.parser import load_service
    from components.spec import TARGET_CLOUDS

    ok = rejected = 0
    for path in paths:
        try:
            task = load_service(path)
        except SpecError:
            rejected += 1
            continue
        ok += 1
        for cloud in TARGET_CLOUDS:
            with contextlib.suppress(PlacementError):
                catalog.place(task, cloud)
    return ok, rejected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="warm rounds to time")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}", file=sys.stderr)
        return 1
    paths = files()
    start = time.perf_counter()
    ok, rejected = validate_all(paths)  # cold: includes importing the parser and catalog
    cold = time.perf_counter() - start
    warm: list[float] = []
    for _ in range(max(1, args.rounds)):
        start = time.perf_counter()
        validate_all(paths)
        warm.append(time.perf_counter() - start)
    best, worst = min(warm), max(warm)
    print(f"files: {len(paths)} (valid as written: {ok}, rejected: {rejected})")
    print(f"cold (first round, imports included): {cold:.3f} s")
    print(f"warm over {len(warm)} rounds: best {best:.3f} s, worst {worst:.3f} s, "
          f"{1000 * worst / len(paths):.2f} ms per file")
    print(f"goal < 5 s in total: {'met' if max(cold, worst) < 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
