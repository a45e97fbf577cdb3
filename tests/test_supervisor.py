"""``python -m lb_agent.supervisor`` (the Kubernetes controller pod's process), with real
agent processes: it restarts the agent around changed files without refusing a connection,
keeps the agent when an install fails, restarts an agent that dies, rebinds for a new port,
and stops cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from agent_helpers import TOKEN, free_port

ROOT = Path(__file__).resolve().parent.parent


def _write_config(path: Path, port: int, admin: int) -> None:
    path.write_text(json.dumps({
        "public": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "token": TOKEN, "state_file": str(path.parent / "agent.db"), "replicas": [],
    }))


class Run:
    """A supervisor process and what it said."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def said(self) -> str:
        return self.log.read_text()

    def pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"agent started \(pid (\d+)\)", self.said())]

    def wait_for(self, test: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if test():
                return
            assert self.proc.poll() is None, self.said()
            time.sleep(0.05)
        raise AssertionError(f"never: {what}\n{self.said()}")


@contextmanager
def supervised(tmp_path: Path, *options: str) -> Iterator[Run]:
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lb_agent.supervisor", "--config",
             str(tmp_path / "agent.json"), "--interval", "0.3", "--backoff", "0.2", *options,
             "--", sys.executable, "-m", "lb_agent", "--config", str(tmp_path / "agent.json")],
            cwd=ROOT, stderr=out)
    run = Run(proc, log)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(40)


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        return True
    except httpx.HTTPError:
        return False


class Client(threading.Thread):
    """Asks the endpoint again and again until stopped; keeps every failure."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.done, self.answered, self.failures = port, threading.Event(), 0, []

    def run(self) -> None:
        while not self.done.is_set():
            try:
                # A new connection each time: each one must be accepted by some agent.
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=30,
                          headers={"connection": "close"})
                self.answered += 1
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            time.sleep(0.02)


def _with_bundle(tmp_path: Path) -> tuple[int, Path]:
    """An agent config on free ports and a first bundle: (the public port, the bundle)."""
    port = free_port()
    _write_config(tmp_path / "agent.json", port, free_port())
    bundle = tmp_path / "project.tgz"
    bundle.write_bytes(b"first")
    return port, bundle


def test_a_changed_bundle_is_installed_and_the_agent_restarted_with_no_refusal(
        tmp_path: Path) -> None:
    port, bundle = _with_bundle(tmp_path)
    marker = tmp_path / "installed"
    with supervised(tmp_path, "--install-when-changed", str(bundle),
                    "--install", f"sleep 0.5; cat {bundle} >> {marker}") as run:
        run.wait_for(lambda: _answers(port), "the agent answers")
        client = Client(port)
        client.start()
        # The client asks before, through and after the restart (counts of answers, events:
        # no rate is assumed), and no request of it may fail.
        run.wait_for(lambda: client.answered >= 3, "the client's first answers")
        bundle.write_bytes(b"second")
        run.wait_for(lambda: len(run.pids()) == 2 and _answers(port), "a second agent")
        after_restart = client.answered
        run.wait_for(lambda: client.answered >= after_restart + 3,
                     "the client's answers from the second agent")
        client.done.set()
        client.join(60)
        assert not client.is_alive()
        assert client.failures == []
        assert marker.read_text() == "second"  # installed once, for the change only
        first, second = run.pids()
        assert first != second
        assert "project.tgz changed: installing" in run.said()


def test_a_failed_install_keeps_the_running_agent_and_is_tried_again(tmp_path: Path) -> None:
    port, bundle = _with_bundle(tmp_path)
    allowed = tmp_path / "allowed"
    with supervised(tmp_path, "--install-when-changed", str(bundle),
                    "--install", f"test -e {allowed}") as run:
        run.wait_for(lambda: _answers(port), "the agent answers")
        bundle.write_bytes(b"second")
        run.wait_for(lambda: run.said().count("install failed (exit 1)") >= 2,
                     "two failed installs")
        assert len(run.pids()) == 1 and _answers(port)  # the first agent still serves
        allowed.touch()
        run.wait_for(lambda: len(run.pids()) == 2, "the retried install restarts the agent")


def test_an_agent_that_dies_is_started_again(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    _write_config(tmp_path / "agent.json", port, admin)
    with supervised(tmp_path) as run:
        run.wait_for(lambda: _answers(port), "the agent answers")
        [pid] = run.pids()
        subprocess.run(["kill", "-KILL", str(pid)], check=True)
        run.wait_for(lambda: len(run.pids()) == 2 and _answers(port), "a new agent")
        assert "agent exited with -9" in run.said()


def test_a_new_port_in_the_config_is_bound_and_sigterm_stops_everything(
        tmp_path: Path) -> None:
    port, admin, moved = free_port(), free_port(), free_port()
    config = tmp_path / "agent.json"
    _write_config(config, port, admin)
    with supervised(tmp_path, "--restart-when-changed", str(config)) as run:
        run.wait_for(lambda: _answers(port), "the agent answers")
        _write_config(config, moved, admin)
        run.wait_for(lambda: len(run.pids()) == 2 and _answers(moved), "the new port")
        assert not _answers(port)
        last = run.pids()[-1]
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(40) == 0
        assert run.said().rstrip().endswith("skyform supervisor: stopped")
        alive = subprocess.run(["kill", "-0", str(last)], capture_output=True, check=False)
        assert alive.returncode != 0  # the agent is gone too
