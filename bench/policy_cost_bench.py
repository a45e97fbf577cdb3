"""A routing policy's own instructions per request, without the proxy around it.

Usage::

    .venv/bin/python bench/policy_cost_bench.py [--policy least_load prefix_aware ...] \\
        [--checkout DIR] [--cache-sim]

Needs ``valgrind``. Per policy, the per-request path the proxy runs (lb_agent.dataplane.proxy
and dispatch: ``request_key``, ``choose`` with its ``release`` after the in-flight count went
up and down, for a request-aware policy; ``select`` for the others) runs on lb_bench.py's
chat bodies (~1 KB, one of 1,000 conversations each, in a seeded random order) with two
replicas, under callgrind, for 5,000 and then 25,000 requests: the difference of the two
totals divided by 20,000 is the instructions per request, without the start-up and the
bodies' making. Compared with bench/proxy_cost_bench.py ``--case chat --policy ...`` (the
whole agent), it says how much of a policy's cost through the agent is the policy's own code
(docs/benchmarks.md, "prefix_aware's cost through the agent"). ``--checkout DIR`` measures
another checkout's ``lb_agent`` (``git worktree add DIR <commit>``, with its own ``.venv``,
whose editable install built its C helpers). ``--cache-sim`` has callgrind simulate the
caches too and prints the first-level and last-level data-cache misses per request, the same
difference of two runs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT, LONG = 5_000, 25_000


def chat_bodies() -> list[bytes]:
    """lb_bench.py's CHAT_LUA bodies, conversation 1 to 1,000."""
    system = "You are a careful assistant for the bench. " * 12
    question = "Tell me more about the topic at hand. " * 8
    return [('{"model":"m","stream":false,"messages":[{"role":"system","content":"'
             f'{s} {system}"}},{{"role":"user","content":"{question}"}}]}}').encode()
            for s in range(1, 1001)]


def run(policy_name: str, requests: int, checkout: str) -> None:
    """The proxy's per-request policy calls, ``requests`` times (what callgrind counts)."""
    sys.path.insert(0, checkout)
    import lb_agent
    from lb_agent.dataplane.policies import build_policy

    if not lb_agent.__file__ or not lb_agent.__file__.startswith(checkout + os.sep):
        raise RuntimeError(f"lb_agent came from {lb_agent.__file__}, not {checkout}")
    from lb_agent.dataplane.target import Target

    bodies = chat_bodies()
    rng = random.Random(1)
    order = [bodies[rng.randrange(len(bodies))] for _ in range(requests)]
    targets = [Target("static-0", "http://127.0.0.1:1"), Target("static-1", "http://127.0.0.1:2")]
    policy = build_policy(policy_name)
    policy.on_targets_changed(targets)
    aware = policy.uses_request
    for body in order:
        key = policy.request_key("POST", "/post", body) if aware else None
        target = policy.choose(targets, key) if aware else policy.select(targets)
        assert target is not None
        target.in_flight += 1
        target.in_flight -= 1
        if key is not None:
            policy.release(target, key)


#: The figures printed per request: instructions, and with ``--cache-sim`` the first-level
#: and last-level data-cache misses (reads and writes), as callgrind names its events.
FIGURES = {"k instructions": ("Ir",), "D1 misses": ("D1mr", "D1mw"),
           "LL data misses": ("DLmr", "DLmw")}


def count(policy_name: str, requests: int, tmp: str, checkout: str,
          cache_sim: bool = False) -> dict[str, int]:
    """callgrind's event totals (Ir; D1mr, DLmr, ... with ``cache_sim``) of this script's
    ``run`` of ``requests`` requests, start-up included."""
    out = os.path.join(tmp, f"cg.{policy_name}.{requests}")
    python = os.path.join(checkout, ".venv", "bin", "python")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         *(["--cache-sim=yes"] if cache_sim else []),
         python if os.path.exists(python) else sys.executable,
         os.path.abspath(__file__), "--checkout", checkout, "--run", policy_name,
         str(requests)],
        capture_output=True, text=True, check=True)
    with open(out) as fh:
        text = fh.read()
    events = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
    if events is None or totals is None:
        raise RuntimeError(f"callgrind wrote no totals to {out}")
    return dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--policy", nargs="+", default=["least_load", "prefix_aware"],
                    help="policies to measure (default: least_load prefix_aware)")
    ap.add_argument("--checkout", default=ROOT, metavar="DIR",
                    help="the checkout whose lb_agent is measured (default: this one)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="simulate the caches too and print the data-cache misses per request")
    ap.add_argument("--run", nargs=2, metavar=("POLICY", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    checkout = os.path.abspath(args.checkout)
    if args.run:
        run(args.run[0], int(args.run[1]), checkout)
        return 0
    if shutil.which("valgrind") is None:
        print("error: valgrind not found on PATH (apt-get install valgrind)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="skyform-policy-cost-")
    try:
        for name in args.policy:
            long = count(name, LONG, tmp, checkout, args.cache_sim)
            short = count(name, SHORT, tmp, checkout, args.cache_sim)
            shown = []
            for label, events in FIGURES.items():
                if all(e in long for e in events):
                    per = sum(long[e] - short[e] for e in events) / (LONG - SHORT)
                    shown.append(f"{per / 1000:6.2f} {label}" if label.startswith("k ")
                                 else f"{per:6.1f} {label}")
            print(f"{name:<14} " + ", ".join(shown) + " per request", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
