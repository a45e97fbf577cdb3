"""The file lease (lb_agent/control/leases/file.py): one holder at a time across processes,
kill -9 frees it at once, the term grows at each change of holder, a clean release hands over
at once, and the holder record tells the followers who leads and where."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lb_agent.contract import LeaseConfig
from lb_agent.control.leases import LeaseStoreError, open_store
from lb_agent.control.leases.file import FileLeaseStore

ROOT = Path(__file__).resolve().parent.parent

#: A contender in its own process: tries the lease until it holds it, says so on stdout
#: (one JSON line), renews on every line it reads, and releases it on SIGTERM.
CONTENDER = """
import asyncio, json, signal, sys
from lb_agent.control.leases.file import FileLeaseStore

async def main() -> None:
    store = FileLeaseStore(sys.argv[1], 15.0)
    who = sys.argv[2]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    seen = None
    while True:
        state = await store.acquire_or_renew(who, who + ":1")
        if state.held_by(who):
            break
        if state.holder != seen:
            seen = state.holder
            print(json.dumps({"waiting": who, "holder": state.holder, "term": state.term}),
                  flush=True)
        await asyncio.sleep(0.02)
    print(json.dumps({"held": who, "term": state.term}), flush=True)
    await stop.wait()
    await store.release(who)
    print(json.dumps({"released": who}), flush=True)

asyncio.run(main())
"""


def contender(path: Path, who: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CONTENDER, str(path), who],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


async def line(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The contender's next JSON line (waits for the event it reports)."""
    assert proc.stdout is not None
    text = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    assert text, f"the contender exited ({proc.poll()}) without saying more"
    data: dict[str, Any] = json.loads(text)
    return data


async def test_one_holder_kill_frees_at_once_and_term_grows(tmp_path: Path) -> None:
    lock = tmp_path / "leader.lock"
    a = contender(lock, "a")
    b = None
    try:
        assert await line(a) == {"held": "a", "term": 1}
        b = contender(lock, "b")
        assert await line(b) == {"waiting": "b", "holder": "a", "term": 1}
        record = json.loads((tmp_path / "leader.lock.holder").read_text())
        assert record["holder"] == "a" and record["address"] == "a:1"
        assert record["pid"] == a.pid
        os.kill(a.pid, signal.SIGKILL)  # no release: the kernel frees the flock
        a.wait()
        # B takes over long before the 15 s the record still claims for A.
        assert record["expires_at"] > 0
        assert await line(b) == {"held": "b", "term": 2}
        held = FileLeaseStore(str(lock)).read()
        assert (held.holder, held.term) == ("b", 2)
        # A clean shutdown releases: a newcomer takes the lease at once, with term 3.
        b.send_signal(signal.SIGTERM)
        assert await line(b) == {"released": "b"}
        assert b.wait(timeout=30) == 0
        assert FileLeaseStore(str(lock)).read().holder is None
        c = FileLeaseStore(str(lock), 15.0)
        state = await c.acquire_or_renew("c", "c:1")
        assert state.held_by("c") and state.term == 3
        # Renewing keeps the term and pushes the expiry out.
        again = await c.acquire_or_renew("c", "c:1")
        assert again.term == 3 and again.expires_at >= state.expires_at
        await c.release("c")
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_a_second_contender_in_one_process_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "lease")
    first, second = FileLeaseStore(path, 15.0), FileLeaseStore(path, 15.0)
    assert (await first.acquire_or_renew("x", "x:1")).held_by("x")
    seen = await second.acquire_or_renew("y", "y:1")
    assert not seen.held_by("y")
    assert (seen.holder, seen.address, seen.term) == ("x", "x:1", 1)
    await second.release("y")  # not the holder: changes nothing
    assert (await second.acquire_or_renew("y", "y:1")).holder == "x"
    await first.release("x")
    assert (await second.acquire_or_renew("y", "y:1")).held_by("y")


async def test_an_expired_record_names_no_holder(tmp_path: Path) -> None:
    now = [1000.0]
    path = str(tmp_path / "lease")
    holder = FileLeaseStore(path, 15.0, clock=lambda: now[0])
    await holder.acquire_or_renew("x", "x:1")
    reader = FileLeaseStore(path, 15.0, clock=lambda: now[0])
    assert reader.read().holder == "x"
    now[0] += 16  # the holder stopped renewing
    assert reader.read().holder is None


def test_open_store_names_the_kind() -> None:
    assert open_store(LeaseConfig()) is None
    store = open_store(LeaseConfig(kind="file", name="/tmp/x.lock", duration_seconds=7))
    assert isinstance(store, FileLeaseStore) and store.duration_seconds == 7
    for kind in ("kubernetes", "s3", "gcs"):
        if Path(ROOT / "lb_agent/control/leases" / f"{kind}.py").exists():
            continue  # its helper's module is present
        with pytest.raises(LeaseStoreError, match=f"lease.kind: {kind} is not available"):
            open_store(LeaseConfig(kind=kind, name="x", bucket="b"))


def test_a_file_lease_without_a_path_is_a_config_error() -> None:
    from lb_agent.config import AgentConfig, ConfigError

    with pytest.raises(ConfigError) as info:
        AgentConfig.from_dict({"token": "t" * 16, "lease": {"kind": "file"}})
    assert info.value.issues == [("lease.name", "a file lease needs name: the lock file's path")]
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_dict({"token": "t" * 16, "lease": {"kind": "zookeeper"}})
    assert info.value.field == "lease.kind"
    ok = AgentConfig.from_dict({"token": "t" * 16, "lease": {"kind": "file", "name": "/x"}})
    assert ok.lease.name == "/x" and ok.lease.renew_seconds == 5.0
