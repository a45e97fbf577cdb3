"""``skyform local --lbs 2`` end to end (components/commands/local_cluster.py): both load
balancers serve on the one port, the leader is killed with SIGKILL, the other takes the lease
with a higher term and its autoscaler scales up; the local stack's journal shows no double
``up`` and no replica replaced; stopping ends every load balancer and replica."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
from agent_helpers import until

from lb_agent.control.deployers.local import _group_alive
from lb_agent.control.deployers.local_stack import double_ups

ROOT = Path(__file__).resolve().parent.parent

SERVICE = textwrap.dedent("""\
    service:
      readiness_probe: /health
      replica_policy:
        min_replicas: 1
        max_replicas: 3
        target_qps_per_replica: 2
        upscale_delay_seconds: 1
        downscale_delay_seconds: 600
    resources:
      ports: 8000
    envs:
      PYTHON: python3
    run: $PYTHON -m lb_agent.testing.llm_sim --port 8000
    """)


class Run:
    def __init__(self, tmp_path: Path) -> None:
        yaml = tmp_path / "svc.yaml"
        yaml.write_text(SERVICE)
        env = {**os.environ, "SKYFORM_RUNTIME_DIR": str(tmp_path / "run")}
        (tmp_path / "run").mkdir(mode=0o700)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from components.cli import main; main()", "local",
             str(yaml), "--lbs", "2", "--json", "--port", "0", "--qps-window", "5",
             "--decision-interval", "1", "--probe-interval", "0.5",
             "--env", f"PYTHON={sys.executable}", "--log-dir", str(tmp_path / "logs")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        self.started: dict[str, Any] = {}
        self.token = ""

    async def start(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 120)
        assert line, f"skyform local exited with {self.proc.wait()}"
        self.started = json.loads(line)
        assert self.started["event"] == "started"
        self.token = json.loads(Path(self.started["token_file"]).read_text())["token"]
        asyncio.get_running_loop().run_in_executor(None, self._drain)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def lease(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(
                Path(self.started["lease_file"] + ".holder").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def stack(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(Path(self.started["stack_file"]).read_text())
        return data


async def get_json(http: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any] | None:
    try:
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            return dict(await resp.json()) if resp.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def test_local_lbs_two_failover_and_scale(tmp_path: Path) -> None:
    run = Run(tmp_path)
    try:
        await run.start()
        admins = {lb["identity"]: lb["admin"] for lb in run.started["lbs"]}
        assert len(admins) == 2
        endpoint = run.started["endpoint"]
        statuses: dict[str, dict[str, Any] | None] = {}
        timeout = aiohttp.ClientTimeout(total=10)
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                aiohttp.ClientSession(timeout=timeout, connector=fresh) as client:

            async def poll() -> None:
                for name, admin in admins.items():
                    statuses[name] = await get_json(http, admin + "/status", run.token)

            def ready_everywhere() -> bool:
                return all(s is not None and any(r["state"] == "READY" for r in s["replicas"])
                           for s in statuses.values()) and len(statuses) == 2

            async def until_polled(cond: Any, what: str, timeout: float = 120) -> None:
                async def check() -> bool:
                    await poll()
                    return bool(cond())
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while not await check():
                    assert loop.time() < deadline, f"timed out waiting for {what}: {statuses}"

            await until_polled(ready_everywhere, "a READY replica at both load balancers")
            roles = sorted(s["leadership"]["role"] for s in statuses.values() if s)
            assert roles == ["follower", "leader"]
            # Both serve: the kernel spreads fresh connections over the two listeners.
            served: dict[str, float] = {}

            async def per_lb() -> dict[str, float]:
                out = {}
                for name, admin in admins.items():
                    async with http.get(admin + "/metrics", headers={
                            "Authorization": f"Bearer {run.token}"}) as resp:
                        text = await resp.text()
                    out[name] = sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                                    if x.startswith('skyform_lb_requests_total{code="200"}'))
                return out

            for _ in range(400):
                async with client.post(endpoint + "/v1/completions",
                                       json={"prompt": "hello there", "max_tokens": 2}) as r:
                    assert r.status == 200, await r.text()
                served = await per_lb()
                if all(n > 0 for n in served.values()) and len(served) == 2:
                    break
            assert all(n > 0 for n in served.values()), served

            old = run.lease()
            assert old["holder"] in admins and old["term"] == 1
            before = run.stack()
            assert "local-1" in before["replicas"]
            os.kill(old["pid"], signal.SIGKILL)
            await until(lambda: run.lease().get("term", 0) > old["term"]
                        and run.lease().get("holder") is not None
                        and run.lease().get("pid") != old["pid"],
                        "another load balancer to take the lease", timeout=60)
            new = run.lease()
            # Load above the replicas' target: the new leader must scale up.
            failures: list[int] = []

            async def load() -> None:
                while True:
                    try:
                        async with client.post(endpoint + "/v1/completions", json={
                                "prompt": "more load", "max_tokens": 2}) as r:
                            await r.read()
                            if r.status != 200:
                                failures.append(r.status)
                    except aiohttp.ClientError:
                        failures.append(0)
                    await asyncio.sleep(0.05)

            loader = asyncio.create_task(load())
            try:
                await until(lambda: any(e["op"] == "up" and e["term"] >= new["term"]
                                        for e in run.stack()["journal"]),
                            "the new leader's scale-up", timeout=120)
            finally:
                loader.cancel()
            stack = run.stack()
            journal = stack["journal"]
            assert double_ups(journal) == 0, journal
            first = [e for e in journal if e["term"] == old["term"]]
            assert first == before["journal"]
            assert {(e["op"], e["holder"]) for e in first} == {("up", old["holder"])}
            later = [e for e in journal if e["term"] > old["term"]]
            assert later and {(e["op"], e["holder"]) for e in later} == {("up", new["holder"])}
            # The replicas launched before the kill were adopted, none replaced.
            assert set(before["replicas"]) <= set(stack["replicas"])
            assert failures == [], failures  # after the takeover nothing failed
        pgids = [p for item in stack["replicas"].values() for p in item["pgids"]]
        assert pgids and all(_group_alive(p) for p in pgids)
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(run.proc.wait, 120)
    assert code == 0
    assert not any(_group_alive(p) for p in pgids), "a replica outlived skyform local"


def test_local_lbs_exits_3_when_every_replica_failed(tmp_path: Path) -> None:
    yaml = tmp_path / "bad.yaml"
    yaml.write_text(textwrap.dedent("""\
        service:
          readiness_probe: /health
          replicas: 1
        resources:
          ports: 8000
        run: echo broken on purpose; exit 7
        """))
    (tmp_path / "run").mkdir(mode=0o700)
    done = subprocess.run(
        [sys.executable, "-c", "from components.cli import main; main()", "local", str(yaml),
         "--lbs", "2", "--port", "0", "--status-interval", "0.5"],
        cwd=ROOT, env={**os.environ, "SKYFORM_RUNTIME_DIR": str(tmp_path / "run")},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "every replica of bad failed and none was ever ready" in done.stderr
    kept = done.stderr.split("its logs are kept in ", 1)[1].split()[0]
    try:
        assert "broken on purpose" in (Path(kept) / "local-1" / "replica.log").read_text()
    finally:
        shutil.rmtree(Path(kept).parent, ignore_errors=True)  # the run's kept directory
