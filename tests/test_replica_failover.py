"""The rendered replica script fails over between controllers (templates/replica.sh.j2): a
replica whose first controller is down registers with the next; one whose controller goes
away mid-life heartbeats to another and deregisters there; the one that answered is asked
first from then on. Real bash, real HTTP on 127.0.0.1, with curl and with the python3
fallback of images that lack curl."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.startup import ReplicaBoot, replica_files

#: How long a test waits for an event the script should cause (never a pass condition).
WAIT_SECONDS = 60


@dataclass
class Agent:
    """A stand-in for one controller's admin API: records calls, answers 200."""

    server: ThreadingHTTPServer
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    event: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, method: str, count: int = 1) -> None:
        with self.event:
            if not self.event.wait_for(
                    lambda: sum(c[0] == method for c in self.calls) >= count, WAIT_SECONDS):
                pytest.fail(f"{self.url} got {self.calls}, not {count} {method}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _start_agent(port: int = 0) -> Agent:
    agent: Agent

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")
            with agent.event:
                agent.calls.append((self.command, self.path, body))
                agent.event.notify_all()

        do_POST = _record
        do_DELETE = _record

        def log_message(self, format: str, *args: object) -> None:
            return

    agent = Agent(ThreadingHTTPServer(("127.0.0.1", port), Handler))
    threading.Thread(target=agent.server.serve_forever, daemon=True).start()
    return agent


@pytest.fixture()
def agents() -> Iterator[list[Agent]]:
    started = [_start_agent(), _start_agent()]
    yield started
    for agent in started:
        with contextlib.suppress(OSError):  # the test may have stopped it already
            agent.stop()


def _closed_url() -> str:
    """The URL of a port on 127.0.0.1 nothing listens on (a controller that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _path_without_curl(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())
    for tool in ("bash", "sleep", "mkdir", "chmod", "cat", "printenv", "env",
                 "hostname", "grep", "sed", "tr", "kill", "touch", "test"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _start(tmp_path: Path, urls: list[str], with_curl: bool, run: str
           ) -> tuple[subprocess.Popen[str], Path]:
    if with_curl and shutil.which("curl") is None:
        pytest.fail("curl is needed for this test (apt-get install curl)")
    boot = ReplicaBoot(
        cloud="kubernetes", service_name="svc", group="spot", index=None, replica_id_base=1,
        spot=False, accelerator=None, num_gpus=0, service_port=8080,
        controller_url=urls[0], fallback_controller_urls=tuple(urls[1:]),
        credential_id="SKYFORM_REPLICA_CREDENTIAL", run=run,
        workdir=str(tmp_path / "work"), heartbeat_seconds=1,
    )
    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "work").mkdir()
    for name, text in replica_files(boot).items():
        (files / name).write_text(text)
    env = {
        "PATH": os.environ["PATH"] if with_curl else _path_without_curl(tmp_path),
        "HOME": str(tmp_path), "HOSTNAME": "svc-spot-4", "POD_IP": "127.0.0.1",
        "SKYFORM_REPLICA_CREDENTIAL": "skr1.cred-9", "SKYFORM_DIR": str(files),
        "SKYFORM_STATE_DIR": str(tmp_path / "state"),
    }
    process = subprocess.Popen(["bash", str(files / "replica.sh"), "start"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, tmp_path / "state"


def _finish(process: subprocess.Popen[str]) -> str:
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 0, stderr
    return stderr


@pytest.mark.parametrize("with_curl", [True, False])
def test_a_replica_whose_first_controller_is_down_registers_with_the_next(
        agents: list[Agent], tmp_path: Path, with_curl: bool) -> None:
    second = agents[0]
    down = _closed_url()
    stop = tmp_path / "stop"
    process, state = _start(tmp_path, [down, second.url], with_curl,
                            run=f"while [ ! -e {stop} ]; do sleep 0.2; done")
    second.wait_for("POST", 2)  # registration, then a heartbeat: both to the second
    stop.touch()
    stderr = _finish(process)
    assert "Traceback" not in stderr  # a controller that is down is one line, not a trace
    posts = [c for c in second.calls if c[0] == "POST"]
    assert json.loads(posts[0][2])["replica_id"] == "spot-4"
    assert second.calls[-1][:2] == ("DELETE", "/replicas/spot-4")
    # The one that answered is remembered: later calls go to it first.
    assert (state / "controller").read_text() == second.url


@pytest.mark.parametrize("with_curl", [True, False])
def test_a_replica_fails_over_when_its_controller_goes_away(
        agents: list[Agent], tmp_path: Path, with_curl: bool) -> None:
    first, second = agents
    stop = tmp_path / "stop"
    process, state = _start(tmp_path, [first.url, second.url], with_curl,
                            run=f"while [ ! -e {stop} ]; do sleep 0.2; done")
    first.wait_for("POST", 2)
    # While the first answers, the second hears nothing: no call goes to two controllers.
    assert second.calls == []
    first.stop()
    second.wait_for("POST", 1)
    stop.touch()
    _finish(process)
    assert second.calls[-1][:2] == ("DELETE", "/replicas/spot-4")
    assert (state / "controller").read_text() == second.url


def test_with_no_controller_up_it_says_so_and_registers_once_one_is(tmp_path: Path) -> None:
    url = _closed_url()
    stop = tmp_path / "stop"
    process, _ = _start(tmp_path, [url], True,
                        run=f"while [ ! -e {stop} ]; do sleep 0.2; done")
    assert process.stderr is not None
    said = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "no controller accepted the registration" in line:
                said.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert said.wait(WAIT_SECONDS), "".join(lines)
    assert url in "".join(lines)  # the message names the controllers it tried
    agent = _start_agent(int(url.rsplit(":", 1)[1]))  # the controller comes (back) up
    try:
        agent.wait_for("POST", 1)
        stop.touch()
        process.wait(timeout=WAIT_SECONDS)
        reader.join(timeout=WAIT_SECONDS)
        assert process.returncode == 0, "".join(lines)
        assert agent.calls[-1][:2] == ("DELETE", "/replicas/spot-4")
    finally:
        agent.stop()
