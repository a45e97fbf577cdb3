"""The rendered replica script really runs: setup, run, registration (with its credential and
the SkyPilot envs), heartbeat and deregistration against a local stand-in for the agent, with
curl and with the python3 fallback of images that lack curl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.startup import ReplicaBoot, replica_files


class _Agent(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str, str]] = []

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        _Agent.calls.append((self.command, self.path, self.headers.get("Authorization", ""),
                             body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = _record
    do_DELETE = _record

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture()
def agent() -> Iterator[str]:
    _Agent.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _path_without_curl(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A real interpreter, not a version-manager shim that needs more tools on PATH.
    (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())
    for tool in ("bash", "sleep", "mkdir", "chmod", "cat", "printenv", "env",
                 "hostname", "grep", "sed", "tr", "kill"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.parametrize("with_curl", [True, False])
def test_replica_registers_heartbeats_and_deregisters(agent: str, tmp_path: Path,
                                                       with_curl: bool) -> None:
    if with_curl and shutil.which("curl") is None:
        pytest.fail("curl is needed for this test (apt-get install curl)")
    boot = ReplicaBoot(
        cloud="kubernetes", service_name="svc", group="spot", index=None, replica_id_base=1,
        spot=True, accelerator="L4", num_gpus=1, service_port=8080, controller_url=agent,
        credential_id="SKYFORM_REPLICA_CREDENTIAL", envs={"GREETING": "hi there"},
        setup="echo \"setup $GREETING\" > setup.out",
        run="echo \"$SKYPILOT_SERVE_REPLICA_ID $SKYPILOT_NUM_GPUS_PER_NODE\" > run.out; "
            "echo \"${SKYFORM_REPLICA_CREDENTIAL:-unset}\" > credential.out; sleep 2",
        workdir=str(tmp_path / "work"), heartbeat_seconds=1,
    )
    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "work").mkdir()
    for name, text in replica_files(boot).items():
        (files / name).write_text(text)
    env = {
        "PATH": os.environ["PATH"] if with_curl else _path_without_curl(tmp_path),
        "HOME": str(tmp_path), "HOSTNAME": "svc-spot-2", "POD_IP": "127.0.0.1",
        "SKYFORM_REPLICA_CREDENTIAL": "skr1.cred-123", "SKYFORM_DIR": str(files),
        "SKYFORM_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(["bash", str(files / "replica.sh"), "start"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "work" / "setup.out").read_text() == "setup hi there\n"
    assert (tmp_path / "work" / "run.out").read_text() == "3 1\n"  # index 2 + 1, one GPU
    # The replica's credential registers it; the user's run does not get it in its env.
    assert (tmp_path / "work" / "credential.out").read_text() == "unset\n"
    posts = [c for c in _Agent.calls if c[0] == "POST"]
    assert len(posts) >= 2  # registration, then at least one heartbeat
    assert all(c[1] == "/replicas" and c[2] == "Bearer skr1.cred-123" for c in posts)
    assert json.loads(posts[0][3]) == {
        "replica_id": "spot-2", "url": "http://127.0.0.1:8080", "spot": True,
        "accelerator": "L4", "group": "spot", "index": 2}
    assert _Agent.calls[-1][:3] == ("DELETE", "/replicas/spot-2", "Bearer skr1.cred-123")
