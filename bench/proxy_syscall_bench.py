"""The agent's system calls per proxied request, by name: the kernel side of its cost.

Usage::

    .venv/bin/python bench/proxy_syscall_bench.py [--duration 8] [--case get|post|chat] \\
        [--policy least_load|prefix_aware|...] [NAME=DIR ...]

Needs ``nginx``, ``wrk`` and ``strace`` (Debian: ``apt-get install nginx wrk strace``). Each
``NAME=DIR`` is a checkout whose ``lb_agent`` is measured (without any, this checkout as
``this``). Per checkout, one agent (``--policy``, least_load by default) runs in front of two
nginx backends; after a warm-up, ``strace -c -f`` attaches to it while wrk sends small GETs,
1 KB POSTs or ~1 KB chat bodies (lb_bench.py's ``CHAT_LUA``) over 32 connections for
``--duration`` seconds, and each system call's count is divided by the requests wrk saw
answered. Like proxy_cost_bench.py's instruction count, a count of calls per
request does not move with the machine's load (the time strace reports does, and is left
out); it shows what proxy_cost_bench.py leaves out: the kernel work (each call costs a mode
switch plus its own work, a few microseconds under load). The ideal floor is one read and
one write per request on each side (client and replica): 4 calls plus the event loop's
``epoll_wait``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import wrk
from agent_rig import add_arguments, agent_config, checkouts_or_say, nginx_backends
from lb_bench import wait_port


def _counts(report: str) -> dict[str, int]:
    """``strace -c`` summary rows: call name -> number of calls."""
    out: dict[str, int] = {}
    for line in report.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and re.fullmatch(r"[\d.]+", parts[0]) and parts[-1] != "total":
            out[parts[-1]] = int(parts[3])
    return out


def measure(name: str, checkout: str, tmp: str, backends: list[int], duration: float,
            path: str, script: str | None, policy: str = "least_load") -> dict[str, float]:
    """One checkout's agent under strace -c: calls per request by name."""
    config, port = agent_config(tmp, name, backends, policy)
    agent = subprocess.Popen([sys.executable, "-m", "lb_agent", "--config", config],
                             cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = os.path.join(tmp, f"strace-{name}.txt")
    try:
        wait_port(port, 120)
        url = f"http://127.0.0.1:{port}{path}"
        wrk.run(url, 3, 32, script)  # warm-up: pools filled, code paths taken once
        time.sleep(1.0)
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", report, "-p", str(agent.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread
        run = wrk.run(url, duration, 32, script)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
    with open(report) as fh:
        counts = _counts(fh.read())
    if not run.requests:
        raise RuntimeError(f"{name}: wrk saw no requests answered")
    per = {k: v / run.requests for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return {"requests": float(run.requests), "errors": float(run.errors),
            "total": sum(per.values()), **per}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    add_arguments(ap, duration=8.0)
    args = ap.parse_args()
    found = checkouts_or_say(args.checkouts, ("nginx", "wrk", "strace"),
                             "apt-get install nginx wrk strace")
    if found is None:
        return 2
    results: dict[str, dict[str, float]] = {}
    with nginx_backends("skyform-syscalls-", args.case) as rig:
        for name, checkout in found.items():
            results[name] = r = measure(name, checkout, rig.tmp, rig.ports,
                                        args.duration, rig.path, rig.script, args.policy)
            if not args.json:
                calls = ", ".join(f"{k} {v:.2f}" for k, v in r.items()
                                  if k not in ("requests", "errors", "total") and v >= 0.005)
                print(f"{name:<12} {r['total']:5.2f} system calls/request  ({calls}; "
                      f"{r['requests']:.0f} requests, {r['errors']:.0f} errors)", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
