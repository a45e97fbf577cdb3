"""The agent takes its public socket from systemd (lb_agent/socket_activation.py), so a
restart refuses nothing: real agent processes, a real replica, a socket passed the way
systemd passes it (fd 3, LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from agent_helpers import TOKEN, free_port, start_replica_process

ROOT = Path(__file__).resolve().parent.parent
#: What systemd does between fork and exec: the socket at fd 3, LISTEN_PID the agent's own.
SYSTEMD_LIKE = ('exec 3<&"$SOCKET_FD"; export LISTEN_PID=$$ LISTEN_FDS=1 '
                'LISTEN_FDNAMES=public; exec "$PYTHON" -m lb_agent --config "$CONFIG"')


def _config(tmp_path: Path, port: int, replica: str) -> Path:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({
        "public": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "token": TOKEN,
        "state_file": str(tmp_path / "agent.db"),
        "probe": {"path": "/health", "interval_seconds": 0.2, "timeout_seconds": 1},
        "replicas": [{"url": replica, "replica_id": "static-0"}],
    }))
    return path


def _start(config: Path, listener: socket.socket | None) -> subprocess.Popen[str]:
    env = {"PYTHON": sys.executable, "CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    if listener is None:
        return subprocess.Popen([sys.executable, "-m", "lb_agent", "--config", str(config)],
                                cwd=ROOT, stderr=subprocess.PIPE, text=True)
    env["SOCKET_FD"] = str(listener.fileno())
    return subprocess.Popen(["bash", "-c", SYSTEMD_LIKE], cwd=ROOT, env=env,
                            pass_fds=(listener.fileno(),), stderr=subprocess.PIPE, text=True)


def _serving(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered 200")


def _stop(agent: subprocess.Popen[str]) -> str:
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(20) == 0
    assert agent.stderr is not None
    return agent.stderr.read()


def test_a_request_during_a_restart_waits_for_the_next_agent(tmp_path: Path) -> None:
    replica, url = start_replica_process("r0")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    config = _config(tmp_path, port, url)
    endpoint = f"http://127.0.0.1:{port}/health"
    try:
        first = _start(config, listener)
        _serving(endpoint)
        first_log = _stop(first)
        assert "passed socket" not in first_log  # taken, no fallback
        # No agent runs now. A client connects and asks; it must wait, not be refused.
        answer: dict[str, Any] = {}

        def ask() -> None:
            try:
                answer["status"] = httpx.get(endpoint, timeout=30).status_code
            except httpx.HTTPError as exc:
                answer["error"] = repr(exc)

        client = threading.Thread(target=ask)
        client.start()
        time.sleep(1.0)
        assert client.is_alive() and not answer  # waiting in the socket's backlog
        second = _start(config, listener)
        client.join(30)
        assert answer == {"status": 200}
        _stop(second)
    finally:
        listener.close()
        replica.terminate()
        replica.wait(10)


def test_without_a_passed_socket_a_restart_refuses_connections(tmp_path: Path) -> None:
    """The difference the passed socket makes: an agent that binds its own port leaves
    nothing listening between two runs."""
    replica, url = start_replica_process("r0")
    port = free_port()
    config = _config(tmp_path, port, url)
    try:
        agent = _start(config, None)
        _serving(f"http://127.0.0.1:{port}/health")
        _stop(agent)
        refused = False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            refused = True
        assert refused
    finally:
        replica.terminate()
        replica.wait(10)


def test_a_passed_socket_on_another_port_is_left_and_the_configured_one_bound(
        tmp_path: Path) -> None:
    """A VM keeps its first user data: when the config names another port than the socket
    unit holds, the agent says so and serves the configured port."""
    replica, url = start_replica_process("r0")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = free_port()
    config = _config(tmp_path, port, url)
    try:
        agent = _start(config, listener)
        _serving(f"http://127.0.0.1:{port}/health")
        log = _stop(agent)
        assert (f"passed socket 'public' listens on 127.0.0.1:{listener.getsockname()[1]}, "
                f"not 127.0.0.1:{port} as configured") in log
    finally:
        listener.close()
        replica.terminate()
        replica.wait(10)
