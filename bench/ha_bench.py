"""Failover benchmark: several load balancers, kill -9 the leader under steady load.

Usage: ``.venv/bin/python bench/ha_bench.py [--lbs 2] [--rate 20] [--surge 50] [--phase 20]
[--after 45] [--hold 10] [--yaml examples/llm-sim.yaml] [--json]``

It runs the product: ``skyform local FILE --lbs N`` (N agent processes on one endpoint port
with SO_REUSEPORT, the leader elected by a file lease, replicas from the local deployer) over
``examples/llm-sim.yaml`` (simulated LLM replicas with prefix caches, prefix_aware routing,
2 to 4 replicas at 15 requests/s each), with a 10 s QPS window and a 2 s decision interval so
a run takes about two minutes. Clients open a new connection per request, so the kernel
spreads them over the load balancers.

1. Prefix cache, one load balancer: ``--lbs 1``, ``--phase`` seconds of requests that share
   one of 8 long prompt prefixes (a few-shot prompt plus a unique question) at ``--rate``;
   the hit rate is the replicas' cached over prompt tokens (``/sim/stats``) in the phase.
2. The same with ``--lbs N`` (clients over all N; each load balancer's share is shown).
3. Still under load, kill -9 the leader (the lease record's pid), and raise the rate to
   ``--surge`` so the autoscaler has to scale up. Measured: requests that failed (with how
   many failed within a second of the kill: those in flight at the killed process), the
   seconds from the kill until a new leader's autoscaler made its first decision
   ("resumed"; goal <= 15 s) and until its first scale-up landed in the local stack, and
   double ``up``s read from the stack's journal (a launch by a leader of an older term after
   a newer one acted, or by two holders of one term; must be 0). The load stays on for
   ``--hold`` seconds after that scale-up.

Last line: ``ha failed F of N resumed S s double-ups D``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lb_agent.control.deployers.local_stack import double_ups  # noqa: E402

PREFIXES = 8
PREFIX_WORDS = 240
KILL_WINDOW_SECONDS = 1.0


@dataclass
class Load:
    """Open-loop request load at a settable rate; every outcome kept with its time."""

    endpoint: str
    rate: float
    seed: int = 7
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    sent: int = 0
    task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Load:
        self.task = asyncio.create_task(self.run())
        return self

    async def finish(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task

    def prompt(self, rng: random.Random) -> str:
        k = rng.randrange(PREFIXES)
        shared = " ".join(f"shot{k}w{i}" for i in range(PREFIX_WORDS))
        question = " ".join(f"q{rng.randrange(10**9)}" for _ in range(12))
        return f"{shared} {question}"

    async def one(self, session: aiohttp.ClientSession, prompt: str) -> None:
        try:
            async with session.post(self.endpoint + "/v1/completions",
                                    json={"prompt": prompt, "max_tokens": 4}) as resp:
                await resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append((time.time(), f"HTTP {resp.status}"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.failures.append((time.time(), type(exc).__name__))

    async def run(self) -> None:
        rng = random.Random(self.seed)
        conn = aiohttp.TCPConnector(force_close=True, limit=0)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while not self._stop.is_set():
                task = asyncio.create_task(self.one(session, self.prompt(rng)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                next_at += 1.0 / self.rate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - loop.time()))
            if tasks:
                await asyncio.gather(*tasks)


class Service:
    """One ``skyform local --lbs N --json`` run."""

    def __init__(self, yaml: str, lbs: int, workdir: str) -> None:
        self.yaml, self.lbs, self.workdir = yaml, lbs, workdir
        self.proc: subprocess.Popen[str] | None = None
        self.started: dict[str, Any] = {}
        self.token = ""

    async def __aenter__(self) -> Service:
        cmd = [sys.executable, "-c", "from components.cli import main; main()", "local",
               self.yaml, "--lbs",
               str(self.lbs), "--json", "--port", "0", "--qps-window", "10",
               "--decision-interval", "2", "--probe-interval", "1", "--status-interval", "5",
               "--env", f"PYTHON={sys.executable}",
               "--log-dir", os.path.join(self.workdir, f"logs-{self.lbs}")]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.workdir,  # noqa: SIM115
                                                              f"local-{self.lbs}.err"), "w"),
                                     text=True)
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise SystemExit(f"skyform local --lbs {self.lbs} did not start (see "
                             f"{self.workdir}/local-{self.lbs}.err)")
        self.started = json.loads(line)
        with open(self.started["token_file"], encoding="utf-8") as fh:
            self.token = json.load(fh)["token"]
        # Keep reading its status lines so its stdout never blocks.
        asyncio.get_running_loop().run_in_executor(None, self._drain)
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 60)

    @property
    def endpoint(self) -> str:
        return str(self.started["endpoint"])

    @property
    def admins(self) -> dict[str, str]:
        return {lb["identity"]: lb["admin"] for lb in self.started.get("lbs") or
                [{"identity": "lb-0", "admin": self.started["admin"]}]}

    async def status(self, session: aiohttp.ClientSession, admin: str) -> dict[str, Any] | None:
        try:
            async with session.get(admin + "/status", headers={
                    "Authorization": f"Bearer {self.token}"}) as resp:
                return dict(await resp.json()) if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def leader_status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        for admin in self.admins.values():
            snap = await self.status(session, admin)
            if snap and (snap.get("leadership") or {}).get("role") == "leader":
                return snap
        raise RuntimeError("no load balancer leads")

    async def wait_ready(self, session: aiohttp.ClientSession, n: int) -> list[str]:
        """The URLs of ``n`` READY replicas (waits for them)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                snap = await self.leader_status(session)
                urls = [r["url"] for r in snap["replicas"] if r["state"] == "READY"]
                if len(urls) >= n:
                    return urls
            await asyncio.sleep(0.2)
        raise SystemExit(f"{n} replicas did not become READY within 120 s")

    async def requests_per_lb(self, session: aiohttp.ClientSession) -> dict[str, float]:
        out = {}
        for name, admin in self.admins.items():
            try:
                async with session.get(admin + "/metrics", headers={
                        "Authorization": f"Bearer {self.token}"}) as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            out[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                            if line.startswith("skyform_lb_requests_total{"))
        return out

    def lease(self) -> dict[str, Any]:
        with open(self.started["lease_file"] + ".holder", encoding="utf-8") as fh:
            return dict(json.load(fh))

    def journal(self) -> list[dict[str, Any]]:
        with open(self.started["stack_file"], encoding="utf-8") as fh:
            return list(json.load(fh)["journal"])


async def cache_stats(session: aiohttp.ClientSession, urls: list[str]) -> tuple[int, int]:
    prompt = cached = 0
    for url in urls:
        async with session.get(url + "/sim/stats") as resp:
            st = await resp.json()
        prompt += int(st["prompt_tokens"])
        cached += int(st["cached_tokens"])
    return prompt, cached


async def prefix_phase(svc: Service, session: aiohttp.ClientSession, rate: float,
                       seconds: float) -> tuple[float, Load, list[str]]:
    """Hit rate of ``seconds`` of shared-prefix load on fresh caches; the load keeps running."""
    urls = await svc.wait_ready(session, 2)
    for url in urls:
        async with session.post(url + "/flush_cache") as resp:
            await resp.read()
    p0, c0 = await cache_stats(session, urls)
    load = Load(svc.endpoint, rate).start()
    await asyncio.sleep(seconds)
    p1, c1 = await cache_stats(session, urls)
    return (c1 - c0) / max(1, p1 - p0), load, urls


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--lbs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--surge", type=float, default=50.0)
    ap.add_argument("--phase", type=float, default=20.0)
    ap.add_argument("--after", type=float, default=45.0,
                    help="seconds to keep the load on after the kill, at most")
    ap.add_argument("--hold", type=float, default=10.0,
                    help="seconds to keep the load on after the new leader's scale-up")
    ap.add_argument("--yaml", default=str(ROOT / "examples" / "llm-sim.yaml"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ha-bench-")
    out: dict[str, Any] = {"lbs": args.lbs, "rate": args.rate, "surge": args.surge}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with Service(args.yaml, 1, workdir) as one:
            hit1, load1, _ = await prefix_phase(one, session, args.rate, args.phase)
            await load1.finish()
        out["hit_rate_1lb"] = hit1
        print(f"prefix cache hit rate, 1 load balancer: {hit1:.1%} "
              f"({load1.ok} requests)", flush=True)

        async with Service(args.yaml, args.lbs, workdir) as svc:
            before = await svc.requests_per_lb(session)
            hit2, load, _urls = await prefix_phase(svc, session, args.rate, args.phase)
            after = await svc.requests_per_lb(session)
            share = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            out["hit_rate_nlb"] = hit2
            out["requests_per_lb"] = share
            print(f"prefix cache hit rate, {args.lbs} load balancers: {hit2:.1%} "
                  f"(requests per load balancer: {share}); "
                  f"difference {100 * (hit2 - hit1):+.1f} points", flush=True)

            old = svc.lease()
            journal0 = len(svc.journal())
            killed_at = time.time()
            os.kill(int(old["pid"]), signal.SIGKILL)
            load.rate = args.surge
            print(f"killed the leader {old['holder']} (pid {old['pid']}, term {old['term']}); "
                  f"load raised to {args.surge:g} requests/s", flush=True)
            resumed = took_over = scaled = None
            new_holder = None

            async def watch_lease() -> float:
                while True:
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        if svc.lease()["term"] > old["term"]:
                            return time.time() - killed_at
                    await asyncio.sleep(0.01)

            lease_watch = asyncio.create_task(watch_lease())
            deadline = time.monotonic() + args.after
            while time.monotonic() < deadline and scaled is None:
                if took_over is None and lease_watch.done():
                    took_over = lease_watch.result()
                for admin in svc.admins.values():
                    snap = await svc.status(session, admin)
                    lead = (snap or {}).get("leadership") or {}
                    if lead.get("role") != "leader" or lead.get("term", 0) <= old["term"]:
                        continue
                    new_holder = lead["holder"]
                    decided = ((snap or {}).get("autoscaler") or {}).get("last_decision_at")
                    if resumed is None and decided and decided > killed_at:
                        resumed = decided - killed_at
                for entry in svc.journal()[journal0:]:
                    if entry["op"] == "up" and entry["term"] > old["term"]:
                        scaled = entry["at"] - killed_at
                await asyncio.sleep(0.1)
            if took_over is None and lease_watch.done():
                took_over = lease_watch.result()
            lease_watch.cancel()
            if scaled is not None:  # keep serving a while after the scale-up
                await asyncio.sleep(args.hold)
            await load.finish()
            journal = svc.journal()
        failed = load.failures
        at_kill = [f for f in failed if 0 <= f[0] - killed_at <= KILL_WINDOW_SECONDS]
        doubles = double_ups(journal)
        out.update(requests=load.sent, failed=len(failed), failed_at_kill=len(at_kill),
                   failures=sorted({why for _t, why in failed}), new_leader=new_holder,
                   takeover_seconds=took_over, resumed_seconds=resumed,
                   scale_up_seconds=scaled, double_ups=doubles,
                   ups=[e for e in journal if e["op"] == "up"])
        print(f"new leader {new_holder}: lease taken {_s(took_over)} after the kill, "
              f"autoscaler resumed {_s(resumed)}, first scale-up {_s(scaled)}", flush=True)
        print(f"failed requests: {len(failed)} of {load.sent} ({len(at_kill)} within "
              f"{KILL_WINDOW_SECONDS:g} s of the kill; kinds: {out['failures']})", flush=True)
        if args.json:
            print(json.dumps(out), flush=True)
        s = "none" if resumed is None else f"{resumed:.1f}"
        print(f"ha failed {len(failed)} of {load.sent} resumed {s} s double-ups {doubles}")


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    asyncio.run(main())
