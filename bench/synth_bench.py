"""Time ``skyform synth`` (the real program under mocks) over the accepted corpus, per cloud.

Prints, per cloud: files placed / refused (no candidate on that cloud), mean, median and max
seconds per file, and the first (cold-import) run. Goal: under 1 s per file on the CI machine.
Run: .venv/bin/python bench/synth_bench.py [--files N] [--per-file]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pulumi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.errors import PlacementError, SpecError  # noqa: E402
from components.parser import load_service  # noqa: E402
from components.synth import required_values, stack_config, synthesize  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def accepted(limit: int | None) -> list[tuple[Path, dict[str, str], dict[str, str]]]:
    out = []
    for path in sorted(CORPUS.glob("*/*.y*ml")):
        envs, secrets = required_values(path)
        try:
            load_service(path, env_overrides=envs, secret_overrides=secrets)
        except SpecError:
            continue
        out.append((path, envs, secrets))
    return out[:limit] if limit else out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=None, help="only the first N files")
    parser.add_argument("--per-file", action="store_true", help="print every file's time")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus folder {CORPUS} is missing", file=sys.stderr)
        return 1
    files = accepted(args.files)
    print(f"{len(files)} accepted corpus files from {CORPUS}")
    print(f"{'cloud':<11} {'placed':>6} {'refused':>7} {'first s':>8} {'mean s':>7} "
          f"{'median s':>8} {'max s':>6}  slowest")
    for cloud in ("aws", "gcp", "kubernetes"):
        times: list[tuple[float, str]] = []
        placed = refused = 0
        for path, envs, secrets in files:
            config, keys = stack_config(path, cloud, envs=envs, secrets=secrets)
            start = time.perf_counter()
            try:
                synthesize(config, keys)
                placed += 1
            except pulumi.RunError as exc:
                if not isinstance(exc.__cause__, PlacementError):
                    raise
                refused += 1
            elapsed = time.perf_counter() - start
            times.append((elapsed, path.name))
            if args.per_file:
                print(f"  {cloud:<11} {elapsed:6.3f}s  {path.name}")
        values = [t for t, _ in times]
        slowest = max(times)
        print(f"{cloud:<11} {placed:>6} {refused:>7} {values[0]:>8.3f} "
              f"{statistics.mean(values):>7.3f} {statistics.median(values):>8.3f} "
              f"{slowest[0]:>6.3f}  {slowest[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
