"""The rendered replica script watches its cloud's spot interruption notice and deregisters
with reason ``preempted``: run for real against a local fake metadata server (AWS IMDSv2 and
GCP's metadata server, on 127.0.0.1 through ``SKYFORM_METADATA_URL``) and a stand-in agent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.startup import ReplicaBoot, replica_files

IMDS_TOKEN = "imds-token-123"


class World:
    """The fake metadata server and agent share this state."""

    def __init__(self) -> None:
        self.notice = threading.Event()
        self.registered = threading.Event()
        self.deregistered = threading.Event()
        self.calls: list[tuple[str, str]] = []
        self.bad_metadata: list[str] = []


def _server(world: World) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: str = "") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # AWS IMDSv2 session token
            if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(200, IMDS_TOKEN)
            return self._send(404)

        def do_GET(self) -> None:
            path = self.path
            if path.startswith("/latest/"):
                if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
                    world.bad_metadata.append(path)
                    return self._send(401)
                if path == "/latest/meta-data/local-ipv4":
                    return self._send(200, "127.0.0.1")
                if path == "/latest/meta-data/spot/instance-action":
                    if world.notice.is_set():
                        return self._send(200, '{"action": "terminate", '
                                               '"time": "2026-12-06T05:00:00Z"}')
                    return self._send(404)
            if path.startswith("/computeMetadata/v1/"):
                if self.headers.get("Metadata-Flavor") != "Google":
                    world.bad_metadata.append(path)
                    return self._send(403)
                if path.endswith("/network-interfaces/0/ip"):
                    return self._send(200, "127.0.0.1")
                if path.startswith("/computeMetadata/v1/instance/preempted"):
                    if "wait_for_change=true" in path:
                        world.notice.wait(60)  # hangs until it changes, as GCP's does
                    return self._send(200, "TRUE" if world.notice.is_set() else "FALSE")
            return self._send(404)

        def _agent(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            world.calls.append((self.command, self.path))
            # Answer first: a test that stops the watcher once it has deregistered must not
            # close the socket under a response still being written.
            self._send(200, "{}")
            if self.command == "POST":
                world.registered.set()
            if self.command == "DELETE":
                world.deregistered.set()

        do_POST = _agent
        do_DELETE = _agent

        def log_message(self, format: str, *args: Any) -> None:
            return

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture()
def world() -> Iterator[tuple[World, str]]:
    w = World()
    server = _server(w)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield w, f"http://127.0.0.1:{server.server_address[1]}"
    w.notice.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_an_interruption_notice_deregisters_the_replica_as_preempted(
        world: tuple[World, str], tmp_path: Path, cloud: str) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed for this test (apt-get install curl)")
    w, url = world
    boot = ReplicaBoot(
        cloud=cloud, service_name="svc", group="spot-us-east-1b-3c5a", index=0,
        replica_id_base=1, spot=True, accelerator="A10G", num_gpus=1, service_port=8080,
        controller_url=url, credential_id="arn:credential", region="us-east-1", envs={},
        setup="true", run="sleep 120", workdir=str(tmp_path / "work"), heartbeat_seconds=1,
    )
    files, state = tmp_path / "files", tmp_path / "state"
    files.mkdir()
    state.mkdir()
    (tmp_path / "work").mkdir()
    for name, text in replica_files(boot).items():
        (files / name).write_text(text)
    # The replica's registration credential, as fetched from the secret store.
    (state / "replica-credential").write_text("cred-123")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SKYFORM_DIR": str(files),
           "SKYFORM_STATE_DIR": str(state), "SKYFORM_METADATA_URL": url}
    proc = subprocess.Popen(["bash", str(files / "replica.sh"), "start"], env=env,
                            cwd=tmp_path / "work", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert w.registered.wait(60), "the replica never registered"
        assert not w.deregistered.is_set()
        w.notice.set()
        assert w.deregistered.wait(60), "no deregistration after the notice"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    deletes = [path for method, path in w.calls if method == "DELETE"]
    assert deletes == ["/replicas/spot-us-east-1b-3c5a-0?reason=preempted"], err
    assert w.bad_metadata == [], "every metadata read carries its cloud's header"
    assert "spot interruption notice" in err
