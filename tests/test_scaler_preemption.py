"""Vanished replicas are replaced, in-process with the real agent and local replicas:
a replica that deregisters (spot notice, DELETE /replicas/ID) and one whose process dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from lb_agent.config import AgentConfig
from lb_agent.control.states import ReplicaState as S
from lb_agent.server import build_runtime, serve

TOKEN = "p" * 16


STATE: dict[str, Any] = {}


async def until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            rt = STATE.get("runtime")
            detail = "" if rt is None else (
                f"; replicas={[(r.replica_id, r.state.value) for r in rt.registry.list()]}"
                f" status={rt.autoscaler_status}"
            )
            raise AssertionError(f"timed out: {what}{detail}")
        await asyncio.sleep(0.05)


def ready_ids(runtime: Any) -> list[str]:
    return sorted(r.replica_id for r in runtime.registry.list() if r.state is S.READY)


async def test_deregistered_and_crashed_replicas_are_replaced(tmp_path: Path) -> None:
    config = AgentConfig.from_dict({
        "token": TOKEN,
        "state_file": str(tmp_path / "agent.db"),
        "public": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "service": {
            "service_spec": {"readiness_probe": {"path": "/"},
                             "replica_policy": {"min_replicas": 1}},
            "service_port": 8080, "load_balancing_policy": "least_load",
            "run": f"exec {sys.executable} -m http.server 8080 --bind 127.0.0.1",
        },
        "probe": {"interval_seconds": 0.2},
        "autoscaler": {"decision_interval_seconds": 0.3},
        "deployer": {"kind": "local", "log_dir": str(tmp_path / "logs"), "grace_seconds": 1},
    })
    runtime = build_runtime(config)
    STATE["runtime"] = runtime
    started = asyncio.Event()
    server = asyncio.create_task(serve(config, started=started, runtime=runtime))
    try:
        await asyncio.wait_for(started.wait(), 20)
        await until(lambda: ready_ids(runtime) == ["local-1"], 20, "local-1 READY")
        deployer: Any = runtime.scaler.deployer
        old_pids = deployer.status()["pids"]["local-1"]
        # 1. Spot notice: the replica deregisters itself through the admin API.
        admin = f"http://127.0.0.1:{runtime.bound_ports['admin']}"
        async with httpx.AsyncClient() as c:
            r = await c.delete(f"{admin}/replicas/local-1",
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        await until(lambda: ready_ids(runtime) == ["local-2"], 20, "replacement local-2 READY")
        assert "local-1" not in deployer.replicas, "the deregistered replica's processes ended"
        for pid in old_pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        # 2. The app dies: the replica is marked FAILED and a new one takes over.
        pgid = deployer.replicas["local-2"].run_proc.pid
        os.killpg(pgid, signal.SIGKILL)
        await until(lambda: getattr(runtime.registry.get("local-2"), "state", None) is S.FAILED,
                    10, "local-2 FAILED")
        await until(lambda: ready_ids(runtime) == ["local-3"], 20, "replacement local-3 READY")
        url = f"http://127.0.0.1:{runtime.bound_ports['public']}/"
        async with httpx.AsyncClient() as c:
            assert (await c.get(url)).status_code == 200
        status = runtime.autoscaler_status
        assert status is not None and status["replicas"]["live"] == 1
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        sc = getattr(runtime, "scaler", None)
        if sc is not None and sc.deployer is not None:
            await sc.deployer.close()
        runtime.close()
