"""The proxy's latency and throughput outside and inside the engine's ``up``s.

Usage::

    export SKYFORM_PULUMI_BIN="$(bash scripts/pulumi-toolchain.sh | tail -n1)"
    .venv/bin/python bench/up_latency_bench.py [--rounds 5] [--duration 5] \\
        [--baseline /path/to/other/checkout] [--json]

Needs ``nginx`` and ``wrk`` (Debian: ``apt-get install nginx wrk``) and the toolchain (the real
Pulumi CLI and Kubernetes provider). Everything runs on 127.0.0.1 in a temporary directory.

Each *variant* is one agent process running a checkout's ``lb_agent`` (this one; with
``--baseline DIR`` also ``DIR``'s, e.g. the checkout before the engine moved out of the
agent's process): the agent's proxy in front of two nginx backends, and in the same process
and event loop, as in the agent, a ``PulumiDeployer`` on its own Kubernetes stack (the
example ``examples/hello.yaml``, rendered to a directory) whose real targeted ``up``s
alternately add and remove a replica. The deployer has a registry of its own, so the rendered
replicas (no pods run them) never take traffic.

Each round measures every variant (in alternating order) twice with ``wrk``: *outside* (no
``up``) and *inside* (``up``s back to back for the whole measurement):

* paced: ``-c8``, each connection waiting 5 ms between requests (about 1,400 req/s, below
  saturation): p50, p99 and the largest latency (a request's wait in the proxy's queue);
* saturated: ``-c32``, no pause: requests per second.

It prints the per-round numbers, then per variant the medians and the spread (min-max over
rounds) of inside/outside: the p99 ratio, the throughput ratio and the largest latency
inside. The goal: p99 at most 1.5x, throughput at least 0.9x, no request over 50 ms. The
machine's other load adds noise: compare medians, and rerun when the spread is wide.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import wrk  # the one wrk runner and report parser
from lb_bench import free_port  # the same port picker

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
PASSPHRASE = "up latency bench"
STACK = "kubernetes-example"
PACE_MS = 5

NGINX_CONF = """
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{b1}; location / {{ return 200 "hello world\\n"; }} }}
  server {{ listen 127.0.0.1:{b2}; location / {{ return 200 "hello world\\n"; }} }}
}}
"""

PACED_LUA = f"function delay()\n  return {PACE_MS}\nend\n"

#: The agent process of one variant: the proxy (serve) and a PulumiDeployer in one event
#: loop (uvloop, as ``python -m lb_agent`` runs). Commands on stdin: ``busy`` (ups back to
#: back), ``idle`` (stop after the current one; answers with the ups done and their
#: seconds). Answers are JSON lines on stdout.
DRIVER = textwrap.dedent("""\
    import asyncio, json, sys, time
    import lb_agent
    from lb_agent.config import AgentConfig
    from lb_agent.control.deployers.pulumi import PulumiDeployer, local_stack_factory
    from lb_agent.control.registry import Registry
    from lb_agent.control.store import StateStore
    from lb_agent.server import build_runtime, serve

    config_path, work_dir, stack_name, env_path, preload = sys.argv[1:6]
    env = json.load(open(env_path))
    if preload == "1":
        # An agent that runs the program in its own process has the program's modules
        # loaded after its first up; importing them first also avoids CPython 3.11's
        # parser failing on a first import after the engine's gRPC threads ran.
        import components.service, components.stack_config  # noqa: F401

    def say(**message):
        sys.stdout.write(json.dumps(message) + "\\n")
        sys.stdout.flush()

    async def main():
        config = AgentConfig.load(config_path)
        runtime = build_runtime(config)
        started = asyncio.Event()
        server = asyncio.create_task(serve(config, started=started, runtime=runtime))
        await started.wait()
        dep = PulumiDeployer(Registry(StateStore(":memory:")),
                             stack_factory=local_stack_factory(work_dir, stack_name, env),
                             stack_name=stack_name, spot_default=False,
                             retry_initial_seconds=1.0)
        await dep.start()
        say(ready=True, lb_agent=lb_agent.__file__)
        loop = asyncio.get_running_loop()
        busy = False
        runner = None
        stats = {"ups": 0, "seconds": 0.0, "failures": 0}

        async def ups():
            grow = True
            while busy:
                t0 = time.monotonic()
                applied = dep.applied_event
                failures = dep.failures
                if grow:
                    await dep.scale_up(False)
                else:
                    rid = dep.choose_removal("ondemand-0")
                    await dep.remove(rid)
                grow = not grow
                while not applied.is_set() and dep.failures == failures:
                    await asyncio.sleep(0.02)
                stats["ups"] += 1
                stats["seconds"] += time.monotonic() - t0
                stats["failures"] += dep.failures - failures
                if stats["ups"] == 1:
                    say(busy=True)

        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = line.strip()
            if command == "busy":
                busy = True
                stats = {"ups": 0, "seconds": 0.0, "failures": 0}
                runner = asyncio.create_task(ups())
            elif command == "idle":
                busy = False
                if runner is not None:
                    await runner
                say(idle=True, last_error=dep.last_error, **stats)
            else:
                break
        await dep.close()
        server.cancel()
        try:
            await server
        except asyncio.CancelledError:
            pass

    try:
        import uvloop  # the agent's own loop (lb_agent/cli.py)
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    """)


@dataclass
class Phase:
    """One measurement: paced latency (ms) and saturated throughput (req/s)."""

    p50: float
    p99: float
    max: float
    paced_rps: float
    rps: float
    errors: int


def run_wrk(url: str, duration: float, connections: int, script: str | None) -> dict[str, float]:
    r = wrk.run(url, duration, connections, script)
    return {"rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms, "max": r.max_ms,
            "errors": r.errors}


def measure(url: str, duration: float, connections: int, paced: str) -> Phase:
    light = run_wrk(url, duration, 8, paced)
    heavy = run_wrk(url, duration, connections, None)
    return Phase(light["p50"], light["p99"], light["max"], light["rps"], heavy["rps"],
                 int(light["errors"] + heavy["errors"]))


def engine_env(tmp: Path, name: str) -> dict[str, str]:
    bin_dir = os.environ.get("SKYFORM_PULUMI_BIN", "")
    if not bin_dir or not (Path(bin_dir) / "pulumi").is_file():
        raise SystemExit("error: SKYFORM_PULUMI_BIN does not name the toolchain's bin "
                         "directory (export SKYFORM_PULUMI_BIN=\"$(bash "
                         "scripts/pulumi-toolchain.sh | tail -n1)\")")
    state = tmp / f"{name}-state"
    home = tmp / f"{name}-pulumi-home"
    state.mkdir()
    home.mkdir()
    passfile = tmp / f"{name}-passphrase"
    passfile.write_text(PASSPHRASE)
    passfile.chmod(0o600)
    return {
        "SKYFORM_PULUMI_BIN": bin_dir,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(passfile),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }


def make_project(tmp: Path, name: str, checkout: Path) -> tuple[Path, dict[str, str]]:
    """A copy of ``checkout``'s project with a rendered Kubernetes stack after its first up."""
    project = tmp / f"{name}-project"
    project.mkdir()
    for item in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(checkout / item, project / item)
    for item in ("examples", "stacks"):
        shutil.copytree(checkout / item, project / item)
    env = engine_env(tmp, name)
    full = {**os.environ, **env}

    def cli(*args: str) -> None:
        subprocess.run(["pulumi", "--non-interactive", *args], cwd=project, env=full,
                       check=True, capture_output=True, text=True)

    cli("stack", "init", STACK)
    cli("config", "set", "skyform:service", "examples/hello.yaml")
    cli("config", "set", "--secret", "skyform:agentToken", "bench-agent-token-9f3a")
    cli("config", "set", "skyform:renderYamlToDirectory", "rendered")
    skyform = Path(sys.executable).parent / "skyform"
    done = subprocess.run([str(skyform), "up", "--stack", STACK], cwd=project,
                          env={**full, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: first up of {name}'s stack failed:\n{done.stdout}\n"
                         f"{done.stderr}")
    return project, env


class Variant:
    """One agent process (a checkout's lb_agent) with its proxy and deployer."""

    def __init__(self, name: str, checkout: Path, tmp: Path, backends: list[int]) -> None:
        self.name = name
        self.port = free_port()
        project, env = make_project(tmp, name, checkout)
        cfg = {
            "public": {"host": "127.0.0.1", "port": self.port},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "token": TOKEN,
            "policy": "least_load",
            "state_file": str(tmp / f"{name}-agent.db"),
            "replicas": [{"url": f"http://127.0.0.1:{p}", "replica_id": f"static-{i}"}
                         for i, p in enumerate(backends)],
            "probe": {"interval_seconds": 5, "path": "/"},
        }
        config = tmp / f"{name}-agent.json"
        config.write_text(json.dumps(cfg))
        env_file = tmp / f"{name}-env.json"
        env_file.write_text(json.dumps(env))
        child_env = {**os.environ, "PYTHONPATH": str(checkout)}
        # A checkout whose agent runs the program in-process (the baseline) loads the
        # program's modules up front, as it would have after its first up.
        preload = "0" if checkout == ROOT else "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(config), str(project), STACK, str(env_file),
             preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=checkout,
            env=child_env,
        )
        hello = self._read()
        where = Path(hello["lb_agent"]).resolve()
        if not where.is_relative_to(checkout.resolve()):
            raise SystemExit(f"error: variant {name} imported lb_agent from {where}, "
                             f"not {checkout}")
        self.url = f"http://127.0.0.1:{self.port}/"

    def _read(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise SystemExit(f"error: the {self.name} agent exited ({self.proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def busy(self) -> None:
        """Start ``up``s back to back; return once the first is under way and done (so the
        worker, the program and the providers are warm)."""
        self._send("busy")
        if not self._read().get("busy"):
            raise SystemExit(f"error: the {self.name} agent did not start its ups")

    def idle(self) -> dict[str, Any]:
        self._send("idle")
        return self._read()

    def close(self) -> None:
        self._send("quit")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds (default 5)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections, saturated")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout to measure the same way (e.g. before this change)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found on PATH (apt-get install nginx wrk)",
                  file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="skyform-up-bench-"))
    ports = {"b1": free_port(), "b2": free_port()}
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=tmp, **ports))
    paced = tmp / "paced.lua"
    paced.write_text(PACED_LUA)
    subprocess.run(["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "e.log")],
                   check=True)
    variants: list[Variant] = []
    rows: list[dict[str, Any]] = []
    try:
        checkouts = [("this", ROOT)]
        if args.baseline is not None:
            checkouts.append(("baseline", args.baseline.resolve()))
        for name, checkout in checkouts:
            variants.append(Variant(name, checkout, tmp, list(ports.values())))
        for v in variants:  # warm-up: the worker (or SDK) loaded, caches filled
            v.busy()
            v.idle()
            run_wrk(v.url, 1, args.connections, None)
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                outside = measure(v.url, args.duration, args.connections, str(paced))
                v.busy()
                inside = measure(v.url, args.duration, args.connections, str(paced))
                ups = v.idle()
                row = {"round": r + 1, "variant": v.name, "outside": asdict(outside),
                       "inside": asdict(inside), "ups": ups}
                rows.append(row)
                if not args.json:
                    print(f"round {r + 1} {v.name:8s} outside p50 {outside.p50:6.2f} "
                          f"p99 {outside.p99:6.2f} max {outside.max:7.2f} ms "
                          f"{outside.rps:7.0f} req/s | inside p50 {inside.p50:6.2f} "
                          f"p99 {inside.p99:6.2f} max {inside.max:7.2f} ms "
                          f"{inside.rps:7.0f} req/s | {ups['ups']} ups "
                          f"{ups['seconds']:.1f} s, {ups['failures']} failed", flush=True)
    finally:
        for v in variants:
            v.close()
        subprocess.run(["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "e.log"),
                        "-s", "stop"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {}
    for v in variants:
        mine = [row for row in rows if row["variant"] == v.name]
        if not mine:
            continue
        p99 = [row["inside"]["p99"] / row["outside"]["p99"] for row in mine]
        rps = [row["inside"]["rps"] / row["outside"]["rps"] for row in mine]
        worst = [row["inside"]["max"] for row in mine]
        summary[v.name] = {
            "p99_ratio": p99, "rps_ratio": rps, "max_inside_ms": worst,
            "outside_p99_ms": [row["outside"]["p99"] for row in mine],
            "inside_p99_ms": [row["inside"]["p99"] for row in mine],
            "outside_rps": [row["outside"]["rps"] for row in mine],
            "inside_rps": [row["inside"]["rps"] for row in mine],
            "goal_met_median": (statistics.median(p99) <= 1.5
                                and statistics.median(rps) >= 0.9
                                and statistics.median(worst) <= 50),
        }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return 0
    print(f"\ninside / outside an up, median (min-max) over {args.rounds} rounds; "
          f"paced wrk -c8 with {PACE_MS} ms pauses, saturated wrk -c{args.connections}, "
          f"{args.duration:g} s each, {os.cpu_count()} CPUs")
    print("| variant | p99 outside ms | p99 inside ms | p99 ratio | req/s outside | "
          "req/s inside | req/s ratio | max inside ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {_spread(s['outside_p99_ms'])} | {_spread(s['inside_p99_ms'])} | "
              f"{_spread(s['p99_ratio'])} | {_spread(s['outside_rps'])} | "
              f"{_spread(s['inside_rps'])} | {_spread(s['rps_ratio'])} | "
              f"{_spread(s['max_inside_ms'])} |")
    print("goal (p99 <= 1.5x, req/s >= 0.9x, max <= 50 ms) on the medians: " + ", ".join(
        f"{name} {'met' if s['goal_met_median'] else 'not met'}" for name, s in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
