"""The agent's cost per proxied request in CPU instructions, a number other load does not move.

Usage::

    .venv/bin/python bench/proxy_cost_bench.py [--duration 12] [--case get|post|chat] \\
        [--policy least_load|prefix_aware|...] [--keep DIR] [--cache-sim] [--warmup 5] \\
        [NAME=DIR ...]

Needs ``nginx``, ``wrk`` and ``valgrind`` (Debian: ``apt-get install nginx wrk valgrind``).
Each ``NAME=DIR`` is a checkout whose ``lb_agent`` is measured (``git worktree add DIR
<commit>``; without any, this checkout as ``this``). Per checkout, one agent (``--policy``,
least_load by default) runs under callgrind in front of two nginx backends; after a warm-up
its counters are zeroed, wrk sends small GETs, 1 KB POSTs, or ~1 KB OpenAI chat bodies (one
of 1,000 conversations each, lb_bench.py's ``CHAT_LUA``: what prefix_aware parses, hashes and
remembers) over 32 connections for ``--duration`` seconds, and the
instructions the agent's process executed in user space are divided by the requests served,
less what it executes idle (timers, the server's clock; measured in a quiet period of the same
length first), which would otherwise weigh on a few hundred requests. ``--keep DIR`` keeps
the callgrind dumps there, for ``callgrind_annotate`` (where the instructions go, per
function). ``--cache-sim`` has callgrind simulate the caches too (its first-level data cache
and last-level cache misses, D1mr+D1mw and DLmr+DLmw, are printed per request as well): what
separates two paths of equal instructions but unequal CPU time. ``--warmup SECONDS`` (5 by
default) is how long wrk runs before the counters are zeroed: under callgrind the agent serves
only ~100-150 chat requests a second, so 5 s leave about half of the 1,000 conversations
unseen and prefix_aware still learning them (recording their blocks) while measured; 30 s
measure it as lb_bench.py's rounds see it, every conversation known.

On a machine shared with other work, requests/s and CPU time per request move with the
load; an instruction count does not (the same code path executes the same instructions), so
checkouts compare exactly, one after another. It leaves out the kernel's side (the system
calls: one read and one write per request on each side, and one poll before a pooled
connection is reused), which lb_bench.py's CPU time per request includes. Under callgrind
the agent runs about 50 times slower; a few hundred requests are enough.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import wrk
from agent_rig import add_arguments, agent_config, checkouts_or_say, nginx_backends
from lb_bench import wait_port


def _totals(dump_prefix: str, pid: int, trigger: str) -> dict[str, int] | None:
    """The event totals (Ir, and with cache simulation D1mr, DLmr, ...) of the callgrind dump
    named ``trigger``, if written."""
    for path in sorted(glob.glob(f"{dump_prefix}.{pid}*")):
        with open(path) as fh:
            text = fh.read()
        # The header names why it was dumped ("desc: Trigger: dump <trigger>").
        if re.search(rf"^desc: Trigger: .*\b{trigger}$", text[:2000], re.M) is None:
            continue
        events = re.search(r"^events: (.*)$", text, re.M)
        for line in text.splitlines():
            if line.startswith(("summary:", "totals:")):
                values = [int(v) for v in line.split()[1:]]
                names = events.group(1).split() if events else ["Ir"]
                return dict(zip(names, values, strict=False))
    return None


#: The cache-miss figures printed with ``--cache-sim``: first-level data misses (reads and
#: writes), last-level data misses, first-level instruction misses.
MISSES = {"D1 misses": ("D1mr", "D1mw"), "LL data misses": ("DLmr", "DLmw"),
          "I1 misses": ("I1mr",)}


def measure(name: str, checkout: str, tmp: str, backends: list[int], duration: float,
            path: str, script: str | None, policy: str = "least_load",
            keep: str | None = None, cache_sim: bool = False,
            warmup: float = 5.0) -> dict[str, float]:
    """One checkout's agent under callgrind: requests, errors and instructions per request
    (with ``cache_sim``, the cache misses of ``MISSES`` per request too; the dumps are copied
    to ``keep`` when given)."""
    config, port = agent_config(tmp, name, backends, policy)
    prefix = os.path.join(tmp, f"callgrind-{name}")
    agent = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p",
         *(["--cache-sim=yes"] if cache_sim else []),
         sys.executable, "-m", "lb_agent", "--config", config],
        cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 900)
        time.sleep(2.0)
        url = f"http://127.0.0.1:{port}{path}"
        wrk.run(url, warmup, 32, script)  # warm-up: pools filled, code paths taken once
        time.sleep(6.0)  # requests the warm-up left waiting are answered
        control = ["callgrind_control"]
        subprocess.run([*control, "-z", str(agent.pid)], capture_output=True, check=True)
        started = time.monotonic()
        time.sleep(duration)
        subprocess.run([*control, "-d", "idle", str(agent.pid)], capture_output=True,
                       check=True)
        idle_seconds = time.monotonic() - started
        subprocess.run([*control, "-z", str(agent.pid)], capture_output=True, check=True)
        started = time.monotonic()
        run = wrk.run(url, duration, 32, script)
        subprocess.run([*control, "-d", "measured", str(agent.pid)], capture_output=True,
                       check=True)
        busy_seconds = time.monotonic() - started
        time.sleep(1.0)
        idle = _totals(prefix, agent.pid, "idle")
        total = _totals(prefix, agent.pid, "measured")
        if keep is not None:
            os.makedirs(keep, exist_ok=True)
            for dump in glob.glob(f"{prefix}.{agent.pid}*"):
                shutil.copy(dump, os.path.join(keep, f"{name}-{policy}-{os.path.basename(dump)}"))
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(120)
        except subprocess.TimeoutExpired:
            agent.kill()
    if total is None or idle is None or not run.requests:
        raise RuntimeError(f"{name}: no callgrind dump with the measured requests")
    scale = busy_seconds / idle_seconds

    def per_request(*events: str) -> float:
        busy = sum(total.get(e, 0) for e in events)
        return (busy - sum(idle.get(e, 0) for e in events) * scale) / run.requests

    out = {"requests": float(run.requests), "errors": float(run.errors),
           "idle_instructions_per_second": idle["Ir"] / idle_seconds,
           "instructions_per_request": per_request("Ir")}
    if cache_sim:
        for label, events in MISSES.items():
            out[f"{label} per request"] = per_request(*events)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    add_arguments(ap, duration=12.0)
    ap.add_argument("--keep", metavar="DIR",
                    help="keep the callgrind dumps in DIR (for callgrind_annotate)")
    ap.add_argument("--warmup", type=float, default=5.0, metavar="SECONDS",
                    help="seconds of load before the counters are zeroed (default 5)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="simulate the caches too and print the misses per request")
    args = ap.parse_args()
    found = checkouts_or_say(args.checkouts, ("nginx", "wrk", "valgrind", "callgrind_control"),
                             "apt-get install nginx wrk valgrind")
    if found is None:
        return 2
    results: dict[str, dict[str, float]] = {}
    with nginx_backends("skyform-proxy-cost-", args.case) as rig:
        for name, checkout in found.items():
            results[name] = measure(name, checkout, rig.tmp, rig.ports,
                                    args.duration, rig.path, rig.script, args.policy, args.keep,
                                    args.cache_sim, args.warmup)
            if not args.json:
                r = results[name]
                misses = "".join(f", {r[f'{label} per request']:.0f} {label}"
                                 for label in MISSES if f"{label} per request" in r)
                print(f"{name:<12} {r['instructions_per_request'] / 1000:8.1f} k instructions"
                      f"/request{misses}  ({r['requests']:.0f} requests, "
                      f"{r['errors']:.0f} errors)", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
