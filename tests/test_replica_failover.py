"""The rendered replica script fails over between controllers (templates/replica.sh.j2): a
replica whose first controller is down registers with the next; one whose controller goes
away mid-life heartbeats to another and deregisters there; the one that answered is asked
first from then on. Real bash, real HTTP on 127.0.0.1, with curl and with the python3
fallback of images that lack curl."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from replica_script import (
    WAIT_SECONDS,
    RecordingAgent,
    start_recording_agent,
    start_replica_script,
)

from components.startup import ReplicaBoot


@pytest.fixture()
def agents() -> Iterator[list[RecordingAgent]]:
    started = [start_recording_agent(), start_recording_agent()]
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


def _start(tmp_path: Path, urls: list[str], with_curl: bool, run: str
           ) -> tuple[subprocess.Popen[str], Path]:
    boot = ReplicaBoot(
        cloud="kubernetes", service_name="svc", group="spot", index=None, replica_id_base=1,
        spot=False, accelerator=None, num_gpus=0, service_port=8080,
        controller_url=urls[0], fallback_controller_urls=tuple(urls[1:]),
        credential_id="SKYFORM_REPLICA_CREDENTIAL", run=run,
        workdir=str(tmp_path / "work"), heartbeat_seconds=1,
    )
    process = start_replica_script(tmp_path, boot, hostname="svc-spot-4",
                                   credential="skr1.cred-9", with_curl=with_curl)
    return process, tmp_path / "state"


def _finish(process: subprocess.Popen[str]) -> str:
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 0, stderr
    return stderr


@pytest.mark.parametrize("with_curl", [True, False])
def test_a_replica_whose_first_controller_is_down_registers_with_the_next(
        agents: list[RecordingAgent], tmp_path: Path, with_curl: bool) -> None:
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
    assert json.loads(posts[0].body)["replica_id"] == "spot-4"
    assert second.calls[-1][:2] == ("DELETE", "/replicas/spot-4")
    # The one that answered is remembered: later calls go to it first.
    assert (state / "controller").read_text() == second.url


@pytest.mark.parametrize("with_curl", [True, False])
def test_a_replica_fails_over_when_its_controller_goes_away(
        agents: list[RecordingAgent], tmp_path: Path, with_curl: bool) -> None:
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
    agent = start_recording_agent(int(url.rsplit(":", 1)[1]))  # the controller comes (back) up
    try:
        agent.wait_for("POST", 1)
        stop.touch()
        process.wait(timeout=WAIT_SECONDS)
        reader.join(timeout=WAIT_SECONDS)
        assert process.returncode == 0, "".join(lines)
        assert agent.calls[-1][:2] == ("DELETE", "/replicas/spot-4")
    finally:
        agent.stop()
