"""The agent scaling through the real Automation API and CLI (marked ``engine``).

A running agent takes traffic, its autoscaler decides to scale, and its deployer runs a real
``up`` targeted at the replica groups of a Kubernetes stack rendered to a directory, on a local
file backend, with the passphrase given as the controller gets it (a 0600 file). Another
process holding the stack lock makes the agent hit ``ConcurrentUpdateError`` and retry; a
failing ``up`` shows in ``/status`` and the metrics and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_helpers import agent_config, auth, in_flight_back_to_zero, running_agent
from engine_support import AGENT_TOKEN, EngineProject, objects_by_kind, rendered_objects

from components.parser import load_service
from lb_agent.control.autoscaler import Decision

__all__ = ["in_flight_back_to_zero"]

pytestmark = pytest.mark.engine
#: How long to wait for an event of the agent's engine (a failure bound, not a measurement):
#: its engine runs at nice 10, so a CPU-bound neighbour slows it down many times over.
ENGINE_WAIT = 600

STACK = "kubernetes-example"
#: hello.yaml with a fast upscale and a downscale too slow to happen during the test.
SERVICE = textwrap.dedent("""\
    service:
      readiness_probe: /
      replica_policy:
        min_replicas: 1
        max_replicas: 3
        target_qps_per_replica: 5
        upscale_delay_seconds: 20
        downscale_delay_seconds: 3600
    resources:
      ports: 8080
      cpus: 1+
    run: python3 -m http.server 8080
    """)

#: Another process's `up` of the same stack whose program first waits, holding the real lock,
#: until the test has seen the agent's `up` meet that lock and creates the release file.
LOCK_HOLDER = textwrap.dedent("""\
    import runpy, sys, time
    from pathlib import Path
    import pulumi.automation as auto
    from lb_agent.control.deployers.workspace import engine_env, project_name

    work_dir, stack_name = sys.argv[1], sys.argv[2]
    signal, release = Path(sys.argv[3]), Path(sys.argv[4])

    def program() -> None:
        signal.write_text("locked")  # the engine takes the lock before it runs the program
        deadline = time.monotonic() + 600  # bounded: a test that fails still ends
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        runpy.run_path(str(Path(work_dir) / "__main__.py"), run_name="__main__")

    opts = auto.LocalWorkspaceOptions(work_dir=work_dir, env_vars=engine_env())
    stack = auto.select_stack(stack_name=stack_name, project_name=project_name(work_dir),
                              program=program, opts=opts)
    stack.up()
    """)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _status_until(client: httpx.AsyncClient, url: str,
                        check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll the agent's /status (refreshed at each scaler tick) until ``check`` holds for
    its deployer section; return that section. The bound is generous: the agent runs the
    engine at a lower CPU priority, so on a busy machine each of its ups takes longer."""
    deadline = time.monotonic() + ENGINE_WAIT
    while True:
        status = (await client.get(f"{url}/status", headers=auth())).json()
        deployer: dict[str, Any] = (status.get("autoscaler") or {}).get("deployer") or {}
        if check(deployer):
            return deployer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for /status to show {what}: {deployer}")
        await asyncio.sleep(0.05)


def _statefulset_replicas(project: EngineProject) -> list[int]:
    sets = objects_by_kind(rendered_objects(project.dir / "rendered"), "StatefulSet")
    return [s["spec"]["replicas"] for s in sets.values()]


@pytest.mark.timeout(3 * ENGINE_WAIT)
async def test_agent_scales_with_real_targeted_up_through_lock_and_failure(
    tmp_path: Path,
) -> None:
    project = EngineProject.create(tmp_path, extra_files={"svc/hello.yaml": SERVICE})
    project.cli("stack", "init", STACK)
    project.cli("config", "set", "skyform:service", "svc/hello.yaml")
    project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
    project.cli("config", "set", "skyform:renderYamlToDirectory", "rendered")
    assert project.stack(STACK).up().summary.result == "succeeded"
    assert _statefulset_replicas(project) == [1]

    spec = load_service(project.dir / "svc" / "hello.yaml").to_json()
    config = agent_config(
        tmp_path, service=spec,
        autoscaler={"decision_interval_seconds": 0.5, "no_replica_interval_seconds": 0.5,
                    "qps_window_seconds": 30},
        deployer={"kind": "pulumi", "work_dir": str(project.dir), "stack": STACK,
                  "env": project.env, "retry_initial_seconds": 1.0},
    )

    # Another process starts an `up` and holds the stack's lock while its program runs.
    signal, release = tmp_path / "lock-held", tmp_path / "release-lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(project.dir), STACK, str(signal), str(release)],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        async with running_agent(config) as agent:
            await _until(lambda: agent.runtime.scaler is not None, 30, "the scaler to start")
            deployer: Any = agent.runtime.scaler.deployer
            assert deployer is not None and deployer.kind == "pulumi"
            await _until(signal.exists, 60, "the other process to take the lock")
            async with httpx.AsyncClient() as client:
                # 450 requests in the 30 s window: QPS 15 > 5 per replica, so the target is
                # max_replicas (3), however slowly a busy machine sends them. No replica is
                # ready here, so they are answered 503, but SkyServe counts every arrival.
                codes = []
                for _ in range(15):
                    batch = await asyncio.gather(*(client.get(f"{agent.url}/") for _ in range(30)))
                    codes += [r.status_code for r in batch]
                assert set(codes) == {503}
                shown = await _status_until(
                    client, agent.admin_url,
                    lambda d: "another update is in progress" in (d.get("last_error") or "")
                    and d.get("desired") == {"spot": 0, "ondemand": 3},
                    "the agent's up of the autoscaler's target meeting the other process's lock")
                assert shown["conflicts"] >= 1
                release.touch()  # the other process's up may finish now
                await _until(lambda: deployer.updates_ok >= 1, ENGINE_WAIT,
                             "the agent's retried up to succeed")
                assert holder.wait(timeout=60) == 0
                assert deployer.desired == {"spot": 0, "ondemand": 3}
                assert _statefulset_replicas(project) == [3]
                written = json.loads(project.stack_config_file(STACK)["config"]["skyform:fleet"])
                assert [(g["generation"], g["spot"], g["ondemand"])
                        for g in written["generations"]] == [(1, 0, 3)]
                # The `replicas` output reconciled the registry (these replicas do not
                # register themselves: nothing runs the rendered pods).
                ids = sorted(r.replica_id for r in agent.runtime.registry.list())
                assert ids == ["ondemand-0", "ondemand-1", "ondemand-2"]

                # A failing `up` (a bad value in the stack config) is reported and retried.
                project.cli("config", "set", "skyform:cloud", "azure")
                # A scale-down through the scaler's own path (drain, then remove) asks for
                # the next `up`.
                scaler: Any = agent.runtime.scaler
                await scaler._apply(Decision.down("ondemand-2"))
                dep = await _status_until(
                    client, agent.admin_url,
                    lambda d: d.get("failures", 0) >= 2 and d.get("retry_in_seconds") is not None,
                    "two failed ups, then a wait before the next try")
                assert dep["last_error"] == ("pulumi up failed: skyform:cloud: must be one of "
                                             "aws, gcp, kubernetes, got 'azure'")
                metrics = (await client.get(f"{agent.admin_url}/metrics",
                                            headers=auth())).text
                assert 'skyform_deployer_updates_total{result="failed"}' in metrics
                assert 'skyform_deployer_updates_total{result="conflict"}' in metrics
                assert _statefulset_replicas(project) == [3]  # nothing applied meanwhile
                ok_before = deployer.updates_ok
                project.cli("config", "set", "skyform:cloud", "kubernetes")
                # The retry applies the latest counts: the removal (2), then the autoscaler's
                # target of 3 again, since the load is still in its window.
                await _until(lambda: deployer.updates_ok > ok_before
                             and deployer.status()["applied"] == deployer.desired
                             and _statefulset_replicas(project) == [deployer.desired["ondemand"]],
                             ENGINE_WAIT, "the retried up after the fix")
                await _status_until(client, agent.admin_url,
                                    lambda d: d.get("last_error") is None
                                    and d.get("updates", 0) > ok_before,
                                    "the error cleared after the successful retry")
    finally:
        release.touch()
        if holder.poll() is None:
            holder.kill()
        holder.wait()
