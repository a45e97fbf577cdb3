"""Time the real Pulumi engine on the Kubernetes example (rendered) next to ``skyform synth``.

Prints seconds for: ``skyform synth`` (cold CLI process, mock runtime), and through the real
CLI and Kubernetes provider (the toolchain of scripts/pulumi-toolchain.sh, a local file
backend): the first ``preview``, the first ``up``, a no-op ``up``, a targeted ``up`` that scales
the replica group 1 -> 2 (what the agent runs), and ``destroy``. Median of ``--repeat`` runs.
Run: .venv/bin/python bench/engine_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from engine_support import AGENT_TOKEN, EngineProject  # noqa: E402

STACK = "kubernetes-example"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_run() -> dict[str, float]:
    times: dict[str, float] = {}
    synth = [str(Path(sys.executable).parent / "skyform"), "synth",
             str(ROOT / "examples" / "hello.yaml"), "--cloud", "kubernetes", "--json",
             "--config", "namespace=hello", "--config", f"agentToken={AGENT_TOKEN}"]
    times["skyform synth (cold process)"] = _timed(
        lambda: subprocess.run(synth, check=True, capture_output=True))
    with tempfile.TemporaryDirectory() as tmp:
        project = EngineProject.create(Path(tmp))
        project.cli("stack", "init", STACK)
        project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
        project.cli("config", "set", "skyform:renderYamlToDirectory", "rendered")
        stack = project.stack(STACK)
        times["preview (first)"] = _timed(stack.preview)
        times["up (first)"] = _timed(stack.up)
        times["up (no change)"] = _timed(stack.up)
        urns = stack.outputs()["replicaGroupUrns"].value
        project.cli("config", "set", "skyform:replicas", "2")
        times["up targeted, 1 -> 2 replicas"] = _timed(
            lambda: stack.up(target=urns, target_dependents=True))
        times["destroy"] = _timed(stack.destroy)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for i in range(args.repeat):
        print(f"run {i + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
        runs.append(one_run())
    print(f"{'operation':<32} {'median s':>9} {'min s':>7} {'max s':>7}")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:<32} {statistics.median(values):>9.2f} {min(values):>7.2f} "
              f"{max(values):>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
