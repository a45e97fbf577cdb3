"""`skyform local` on the shipped examples (hello: http.server; streaming: OpenAI-style SSE)
and on an invalid file (exit 2 with located problems, nothing started)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from agent_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
SKYFORM = [sys.executable, "-c", "from components.cli import main; main()"]


class Local:
    def __init__(self, yaml: Path, tmp: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*SKYFORM, "local", str(yaml), "--port", str(self.port), "--json",
             "--probe-interval", "0.3", "--status-interval", "0.25",
             "--log-dir", str(tmp / "logs"), *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def wait_ready(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()  # type: ignore[union-attr]
            last = [e for e in self.events if e.get("event") == "status"]
            if last and any(r["state"] == "READY" for r in last[-1]["replicas"]):
                return
            time.sleep(0.1)
        raise AssertionError(f"no READY replica: {self.events[-1:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def test_hello_example(tmp_path: Path) -> None:
    local = Local(ROOT / "examples" / "hello.yaml", tmp_path)
    try:
        local.wait_ready()
        assert local.events[0]["endpoint"] == f"http://127.0.0.1:{local.port}"
        r = httpx.get(f"http://127.0.0.1:{local.port}/", timeout=10)
        assert r.status_code == 200 and r.text.strip() == "Hello from replica 1"
    finally:
        code = local.stop()
    assert code == 0 and local.events[-1] == {"event": "stopped", "exit_code": 0}


def test_streaming_example_streams_sse(tmp_path: Path) -> None:
    local = Local(ROOT / "examples" / "streaming.yaml", tmp_path)
    try:
        local.wait_ready()
        body = {"model": "echo", "stream": True,
                "messages": [{"role": "user", "content": "hello world"}]}
        chunks: list[str] = []
        with httpx.stream("POST", f"http://127.0.0.1:{local.port}/v1/chat/completions",
                          json=body, timeout=20) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line[6:])
        assert chunks[-1] == "[DONE]"
        text = "".join(
            json.loads(c)["choices"][0]["delta"].get("content", "") for c in chunks[:-1]
        )
        assert text == "[replica 1] you said: hello world"
        assert len(chunks) > 5  # streamed word by word, not one blob
    finally:
        code = local.stop()
    assert code == 0


def test_invalid_file_exits_2_with_located_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service:\n  readiness_probe: /\n  replicas: -1\nrun: echo hi\n")
    p = subprocess.run([*SKYFORM, "local", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert f"{bad}:" in p.stderr and "invalid service YAML" in p.stderr
    assert "Traceback" not in p.stderr


# A replica that is ready only when the probe carries the real secret, as vLLM's --api-key.
SECRET_PROBE_YAML = """\
service:
  readiness_probe:
    path: /health
    headers:
      Authorization: Bearer $API_KEY
  replicas: 1
resources:
  ports: 8080
secrets:
  API_KEY: null
run: |
  python3 - 8080 <<'PY'
  import http.server, os, sys
  class H(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
          ok = self.headers.get("Authorization") == "Bearer " + os.environ["API_KEY"]
          self.send_response(200 if ok else 401)
          self.end_headers()
          self.wfile.write(self.headers.get("Authorization", "").encode())
      def log_message(self, *args):
          pass
  http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
  PY
"""


def test_probe_with_secret_header_uses_the_real_value(tmp_path: Path) -> None:
    yaml = tmp_path / "secret_probe.yaml"
    yaml.write_text(SECRET_PROBE_YAML)
    secret = "sk-local-probe-7f3a9c"
    local = Local(yaml, tmp_path, ("--secret", f"API_KEY={secret}"))
    try:
        local.wait_ready(timeout=30)  # READY only if the probe sent "Bearer <secret>"
        r = httpx.get(f"http://127.0.0.1:{local.port}/health",
                      headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert r.status_code == 200
    finally:
        code = local.stop()
    assert code == 0
    printed = json.dumps(local.events)
    assert secret not in printed  # the status lines never show the secret


def test_secret_values_file_does_not_outlive_config_loading(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The 0600 file that hands secret values to the agent config is read once; it must not
    stay in the temp directory (with the values in plain text) while and after the run."""
    from click.testing import CliRunner

    import components.commands.local as local_cmd
    from components.cli import main

    yaml = tmp_path / "secret_probe.yaml"
    yaml.write_text(SECRET_PROBE_YAML)
    secret = "sk-local-file-1b2c3d"
    seen: dict[str, Any] = {}

    async def fake_main(self: Any, *args: Any) -> int:
        seen["config"] = self.config
        seen["file_during_run"] = os.path.exists(self.config.secrets_file)
        return 0

    monkeypatch.setattr(local_cmd._Run, "main", fake_main)
    result = CliRunner().invoke(main, ["local", str(yaml), "--secret", f"API_KEY={secret}"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.probe.headers["Authorization"] == f"Bearer {secret}"
    assert seen["file_during_run"] is False
    assert not os.path.exists(config.secrets_file)
