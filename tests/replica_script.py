"""Running the rendered replica script (templates/replica.sh.j2) in tests: a stand-in for a
controller's admin API that records each call, and the script started from a `ReplicaBoot`
with curl or with only the python3 fallback of images that lack curl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest

from components.startup import ReplicaBoot, replica_files

#: How long a test waits for an event the script should cause (never a pass condition).
WAIT_SECONDS = 60

#: What a replica without curl still finds on its PATH (the script's own needs).
_TOOLS_WITHOUT_CURL = ("bash", "sleep", "mkdir", "chmod", "cat", "printenv", "env",
                       "hostname", "grep", "sed", "tr", "kill", "touch", "test")


class Call(NamedTuple):
    """One request the stand-in controller received."""

    method: str
    path: str
    authorization: str
    body: str


@dataclass
class RecordingAgent:
    """A stand-in for one controller's admin API: records calls, answers 200 `{}`."""

    server: ThreadingHTTPServer
    calls: list[Call] = field(default_factory=list)
    event: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, method: str, count: int = 1) -> None:
        with self.event:
            if not self.event.wait_for(
                    lambda: sum(c.method == method for c in self.calls) >= count,
                    WAIT_SECONDS):
                pytest.fail(f"{self.url} got {self.calls}, not {count} {method}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_recording_agent(port: int = 0) -> RecordingAgent:
    """A `RecordingAgent` serving on 127.0.0.1 (`port` 0: any free port)."""
    agent: RecordingAgent

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            # Recorded before the answer: once the script has its answer, the call is seen.
            with agent.event:
                agent.calls.append(Call(self.command, self.path,
                                        self.headers.get("Authorization", ""), body))
                agent.event.notify_all()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        do_POST = _record
        do_DELETE = _record

        def log_message(self, format: str, *args: object) -> None:
            return

    agent = RecordingAgent(ThreadingHTTPServer(("127.0.0.1", port), Handler))
    threading.Thread(target=agent.server.serve_forever, daemon=True).start()
    return agent


def _path_without_curl(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A real interpreter, not a version-manager shim that needs more tools on PATH.
    (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())
    for tool in _TOOLS_WITHOUT_CURL:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def start_replica_script(root: Path, boot: ReplicaBoot, *, hostname: str,
                         credential: str, with_curl: bool = True,
                         extra_files: dict[str, bytes] | None = None) -> subprocess.Popen[str]:
    """`replica.sh start` rendered from `boot` into `root/files` (with `extra_files`, such
    as downloads), its state in `root/state`, `root` as HOME and `boot.workdir` created;
    stdout and stderr are pipes."""
    if with_curl and shutil.which("curl") is None:
        pytest.fail("curl is needed for this test (apt-get install curl)")
    files = root / "files"
    files.mkdir(parents=True)
    Path(boot.workdir).mkdir(parents=True, exist_ok=True)
    for name, text in replica_files(boot).items():
        (files / name).write_text(text)
    for name, data in (extra_files or {}).items():
        (files / name).write_bytes(data)
    env = {
        "PATH": os.environ["PATH"] if with_curl else _path_without_curl(root),
        "HOME": str(root), "HOSTNAME": hostname, "POD_IP": "127.0.0.1",
        "SKYFORM_REPLICA_CREDENTIAL": credential, "SKYFORM_DIR": str(files),
        "SKYFORM_STATE_DIR": str(root / "state"),
    }
    return subprocess.Popen(["bash", str(files / "replica.sh"), "start"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
