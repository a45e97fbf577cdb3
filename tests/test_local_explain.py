"""`skyform local` explains itself, seen through its ``--json`` lines, plus
`skyform status` / `skyform logs` against the running local service.

* a crashed replica: a ``replica_failed`` event with the exit code, the log path and the log's
  last lines, the status line's detail, then ``all_failed`` and exit 3, logs kept;
* a failing probe: the last probe result next to the state;
* the admin URL and a 0600 token file at start; the temp folder removed at a clean exit;
* a second Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from agent_helpers import SKYFORM_AT_A_TERMINAL
from agent_helpers import free_port as _free_port

ROOT = Path(__file__).resolve().parents[1]
SKYFORM = [sys.executable, "-c", "from components.cli import main; main()"]

CRASH_YAML = """\
service:
  readiness_probe: /
  replica_policy: {min_replicas: 1}
resources: {ports: 8080}
run: |
  echo "loading model on 8080"
  echo "boom - model file missing" >&2
  exit 7
"""

PROBE_404_YAML = """\
service:
  readiness_probe: {path: /health, initial_delay_seconds: 600}
  replica_policy: {min_replicas: 1}
resources: {ports: 8080}
run: python3 -m http.server 8080 --bind 127.0.0.1
"""


class Local:
    """`skyform local FILE --json` in a subprocess with its own runtime dir."""

    def __init__(self, yaml: Path, runtime_dir: Path, *extra: str) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "SKYFORM_RUNTIME_DIR": str(runtime_dir)}
        self.proc = subprocess.Popen(
            [*SKYFORM, "local", str(yaml), "--port", str(self.port), "--json",
             "--status-interval", "0.25", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60
                 ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if pred(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"not seen; events: {self.events[-3:]} stderr: {self.stderr}")

    def skyform(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SKYFORM, *args], cwd=ROOT, capture_output=True, text=True,
                              env=self.env, timeout=60)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def _ready(event: dict[str, Any]) -> bool:
    return event.get("event") == "status" and any(
        r["state"] == "READY" for r in event["replicas"])


def test_crashed_replica_is_reported_with_exit_code_log_and_tail(tmp_path: Path) -> None:
    yaml = tmp_path / "crash.yaml"
    yaml.write_text(CRASH_YAML)
    local = Local(yaml, tmp_path / "run")
    try:
        failed = local.wait_for(lambda e: e.get("event") == "replica_failed")
        assert (failed["id"], failed["step"], failed["exit_code"]) == ("local-1", "run", 7)
        assert Path(failed["log"]).is_file()
        assert failed["tail"][-1] == "boom - model file missing"
        status = local.wait_for(lambda e: e.get("event") == "status" and any(
            r["exit_code"] == 7 for r in e["replicas"]))
        replica = status["replicas"][0]
        assert replica["state"] == "FAILED" and replica["log"] == failed["log"]
        assert replica["detail"] == "run exited with code 7"
        all_failed = local.wait_for(lambda e: e.get("event") == "all_failed")
        assert "local-1: run exited with code 7" in all_failed["message"]
        assert "fail-fast" in all_failed["message"]
        assert local.proc.wait(timeout=30) == 3
    finally:
        local.stop()
    # A replica failed: the logs are kept, and the user is told where.
    logs = local.events[0]["logs"]
    assert Path(failed["log"]).is_file()
    assert f"its logs are kept in {logs}" in local.stderr
    shutil.rmtree(Path(logs).parent, ignore_errors=True)


def test_failing_probe_shows_last_result_admin_token_file_and_clean_exit(tmp_path: Path
                                                                        ) -> None:
    yaml = tmp_path / "probe.yaml"
    yaml.write_text(PROBE_404_YAML)
    local = Local(yaml, tmp_path / "run")
    try:
        started = local.wait_for(lambda e: e.get("event") == "started")
        status = local.wait_for(lambda e: e.get("event") == "status" and any(
            r["probe"] == "HTTP 404" for r in e["replicas"]))
        replica = status["replicas"][0]
        assert replica["state"] == "STARTING"
        assert replica["detail"] == "last probe: HTTP 404"
        # The admin API: printed URL, token in a 0600 file.
        token_file = Path(started["token_file"])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = json.loads(token_file.read_text())["token"]
        admin = started["admin"]
        assert admin.startswith("http://127.0.0.1:")
        assert httpx.get(f"{admin}/status", timeout=5).status_code == 401
        r = httpx.get(f"{admin}/status", headers={"Authorization": f"Bearer {token}"},
                      timeout=5)
        assert r.status_code == 200 and r.json()["replicas"][0]["replica_id"] == "local-1"
    finally:
        code = local.stop()
    assert code == 0
    assert "Press Ctrl-C again to stop now" in local.stderr
    # No replica failed and no --log-dir: the temp folder is gone, and so is the state file.
    assert not Path(started["logs"]).exists()
    assert not token_file.exists()


def _until(condition: Callable[[], bool], what: str, detail: object = "",
           timeout: float = 60) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; {detail}"
        time.sleep(0.05)


def test_status_and_logs_against_skyform_local(tmp_path: Path) -> None:
    local = Local(ROOT / "examples" / "hello.yaml", tmp_path / "run",
                  "--log-dir", str(tmp_path / "logs"))
    try:
        started = local.wait_for(lambda e: e.get("event") == "started")
        local.wait_for(_ready)
        out = local.skyform("status", "--json")
        assert out.returncode == 0, out.stderr
        [svc] = json.loads(out.stdout)
        assert (svc["service"], svc["kind"], svc["endpoint"]) == (
            "hello", "local", started["endpoint"])
        assert (svc["ready"], svc["total"], svc["target"], svc["version"]) == (1, 1, 1, 1)
        row = svc["replicas"][0]
        assert (row["id"], row["state"], row["market"], row["instance_type"]) == (
            "local-1", "READY", "on-demand", "local process")
        assert row["address"].startswith("http://127.0.0.1:") and row["age_seconds"] >= 0
        text = local.skyform("status")
        assert text.returncode == 0 and "local-1" in text.stdout and "READY" in text.stdout
        endpoint = local.skyform("status", "--endpoint")
        assert endpoint.stdout.strip() == started["endpoint"]
        assert httpx.get(endpoint.stdout.strip(), timeout=5).status_code == 200
        rep = local.skyform("logs", "1")
        assert rep.returncode == 0 and "--- run: bash" in rep.stdout
        agent = local.skyform("logs", "--agent")
        assert "scale up: launched local-1" in agent.stdout
        missing = local.skyform("logs", "local-9")
        assert missing.returncode == 1 and "replicas with logs: local-1" in missing.stderr
        neither = local.skyform("logs")
        assert neither.returncode == 2 and "give a replica (local-1) or --agent" in neither.stderr
        # -f: what the replica writes next (http.server logs each request) is printed.
        # Ctrl-C as at a terminal: a test run started in the background (`cmd &`, as CI may
        # be) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
        follower = subprocess.Popen([*SKYFORM_AT_A_TERMINAL, "logs", "local-1", "-f", "-n", "1"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=local.env)
        try:
            assert follower.stdout is not None
            # Its first line (the log's last) says it runs: what is written next is followed.
            assert follower.stdout.readline().endswith("\n")
            assert httpx.get(f"{started['endpoint']}/follow-me", timeout=30).status_code == 404
            lines: list[str] = []
            while len(lines) < 20 and not any('"GET /follow-me' in x for x in lines):
                lines.append(follower.stdout.readline())  # probes may log in between
            assert '"GET /follow-me HTTP/1.1" 404' in lines[-1], lines
        finally:
            follower.send_signal(signal.SIGINT)
            _, err = follower.communicate(timeout=60)
        assert (follower.returncode, err) == (0, "")
    finally:
        assert local.stop() == 0
    # --log-dir given: kept; the service is gone from `skyform status`.
    assert (tmp_path / "logs" / "local-1" / "replica.log").is_file()
    after = local.skyform("status")
    assert after.returncode == 1
    assert after.stderr.startswith("error: no `skyform local` service is running")


def test_second_ctrl_c_stops_at_once_while_the_first_lets_streams_run(tmp_path: Path) -> None:
    local = Local(ROOT / "examples" / "streaming.yaml", tmp_path / "run",
                  "--env", "TOKEN_DELAY=0.2", "--probe-interval", "0.3")
    chunks: list[str] = []
    words = " ".join(f"w{i}" for i in range(100))  # 100 tokens at 0.2 s: 20 s of stream

    def stream() -> None:
        body = {"model": "echo", "stream": True,
                "messages": [{"role": "user", "content": words}]}
        with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "POST", f"http://127.0.0.1:{local.port}/v1/chat/completions", json=body,
            timeout=30,
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line)

    try:
        local.wait_for(_ready)
        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        _until(lambda: len(chunks) >= 3, "the stream's first chunks")
        local.proc.send_signal(signal.SIGINT)
        _until(lambda: "Press Ctrl-C again to stop now" in local.stderr,
               "the first Ctrl-C's message", local.stderr)
        # The first Ctrl-C lets the in-flight stream go on: more chunks arrive after it.
        seen = len(chunks)
        _until(lambda: len(chunks) >= seen + 3, "chunks after the first Ctrl-C")
        assert local.proc.poll() is None
        local.proc.send_signal(signal.SIGINT)
        assert local.proc.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        local.stop()
    assert "Stopping now." in local.stderr
    assert local.events[-1] == {"event": "stopped", "exit_code": 0}
