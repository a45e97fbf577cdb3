"""End to end: `skyform local` as a subprocess, real replicas, real load.

Load raises QPS -> the autoscaler scales up -> the new replica becomes READY and takes
traffic -> load drops -> the newest replica is drained (slow requests in flight on it finish)
and removed -> zero failed client requests throughout -> SIGTERM leaves no process behind.
Delays are short through the CLI's options (decision interval 1 s, QPS window 4 s).
"""

from __future__ import annotations

import asyncio
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

SERVICE = """\
service:
  readiness_probe: /
  replica_policy:
    min_replicas: 1
    max_replicas: 2
    target_qps_per_replica: 4
    upscale_delay_seconds: 20
    downscale_delay_seconds: 20
resources:
  ports: 8080
run: |
  cat > server.py <<'PY'
  import os, sys, time
  from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
  RID = os.environ["SKYPILOT_SERVE_REPLICA_ID"].encode()
  class H(BaseHTTPRequestHandler):
      def log_message(self, *a):
          pass
      def do_GET(self):
          if self.path.startswith("/slow"):
              time.sleep(0.6)
          self.send_response(200)
          self.send_header("Content-Length", str(len(RID)))
          self.end_headers()
          self.wfile.write(RID)
  ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
  PY
  exec python3 server.py 8080
"""


class Agent:
    def __init__(self, tmp: Path) -> None:
        yaml = tmp / "svc.yaml"
        yaml.write_text(SERVICE)
        self.port = free_port()
        self.log_dir = tmp / "logs"
        self.proc = subprocess.Popen(
            [*SKYFORM, "local", str(yaml), "--port", str(self.port), "--json",
             "--decision-interval", "1", "--qps-window", "4", "--probe-interval", "0.3",
             "--drain-timeout", "10", "--status-interval", "0.25",
             "--log-dir", str(self.log_dir)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.pids: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.events.append(ev)
            for pids in (ev.get("pids") or {}).values():
                self.pids.update(pids)

    def last(self) -> dict[str, Any]:
        for ev in reversed(self.events):
            if ev.get("event") == "status":
                return ev
        return {}

    def ready(self) -> list[str]:
        return [r["id"] for r in self.last().get("replicas", []) if r["state"] == "READY"]

    def ids(self) -> list[str]:
        return [r["id"] for r in self.last().get("replicas", [])]


async def wait_for(cond: Any, timeout: float, what: str, agent: Agent) -> None:
    """Poll ``cond``; the deadline is generous (at least 60 s) for a busy machine."""
    deadline = time.monotonic() + max(timeout, 60)
    while not cond():
        if time.monotonic() > deadline or agent.proc.poll() is not None:
            err = agent.proc.stderr.read() if agent.proc.poll() is not None else ""  # type: ignore[union-attr]
            raise AssertionError(f"timed out waiting for {what}; last={agent.last()} {err}")
        await asyncio.sleep(0.1)


def processes_under(path: Path) -> list[str]:
    """Processes whose command line or working directory mentions ``path``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{pid}/cwd")
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z" and (str(path) in cmd or cwd.startswith(str(path))):
            found.append(f"{pid}: {cmd}")
    return found


async def test_local_scales_up_and_down_without_failed_requests(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    results: list[tuple[int | str, str]] = []
    stop_high = asyncio.Event()
    stop_all = asyncio.Event()
    url = f"http://127.0.0.1:{agent.port}"

    async def client(path: str, stop: asyncio.Event, pause: float) -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = await c.get(url + path)
                    results.append((r.status_code, r.text))
                except httpx.HTTPError as exc:
                    results.append((type(exc).__name__, ""))
                await asyncio.sleep(pause)

    try:
        await wait_for(lambda: agent.ready() == ["local-1"], 30, "first replica READY", agent)
        # High load (~40 qps > 4 per replica): scale to max 2.
        high = [asyncio.create_task(client("/", stop_high, 0.05)) for _ in range(3)]
        # Slow requests keep flowing through the whole test (about 1.5 qps).
        slow = asyncio.create_task(client("/slow", stop_all, 0.0))
        await wait_for(lambda: sorted(agent.ready()) == ["local-1", "local-2"], 30,
                       "scale-up to 2 READY replicas", agent)
        await wait_for(lambda: any(t == "2" for _, t in results), 10,
                       "traffic on the new replica", agent)
        served_by = {t for _, t in results}
        assert {"1", "2"} <= served_by
        # Load drops to the slow client alone (< 4 qps): scale down, draining local-2.
        stop_high.set()
        await asyncio.gather(*high)
        n_before = len(results)
        await wait_for(lambda: agent.ids() == ["local-1"], 30, "scale-down to 1", agent)
        assert any(ev.get("draining") == ["local-2"] for ev in agent.events), "drained first"
        # Requests keep flowing after the scale-down (a count of answers, not a duration).
        await wait_for(lambda: len(results) > n_before + 2, 60, "answers after the scale-down",
                       agent)
        stop_all.set()
        await slow
        failed = [r for r in results if r[0] != 200]
        assert failed == [], f"{len(failed)} failed of {len(results)}: {failed[:5]}"
        assert len(results) > 20
    finally:
        stop_high.set()
        stop_all.set()
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
        code = agent.proc.wait(timeout=30)
    assert code == 0
    assert agent.events[-1] == {"event": "stopped", "exit_code": 0}
    assert agent.pids, "the status reported replica pids"
    # Every replica's process group was ended before exit; the last of them may still be
    # being reaped, so this waits for the list to empty (generously) before failing.
    deadline = time.monotonic() + 30
    while processes_under(agent.log_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_under(agent.log_dir) == [], "stray replica processes"
