"""What the per-request cost benches (proxy_cost_bench.py, proxy_syscall_bench.py) share: the
checkouts named on their command line, two nginx backends with the request case's wrk script,
and one agent's config file in front of those backends."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from lb_bench import CHAT_LUA, NGINX_CONF, POST_LUA, free_port, write_agent_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The request cases: small GETs, 1 KB POSTs, ~1 KB chat bodies (lb_bench.py's).
CASES = ("get", "post", "chat")
CASE_HELP = "small GETs, 1 KB POSTs, or ~1 KB chat bodies (lb_bench.py's)"


def add_arguments(ap: argparse.ArgumentParser, duration: float) -> None:
    """The options both benches take: checkouts, ``--duration``, ``--case``, ``--policy``,
    ``--json``."""
    ap.add_argument("checkouts", nargs="*", metavar="NAME=DIR",
                    help="checkouts to measure, in this order (default: this=<this checkout>)")
    ap.add_argument("--duration", type=float, default=duration,
                    help="seconds of measured load")
    ap.add_argument("--case", choices=CASES, default="get", help=CASE_HELP)
    ap.add_argument("--policy", default="least_load",
                    help="the agent's routing policy (default least_load)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")


def checkouts_or_say(items: list[str], tools: tuple[str, ...],
                     install: str) -> dict[str, str] | None:
    """``checkouts(items)`` once every tool is on PATH; else None after an ``error:`` line
    on stderr (a missing tool names ``install``, the command that provides them)."""
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"error: {tool} not found on PATH ({install})", file=sys.stderr)
            return None
    try:
        return checkouts(items)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def checkouts(items: list[str]) -> dict[str, str]:
    """``NAME=DIR`` items -> name -> the checkout's absolute path (without any, this checkout
    as ``this``); ValueError naming the first item that is not a checkout."""
    found: dict[str, str] = {}
    for item in items or [f"this={ROOT}"]:
        name, sep, directory = item.partition("=")
        if not sep or not os.path.isdir(os.path.join(directory, "lb_agent")):
            raise ValueError(f"{item}: expected NAME=DIR with DIR a checkout (DIR/lb_agent)")
        found[name] = os.path.abspath(directory)
    return found


@dataclass(frozen=True)
class Backends:
    """Two nginx backends in ``tmp`` and what wrk sends them for the case."""

    tmp: str
    ports: list[int]
    path: str
    script: str | None


@contextlib.contextmanager
def nginx_backends(prefix: str, case: str) -> Iterator[Backends]:
    """Two nginx backends (lb_bench.py's config) in a new temporary folder, stopped and
    removed on exit, with the case's path and wrk script."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    ports = {k: free_port() for k in ("b1", "b2", "s1", "s2", "lb", "lbs")}
    nginx = ["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx.conf"),
             "-e", os.path.join(tmp, "err.log")]
    try:
        with open(os.path.join(tmp, "nginx.conf"), "w") as fh:
            fh.write(NGINX_CONF.format(d=tmp, **ports))
        subprocess.run(nginx, check=True)
        script = None
        if case != "get":
            script = os.path.join(tmp, f"{case}.lua")
            with open(script, "w") as fh:
                fh.write(POST_LUA if case == "post" else CHAT_LUA)
        yield Backends(tmp, [ports["b1"], ports["b2"]], "/" if case == "get" else "/post",
                       script)
    finally:
        subprocess.run([*nginx, "-s", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def agent_config(tmp: str, name: str, backends: list[int], policy: str) -> tuple[str, int]:
    """An agent config file in front of ``backends`` (its path) and the agent's public port:
    one probe round at start and none while measuring."""
    port = admin = free_port()
    while admin == port:  # the kernel may offer a closed probe's port again
        admin = free_port()
    config = os.path.join(tmp, f"{name}.json")
    write_agent_config(config, port, admin, backends, policy, probe_interval=300)
    return config, port
