"""A rolling update of examples/hello.yaml under continuous load on `skyform local`.

Starts `skyform local` on a copy of examples/hello.yaml (v1), runs N client threads of
back-to-back GETs against the endpoint (127.0.0.1 only), waits for a steady state, writes v2
(the same service answering "Hello v2 ...") over the file and sends SIGHUP. It measures the
seconds from the SIGHUP to the last v1 replica gone (its status event no longer lists any
version-1 replica and the rollout is done), keeps the load on for a second more, and counts
every request: served (HTTP 200) and failed (anything else, or a connection error).

Agent timings are shortened through the CLI (decision interval 1 s, probe interval 0.5 s,
QPS window 5 s, so the load scales v1 to its max of 3); the drain, readiness and rollout
logic are the real ones.

Run: .venv/bin/python bench/update_bench.py [--clients N] [--mode rolling|blue_green]
The last line is `served N failed M rollout S s`.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--mode", choices=["rolling", "blue_green"], default="rolling")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    hello = (ROOT / "examples" / "hello.yaml").read_text()
    v2 = hello.replace('"Hello from replica', '"Hello v2 from replica')
    with tempfile.TemporaryDirectory(prefix="skyform-update-bench-") as tmp:
        path = Path(tmp) / "hello.yaml"
        path.write_text(hello)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from components.cli import main; main()", "local",
             str(path), "--port", str(port), "--json", "--decision-interval", "1",
             "--probe-interval", "0.5", "--status-interval", "0.1", "--qps-window", "5",
             "--update-mode", args.mode, "--log-dir", str(Path(tmp) / "logs")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        last: dict[str, Any] = {}

        def read() -> None:
            nonlocal last
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "status":
                    last = ev

        threading.Thread(target=read, daemon=True).start()
        served = failed = 0
        v1 = v2_answers = 0
        lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            nonlocal served, failed, v1, v2_answers
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.get(f"http://127.0.0.1:{port}/")
                        ok, body = r.status_code == 200, r.text
                    except httpx.HTTPError:
                        ok, body = False, ""
                    with lock:
                        served += ok
                        failed += not ok
                        v1 += body.startswith("Hello from")
                        v2_answers += body.startswith("Hello v2")

        def wait(cond: Any, what: str) -> None:
            deadline = time.monotonic() + args.timeout
            while not cond():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"timed out waiting for {what}; last status: {last}")
                time.sleep(0.05)

        try:
            wait(lambda: any(r["state"] == "READY" for r in last.get("replicas", [])),
                 "v1 READY")
            threads = [threading.Thread(target=client, daemon=True)
                       for _ in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(8.0)  # steady state: the load scales v1 to max_replicas (3)
            v1_replicas = sum(1 for r in last.get("replicas", []) if r["version"] == 1)
            path.write_text(v2)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            wait(lambda: (last.get("rollout") or {}).get("status") == "done"
                 and not any(r["version"] == 1 for r in last.get("replicas", [])),
                 "the last v1 replica gone")
            rollout = time.monotonic() - t0
            time.sleep(1.0)
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        print(f"mode {args.mode}, {args.clients} clients, {v1_replicas} v1 replica(s) at the "
              f"update; answers: v1 {v1}, v2 {v2_answers}")
        print(f"served {served} failed {failed} rollout {rollout:.1f} s")


if __name__ == "__main__":
    main()
