"""One way to run ``wrk`` and read its report, for every bench that drives HTTP load with it.

``run(url, duration, connections, script)`` runs ``wrk -t1 --latency --timeout 5s`` (one
thread: the load generator takes one core at most) and returns a ``WrkRun``: requests/s,
p50/p99/max latency in ms, the number of requests, and the errors, counted once: responses
that are not 2xx/3xx plus socket errors (connect, read, write, timeout).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

#: Extra arguments for every run: one thread, latency percentiles, a 5 s request timeout.
WRK_ARGS = ("-t1", "--latency", "--timeout", "5s")


@dataclass
class WrkRun:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int


def ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.27ms``, ``2.01s``) in milliseconds; nan if unreadable."""
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _field(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise RuntimeError(f"wrk output has no match for {pattern!r}:\n{text}")
    return m.group(1)


def errors(out: str) -> int:
    """Failed requests in a wrk report: non-2xx/3xx responses plus socket errors."""
    n = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        n += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        n += sum(int(x) for x in m.groups())
    return n


def parse(out: str) -> WrkRun:
    """A ``wrk --latency`` report as a WrkRun."""
    return WrkRun(
        rps=float(_field(r"Requests/sec:\s+([\d.]+)", out)),
        # Anchored: the thread stats above the distribution end in a share like "75.50%".
        p50_ms=ms(_field(r"^\s+50%\s+(\S+)", out)),
        p99_ms=ms(_field(r"^\s+99%\s+(\S+)", out)),
        max_ms=ms(_field(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out)),
        requests=int(_field(r"(\d+) requests in", out)),
        errors=errors(out),
    )


def run(url: str, duration: float, connections: int, script: str | None = None) -> WrkRun:
    """Run wrk against ``url`` for ``duration`` seconds with ``connections`` connections
    (``script``: a Lua file, e.g. for a POST)."""
    cmd = ["wrk", *WRK_ARGS, f"-c{connections}", f"-d{duration:g}s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    return parse(out)
