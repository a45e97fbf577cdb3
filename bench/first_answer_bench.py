"""Time to first answer of ``skyform local``: from starting the command to the first HTTP 200.

Starts ``skyform local examples/hello.yaml`` (or the YAML given) as a subprocess, polls its
endpoint on 127.0.0.1 every 20 ms until it answers 200, prints the seconds, stops it with
SIGINT, and repeats. Prints each run and the median. Goal: under 2 s for hello.yaml.

    .venv/bin/python bench/first_answer_bench.py [--runs 5] [examples/hello.yaml]
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(yaml: str, timeout: float) -> float:
    port = _free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from components.cli import main; main()", "local", yaml,
         "--port", str(port), "--json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while time.monotonic() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"skyform local exited with {proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError(f"no 200 within {timeout} s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("yaml", nargs="?", default=str(ROOT / "examples" / "hello.yaml"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    times = []
    for i in range(args.runs):
        seconds = one_run(args.yaml, args.timeout)
        times.append(seconds)
        print(f"run {i + 1}: first 200 after {seconds:.2f} s", flush=True)
    print(f"time to first 200: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
