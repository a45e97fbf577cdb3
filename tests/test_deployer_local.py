"""LocalDeployer: real processes on 127.0.0.1 with the service's setup/run, envs, a free port
substituted for the service port, registration, crash detection and clean process-group ends."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from lb_agent.control.deployers import local as local_deployer
from lb_agent.control.deployers.local import LocalDeployer, free_port, substitute_port
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState as S
from lb_agent.control.store import StateStore

PY = sys.executable


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def service(run: str, setup: str = "", **extra: Any) -> dict[str, Any]:
    return {"service_port": 8080, "setup": setup, "run": run,
            "envs": {"GREETING": "hi"}, **extra}


def test_substitute_port_whole_tokens_only() -> None:
    text = "python3 -m http.server 8080 --bind 0.0.0.0:8080; echo 18080 8080x port8080 10.0.8080"
    assert substitute_port(text, 8080, 41234) == (
        "python3 -m http.server 41234 --bind 0.0.0.0:41234; echo 18080 8080x port8080 10.0.8080"
    )


async def test_replica_runs_setup_then_run_with_envs_and_free_port(tmp_path: Any) -> None:
    reg = Registry(StateStore(":memory:"))
    run = (
        'echo "port=$PORT id=$SKYPILOT_SERVE_REPLICA_ID gpus=$SKYPILOT_NUM_GPUS_PER_NODE '
        'g=$GREETING s=$TOKEN" > env.txt\n'
        f"exec {PY} -m http.server 8080 --bind 127.0.0.1"
    )
    dep = LocalDeployer(reg, service(run, setup="echo setup-ran > setup.txt; sleep 0.3"),
                        log_dir=str(tmp_path), env={"TOKEN": "sekret"}, grace_seconds=2)
    await dep.start()
    rid = await dep.scale_up(None)
    assert rid == "local-1"
    rec = reg.get(rid)
    assert rec is not None and rec.state is S.PROVISIONING  # setup running
    port = dep.replicas[rid].port
    assert port != 8080 and rec.url == f"http://127.0.0.1:{port}"
    await until(lambda: reg.get(rid).state is S.STARTING)  # type: ignore[union-attr]
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            try:
                r = await client.get(f"http://127.0.0.1:{port}/env.txt")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
    assert r.status_code == 200
    assert r.text.strip() == f"port={port} id=1 gpus=0 g=hi s=sekret"
    rdir = tmp_path / "local-1"
    assert (rdir / "setup.txt").read_text().strip() == "setup-ran"
    assert f"http.server {port}" in (rdir / "run.sh").read_text()
    assert "--- run" in (rdir / "replica.log").read_text()
    pids = dep.pids()
    await dep.remove(rid)
    assert reg.get(rid) is None
    assert not any(alive(p) for p in pids if p > 0)
    await dep.close()


async def test_remove_ends_the_whole_process_group(tmp_path: Any) -> None:
    reg = Registry(StateStore(":memory:"))
    # A child that ignores SIGTERM: only the SIGKILL after the grace period ends it.
    run = ("(trap '' TERM; sleep 300) & echo $! > child.pid; "
           "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    dep = LocalDeployer(reg, service(run), log_dir=str(tmp_path), grace_seconds=0.5)
    rid = await dep.scale_up(None)
    pidfile = tmp_path / rid / "child.pid"
    await until(pidfile.exists)
    await until(lambda: pidfile.read_text().strip() != "")
    child = int(pidfile.read_text())
    assert alive(child)
    await dep.close()
    await until(lambda: not alive(child), 5)
    assert dep.replicas == {}


async def test_exited_replica_is_marked_failed(tmp_path: Any) -> None:
    reg = Registry(StateStore(":memory:"))
    dep = LocalDeployer(reg, service("exit 3"), log_dir=str(tmp_path))
    rid = await dep.scale_up(None)
    run_proc = None
    for _ in range(100):
        run_proc = dep.replicas[rid].run_proc
        if run_proc is not None and run_proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    dep.poll()
    assert reg.get(rid).state is S.FAILED  # type: ignore[union-attr]
    assert dep.crashed == 1
    await dep.close()


async def test_failed_setup_marks_failed_and_never_runs(tmp_path: Any) -> None:
    reg = Registry(StateStore(":memory:"))
    dep = LocalDeployer(reg, service("touch ran.txt", setup="exit 1"), log_dir=str(tmp_path))
    rid = await dep.scale_up(None)
    await until(lambda: reg.get(rid).state is S.FAILED)  # type: ignore[union-attr]
    assert not (tmp_path / rid / "ran.txt").exists()
    await dep.close()


async def test_ids_continue_after_restart(tmp_path: Any) -> None:
    store = StateStore(str(tmp_path / "agent.db"))
    reg = Registry(store)
    dep = LocalDeployer(reg, service("sleep 30"), log_dir=str(tmp_path), store=store)
    assert [await dep.scale_up(None), await dep.scale_up(True)] == ["local-1", "local-2"]
    assert reg.get("local-2").spot is True  # type: ignore[union-attr]
    await dep.close()
    dep2 = LocalDeployer(reg, service("sleep 30"), log_dir=str(tmp_path), store=store)
    assert await dep2.scale_up(None) == "local-3"
    await dep2.close()


def test_free_port_skips_the_ports_already_given_out(monkeypatch: Any) -> None:
    """The kernel may offer a port again as soon as its probe socket closes, before the
    replica given it listens: the next replica must not get the same one."""
    offered = iter([41000, 41001, 41000, 41002])

    class Probe:
        def __init__(self, *args: Any) -> None:
            self.port = next(offered)

        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            assert address[1] == 0

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(local_deployer.socket, "socket", Probe)
    assert free_port("127.0.0.1", {41000, 41001}) == 41002
