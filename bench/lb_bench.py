"""Benchmark the agent's proxy against direct-to-replica and nginx ``least_conn``, in one run.

Usage: ``.venv/bin/python bench/lb_bench.py [--duration 5] [--connections 32] [--json]``

Needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install nginx wrk``). Everything runs on
127.0.0.1 in a temporary directory; nothing needs root:

* two nginx backends (small GET body, POST 1 KB answered with a small body) and two Python
  SSE backends (uvicorn) for streaming, since nginx cannot pace a stream;
* nginx as the reference balancer (``least_conn``, keep-alive upstreams, buffering off);
* the agent (``python -m lb_agent --config``) with least_load, metrics and retries on;
* the agent again with ``prefix_aware`` (target ``agent-pfx``): its cost per request, on the
  same small cases plus ``POST chat`` (a ~1 KB OpenAI chat body from one of 1,000
  conversations, which the policy parses, hashes and remembers). With ``--repeat N`` each
  round runs the targets back to back (every other round in reverse order) and the cost is
  the median of the N per-round ratios, agent-pfx / agent.

Throughput and latency come from ``wrk`` (bench/wrk.py; a Lua script for the POST); streaming
time-to-first-byte and the RSS with 1,000 concurrent open streams come from an asyncio client.
Each wrk run also reads the CPU time (user + system, from ``/proc``) the balancer's process
spent, divided by the requests served: ``cpu us/req``, for the agent its own process, for
nginx and ``direct`` the nginx worker (which serves the backends too). On a machine shared
with other work this moves far less than requests/s, which depend on how much of a core the
process gets. The ratio to nginx is taken per round (agent and nginx run back to back) and
reported as the median of the rounds with their range.

``--baseline DIR`` adds the target ``baseline``: one more least_load agent running the
``lb_agent`` of another checkout ``DIR`` (``git worktree add DIR <commit>``), measured in the
same rounds, so a change and what it replaced are compared in one run.

``--hostile`` runs the hostile-peer cases instead (raw-socket replicas and clients, as in
``tests/test_hostile_peers.py``) through the agent and through nginx on the same inputs, and
prints the comparison table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import wrk  # noqa: E402  (bench/wrk.py: one wrk runner and report parser)

from lb_agent.dataplane.policies.prefix_aware import NATIVE  # noqa: E402  (the agents run this checkout)

#: Which prefix_aware the agents run: the C helper is an optional build (setup.py).
PREFIX_IMPL = ("C helper (lb_agent/dataplane/policies/_prefix_native.c)" if NATIVE
               else "pure Python (the C helper is not built here)")
PURE_PYTHON = "pure Python (--pure-python)"
#: ``python -m lb_agent`` with the C helper unimportable (a None entry in sys.modules makes its
#: import fail), so the agent runs prefix_aware's Python versions.
HIDE_NATIVE = ("import runpy, sys; "
               "sys.modules['lb_agent.dataplane.policies._prefix_native'] = None; "
               "sys.argv[0] = 'lb_agent'; runpy.run_module('lb_agent', run_name='__main__')")
TOKEN = "bench-token-0123456789"

SSE_BACKEND = r'''
import asyncio, sys
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    n, delay = int(q.get("n", "5")), float(q.get("delay", "0.01"))
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(n):
        chunk = b"data: token %d\n\n" % i
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
                access_log=False, loop="uvloop", http="httptools", backlog=4096)
'''

NGINX_CONF = """
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{b1}; location / {{ return 200 "hello world\\n"; }}
           location /post {{ client_body_buffer_size 16k; return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{b2}; location / {{ return 200 "hello world\\n"; }}
           location /post {{ client_body_buffer_size 16k; return 200 "ok\\n"; }} }}
  upstream fast {{ least_conn; server 127.0.0.1:{b1}; server 127.0.0.1:{b2}; keepalive 256; }}
  upstream sse {{ least_conn; server 127.0.0.1:{s1}; server 127.0.0.1:{s2}; keepalive 256; }}
  server {{ listen 127.0.0.1:{lb}; location / {{ proxy_pass http://fast;
           proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
  server {{ listen 127.0.0.1:{lbs}; location / {{ proxy_pass http://sse; proxy_buffering off;
           proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}
"""

POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""

#: A ~1 KB OpenAI chat body, one of 1,000 conversations per request (prefix_aware's real work:
#: parse, hash, match, record, with a growing history).
CHAT_LUA = """
local system = string.rep("You are a careful assistant for the bench. ", 12)
local question = string.rep("Tell me more about the topic at hand. ", 8)
request = function()
  local s = math.random(1, 1000)
  local body = '{"model":"m","stream":false,"messages":[{"role":"system","content":"' ..
    s .. ' ' .. system .. '"},{"role":"user","content":"' .. question .. '"}]}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


@dataclass
class Result:
    """One measured (case, target) pair."""

    case: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us: float = float("nan")  # the balancer process's CPU time per request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_worker(tmp: str) -> int:
    """The pid of the one nginx worker (its master's pid file is in ``tmp``)."""
    with open(os.path.join(tmp, "nginx.pid")) as fh:
        master = fh.read().strip()
    children = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout
    return int(children.split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_agent_config(path: str, port: int, admin_port: int, backends: list[int],
                       policy: str, probe_interval: float) -> None:
    """An agent config at ``path`` (its state file beside it) in front of ``backends`` on
    127.0.0.1, probing them every ``probe_interval`` seconds."""
    cfg = {
        "public": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "token": TOKEN,
        "policy": policy,
        "state_file": os.path.splitext(path)[0] + ".db",
        "replicas": [{"url": f"http://127.0.0.1:{p}", "replica_id": f"static-{i}"}
                     for i, p in enumerate(backends)],
        "probe": {"interval_seconds": probe_interval, "path": "/"},
        "proxy": {"max_attempts": 3},
    }
    with open(path, "w") as fh:
        json.dump(cfg, fh)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def run_wrk(url: str, duration: float, connections: int, script: str | None,
            pid: int | None = None) -> Result:
    """One wrk run; with ``pid``, also that process's CPU time per request served."""
    before = cpu_seconds(pid) if pid else 0.0
    r = wrk.run(url, duration, connections, script)
    cpu = ((cpu_seconds(pid) - before) / r.requests * 1e6 if pid and r.requests
           else float("nan"))
    return Result("", "", r.rps, r.p50_ms, r.p99_ms, r.errors, r.requests, cpu)


async def _stream_once(host: str, port: int, path: str) -> tuple[float, float, int]:
    """(time to first body byte, total time, body bytes) of one streamed GET, new connection."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:40])
        first = await reader.read(1)
        if not first:
            raise RuntimeError("empty body")
        ttfb = time.perf_counter() - t0
        rest = await reader.read()
        return ttfb, time.perf_counter() - t0, 1 + len(rest)
    finally:
        writer.close()


async def measure_ttfb(port: int, n: int, concurrency: int) -> dict[str, float]:
    """TTFB percentiles over ``n`` streamed requests, ``concurrency`` at a time."""
    ttfbs: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal errors
        async with sem:
            try:
                ttfb, _total, size = await _stream_once(
                    "127.0.0.1", port, "/stream?n=5&delay=0.002"
                )
                if size < 50:
                    errors += 1
                ttfbs.append(ttfb)
            except (OSError, RuntimeError, asyncio.IncompleteReadError):
                errors += 1

    for _ in range(20):  # warm-up
        await one()
    ttfbs.clear()
    errors = 0
    await asyncio.gather(*(one() for _ in range(n)))
    ttfbs.sort()
    return {
        "p50_ms": statistics.median(ttfbs) * 1000,
        "p99_ms": ttfbs[int(len(ttfbs) * 0.99) - 1] * 1000,
        "errors": float(errors),
        "n": float(len(ttfbs)),
    }


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def measure_open_streams(port: int, pid: int, n: int) -> dict[str, float]:
    """Agent RSS while ``n`` streams are open at once (each receiving a chunk every 0.5 s)."""
    opened = 0
    all_open = asyncio.Event()
    release = asyncio.Event()
    errors = 0

    async def one() -> None:
        nonlocal opened, errors
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            errors += 1
            return
        try:
            writer.write(
                b"GET /stream?n=12&delay=0.5 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
            )
            await reader.readuntil(b"\r\n\r\n")
            if not await reader.read(1):
                raise RuntimeError("no first chunk")
            opened += 1
            if opened == n:
                all_open.set()
            await release.wait()
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    base = rss_mb(pid)
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_open.wait(), 30)
    await asyncio.sleep(1.0)  # a few chunks flow through every stream
    peak = rss_mb(pid)
    still = opened
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams_open": float(still), "rss_idle_mb": base, "rss_mb": peak,
            "errors": float(errors)}


def print_cpu(cpu_of: dict[str, list[float]], rounds: int) -> None:
    """CPU time per request of each case and target: median of the rounds and range."""
    for key, values in cpu_of.items():
        print(f"{key}: cpu {statistics.median(values):.1f} us/request (median of {rounds} "
              f"rounds, range {min(values):.1f}-{max(values):.1f})")


def fmt_table(results: list[Result]) -> str:
    lines = [f"{'case':<12}{'target':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
             f"{'cpu us/req':>12}"]
    for r in results:
        lines.append(
            f"{r.case:<12}{r.target:<10}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
            f"{r.cpu_us:>12.1f}"
        )
    return "\n".join(lines)


# -- hostile peers: the agent and nginx on the same raw-socket inputs (--hostile) ------------

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _hostile_answer(case: str, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> bool:
    """What a hostile replica sends for ``case``; False closes the connection."""
    if case == "merged responses":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                     b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\n"
                     b"Set-Cookie: sess=attacker\r\nContent-Length: 0\r\n\r\n")
    elif case == "partial stray head":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nCont")
    elif case == "stray idle head":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Le")
    elif case == "appended chunked body":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                     b"\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nEVIL!!\r\n"
                     b"0\r\n\r\n")
    elif case == "trailers":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                     b"Set-Cookie: sess=attacker\r\nLocation: http://evil.example/\r\n\r\n")
    elif case == "304 with a length":
        writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 5\r\n\r\n')
    elif case == "upstream 101":
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n"
                     b"Connection: Upgrade\r\n\r\nraw bytes")
    elif case == "xchunked":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n"
                     b"0\r\n\r\n")
    elif case in ("POST, replica closes", "client leaves before head"):
        if case == "client leaves before head":
            await reader.read()  # waits for the proxy to give up on it
        return False
    return True


class HostileReplica:
    """A raw-socket replica: /ok answered normally, everything else by ``_hostile_answer``."""

    def __init__(self) -> None:
        self.case = ""
        self.requests: list[bytes] = []
        self.closed: list[float] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                if head.startswith(b"GET /health "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.requests.append(head + body)
                if head.startswith(b"GET /ok "):
                    writer.write(OK_RESPONSE)
                elif not await _hostile_answer(self.case, reader, writer):
                    self.closed.append(time.monotonic())
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.append(time.monotonic())
        except asyncio.CancelledError:  # the bench is over
            pass
        finally:
            writer.close()


async def _raw(port: int, data: bytes, *, wait: float = 4.0, leave_after: float | None = None,
               drip: bool = False) -> tuple[bytes, float]:
    """(bytes received until the server closes or ``wait`` ends, seconds taken)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"<connect: {exc.strerror}>".encode(), 0.0
    got = b""
    try:
        if drip:  # slowloris: the head one byte at a time, never finished
            writer.write(data)
            for _ in range(int(wait / 0.1)):
                writer.write(b"X")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    got += await asyncio.wait_for(reader.read(65536), 0.1)
                if reader.at_eof():
                    break
        else:
            writer.write(data)
            await writer.drain()
            limit = leave_after if leave_after is not None else wait
            with contextlib.suppress(TimeoutError):
                while chunk := await asyncio.wait_for(reader.read(65536), limit):
                    got += chunk
    except ConnectionError as exc:
        got += f"<{type(exc).__name__}>".encode()
    finally:
        writer.close()
    return got, time.monotonic() - t0


def _summary(raw: bytes) -> str:
    """Status line, notable fields and body of a response, in one short line."""
    if not raw:
        return "nothing"
    if raw.startswith(b"<"):
        return raw.decode()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    out = [lines[0].split(" ", 1)[1]]
    for line in lines[1:]:
        if line.lower().split(":")[0] in ("location", "set-cookie", "content-length"):
            out.append(line)
    if b"transfer-encoding: chunked" in head.lower():
        body = re.sub(rb"(?m)^[0-9a-fA-F]+\r\n|\r\n", b"", body)
    text = body.decode("latin-1")
    if text:
        out.append(repr(text[:40]))
    return ", ".join(out)


HOSTILE_NGINX = """
worker_processes 1;
error_log {d}/error.log crit;
pid {d}/nginx.pid;
events {{ worker_connections 32; }}  # the agent's cap below is 32 too
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  client_header_timeout 2s; large_client_header_buffers 4 16k;
  upstream raw {{ server 127.0.0.1:{r1}; server 127.0.0.1:{r2}; keepalive 8; }}
  server {{ listen 127.0.0.1:{lb}; location / {{ proxy_pass http://raw;
           proxy_http_version 1.1; proxy_set_header Connection ""; proxy_read_timeout 2s; }} }}
}}
"""

HOSTILE_CASES = (
    "merged responses", "partial stray head", "stray idle head", "appended chunked body",
    "trailers", "304 with a length", "upstream 101", "xchunked", "POST, replica closes",
    "client leaves before head", "slowloris (2 s head timeout)", "16 KB+ header",
    "connections over the cap",
)


async def _hostile_case(case: str, port: int, reps: list[HostileReplica]) -> str:
    for rep in reps:
        rep.case = case
        rep.requests.clear()
        rep.closed.clear()
    get = b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    note = ""
    if case == "304 with a length":
        raw, _ = await _raw(port, b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
                            b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        kept = raw.count(b"HTTP/1.1 ") == 2
        result = _summary(raw.split(b"HTTP/1.1 200")[0]) + (
            "; client connection kept (next answer on it)" if kept else "; client cut off")
    elif case == "POST, replica closes":
        raw, _ = await _raw(port, b"POST /buy HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                            b"Connection: close\r\n\r\nonce")
        posts = sum(1 for r in reps for q in r.requests if q.startswith(b"POST"))
        result = f"{_summary(raw)[:40]}; POST reached replicas {posts}x"
    elif case == "client leaves before head":
        await _raw(port, get, leave_after=0.3)
        left = time.monotonic()
        await asyncio.sleep(2.5)
        sent = sum(len(r.requests) for r in reps)
        closed = [t - left for r in reps for t in r.closed]
        when = f"upstream closed after {min(closed):.2f} s" if closed else "upstream kept open"
        result = f"{when}; request sent {sent}x"
    elif case.startswith("slowloris"):
        raw, took = await _raw(port, b"GET /ok HTTP/1.1\r\nHost: t\r\n", wait=6.0, drip=True)
        result = f"{_summary(raw)[:60]} after {took:.1f} s"
    elif case == "16 KB+ header":
        raw, _ = await _raw(port, b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70000
                            + b"\r\nConnection: close\r\n\r\n")
        result = f"{_summary(raw)[:60]}; replica saw {sum(len(r.requests) for r in reps)}"
    elif case == "connections over the cap":
        held = []
        for _ in range(40):
            with contextlib.suppress(OSError):
                held.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.2)
        raw, took = await _raw(port, b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                               wait=3.0)
        for _, w in held:
            w.close()
        await asyncio.sleep(0.3)
        result = f"{_summary(raw)[:50]} ({took:.1f} s)"
    else:
        raw, _ = await _raw(port, get)
        result = _summary(raw)
    if case in ("stray idle head",):
        await asyncio.sleep(0.3)
    nxt, _ = await _raw(port, b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    ok = nxt.startswith(b"HTTP/1.1 200") and nxt.endswith(b"ok")
    note = "" if ok else f"; next request: {_summary(nxt)[:30]}"
    return result + note


def hostile_main(tmp: str) -> list[tuple[str, str, str]]:
    """Run every hostile case through the agent and through nginx: (case, agent, nginx)."""
    ports = {k: free_port() for k in ("lb", "agent", "admin")}

    async def run() -> list[tuple[str, str, str]]:
        reps = {name: [HostileReplica(), HostileReplica()] for name in ("agent", "nginx")}
        for group in reps.values():
            for rep in group:
                await rep.start()
        conf = os.path.join(tmp, "hostile-nginx.conf")
        with open(conf, "w") as fh:
            fh.write(HOSTILE_NGINX.format(d=tmp, lb=ports["lb"], r1=reps["nginx"][0].port,
                                          r2=reps["nginx"][1].port))
        subprocess.run(["nginx", "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "e.log")],
                       check=True)
        cfg = {
            "public": {"host": "127.0.0.1", "port": ports["agent"]},
            "admin": {"host": "127.0.0.1", "port": ports["admin"]},
            "token": TOKEN, "state_file": os.path.join(tmp, "hostile.db"),
            "replicas": [{"url": f"http://127.0.0.1:{r.port}", "replica_id": f"raw-{i}"}
                         for i, r in enumerate(reps["agent"])],
            "probe": {"interval_seconds": 60, "path": "/health"},
            "proxy": {"idle_timeout_seconds": 2},
            "limits": {"request_head_timeout_seconds": 2, "max_connections": 32},
        }
        path = os.path.join(tmp, "hostile-agent.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lb_agent", "--config", path, cwd=ROOT,
            stderr=asyncio.subprocess.DEVNULL)
        rows = []
        try:
            for p in ports.values():
                await asyncio.to_thread(wait_port, p)
            await asyncio.sleep(1.0)
            for case in HOSTILE_CASES:
                a = await _hostile_case(case, ports["agent"], reps["agent"])
                n = await _hostile_case(case, ports["lb"], reps["nginx"])
                if case == "connections over the cap":
                    admin, _ = await _raw(ports["admin"], b"GET /health HTTP/1.1\r\nHost: t\r\n"
                                          b"Connection: close\r\n\r\n")
                    a += f"; admin port: {_summary(admin)[:6]}"
                rows.append((case, a, n))
        finally:
            agent.send_signal(signal.SIGTERM)
            await agent.wait()
            for group in reps.values():
                for rep in group:
                    if rep.server is not None:
                        rep.server.close()
            subprocess.run(["nginx", "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "e.log"),
                            "-s", "stop"], capture_output=True)
        return rows

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1,
                    help="wrk runs per case and target; the median run is reported, and "
                    "prefix_aware's cost as the median of the per-round ratios")
    ap.add_argument("--streams", type=int, default=1000, help="open streams for the RSS case")
    ap.add_argument("--ttfb-requests", type=int, default=400)
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--only", default="",
                    help="only these throughput cases and targets, e.g. 'POST chat:agent,agent-pfx'"
                    " (skips streaming, RSS and the goals)")
    ap.add_argument("--hostile", action="store_true",
                    help="instead: the hostile-peer cases through the agent and through nginx")
    ap.add_argument("--baseline", default="", metavar="DIR",
                    help="also measure the least_load agent of another checkout DIR (target "
                    "'baseline') in the same rounds")
    ap.add_argument("--pure-python", action="store_true",
                    help="run prefix_aware without its C helper (what an install without a "
                    "C compiler runs)")
    args = ap.parse_args()
    impl = PURE_PYTHON if args.pure_python else PREFIX_IMPL
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found on PATH (apt-get install nginx wrk)", file=sys.stderr)
            return 2
    if args.hostile:
        tmp = tempfile.mkdtemp(prefix="skyform-lb-hostile-")
        try:
            rows = hostile_main(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            print(json.dumps([{"case": c, "agent": a, "nginx": n} for c, a, n in rows], indent=2))
        else:
            print("| case | skyform agent | nginx |\n|---|---|---|")
            for c, a, n in rows:
                print(f"| {c} | {a} | {n} |")
        return 0

    tmp = tempfile.mkdtemp(prefix="skyform-lb-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    ports = {k: free_port() for k in ("b1", "b2", "s1", "s2", "lb", "lbs")}
    agent_ports = {k: free_port() for k in ("fast", "fast_admin", "sse", "sse_admin",
                                            "pfx", "pfx_admin", "base", "base_admin")}
    nginx_conf = os.path.join(tmp, "nginx.conf")
    try:
        with open(nginx_conf, "w") as fh:
            fh.write(NGINX_CONF.format(d=tmp, **ports))
        subprocess.run(["nginx", "-p", tmp, "-c", nginx_conf, "-e", os.path.join(tmp, "err.log")],
                       check=True)
        sse_path = os.path.join(tmp, "sse_backend.py")
        with open(sse_path, "w") as fh:
            fh.write(SSE_BACKEND)
        for key in ("s1", "s2"):
            procs.append(subprocess.Popen([sys.executable, sse_path, str(ports[key])]))

        def start_agent(name: str, replicas: list[int], policy: str = "least_load",
                        checkout: str = ROOT) -> subprocess.Popen[bytes]:
            path = os.path.join(tmp, f"agent-{name}.json")
            write_agent_config(path, agent_ports[name], agent_ports[f"{name}_admin"], replicas,
                               policy, probe_interval=5)
            agent = ["-m", "lb_agent"]
            if args.pure_python and policy == "prefix_aware":
                agent = ["-c", HIDE_NATIVE]
            return subprocess.Popen([sys.executable, *agent, "--config", path], cwd=checkout)

        agent_fast = start_agent("fast", [ports["b1"], ports["b2"]])
        agent_sse = start_agent("sse", [ports["s1"], ports["s2"]])
        agent_pfx = start_agent("pfx", [ports["b1"], ports["b2"]], "prefix_aware")
        procs += [agent_fast, agent_sse, agent_pfx]
        agent_base = None
        if args.baseline:
            agent_base = start_agent("base", [ports["b1"], ports["b2"]], checkout=args.baseline)
            procs.append(agent_base)
        else:
            del agent_ports["base"], agent_ports["base_admin"]
        for listen_port in (*ports.values(), *agent_ports.values()):
            wait_port(listen_port, 120)
        time.sleep(1.0)  # first probe round: replicas READY

        post_lua = os.path.join(tmp, "post.lua")
        with open(post_lua, "w") as fh:
            fh.write(POST_LUA)
        chat_lua = os.path.join(tmp, "chat.lua")
        with open(chat_lua, "w") as fh:
            fh.write(CHAT_LUA)
        targets = {
            "nginx": ports["lb"], "agent": agent_ports["fast"], "agent-pfx": agent_ports["pfx"],
            "direct": ports["b1"],
        }
        worker = nginx_worker(tmp)
        pids = {"nginx": worker, "agent": agent_fast.pid, "agent-pfx": agent_pfx.pid,
                "direct": worker}
        if agent_base is not None:
            targets["baseline"] = agent_ports["base"]
            pids["baseline"] = agent_base.pid
        #: Per case, agent/nginx req/s of each round (the two runs are back to back).
        vs_nginx: dict[str, list[float]] = {}
        #: Per "case:target", the CPU time per request of each round.
        cpu_of: dict[str, list[float]] = {}
        results: list[Result] = []
        paired: dict[str, float] = {}
        cases: tuple[tuple[str, str, str | None], ...] = (
            ("GET small", "/", None), ("POST 1KB", "/post", post_lua),
            ("POST chat", "/post", chat_lua))
        if args.only:
            only_cases, _, only_targets = args.only.partition(":")
            cases = tuple(c for c in cases if c[0] in only_cases.split(","))
            if only_targets:
                targets = {k: v for k, v in targets.items() if k in only_targets.split(",")}
        for case, path, script in cases:
            for port in targets.values():
                run_wrk(f"http://127.0.0.1:{port}{path}", 1, args.connections, script)  # warm-up
            # Repeats interleave the targets, so a burst of load from elsewhere on the machine
            # does not land on one target's runs only, and every other round runs them in
            # reverse order, so no target always runs right after the same neighbour.
            runs_of: dict[str, list[Result]] = {name: [] for name in targets}
            names = list(targets)
            for rep in range(args.repeat):
                for name in (names if rep % 2 == 0 else names[::-1]):
                    runs_of[name].append(run_wrk(f"http://127.0.0.1:{targets[name]}{path}",
                                                 args.duration, args.connections, script,
                                                 pids[name]))
            for name, runs in runs_of.items():
                cpu_of[f"{case}:{name}"] = [r.cpu_us for r in runs]
            if "nginx" in runs_of:
                for name in ("agent", "baseline"):
                    if name in runs_of:
                        vs_nginx[f"{case}:{name}"] = [
                            ag.rps / ng.rps
                            for ag, ng in zip(runs_of[name], runs_of["nginx"], strict=True)]
            if "agent" in runs_of and "agent-pfx" in runs_of:
                # prefix_aware's cost: the median of the per-round ratios (the two runs of a
                # round are back to back, so they share the machine's load of the moment).
                paired[case] = statistics.median(
                    pf.rps / ag.rps for pf, ag in zip(runs_of["agent-pfx"], runs_of["agent"],
                                                      strict=True))
            for name in targets:
                runs = sorted(runs_of[name], key=lambda res: res.rps)
                r = runs[len(runs) // 2]  # the median run (by req/s), reported whole
                r.case, r.target = case, name
                results.append(r)
                if not args.json:
                    print(f"  measured {case:<10} {name:<7} {r.rps:>9.0f} req/s", file=sys.stderr)

        if args.only:
            print(fmt_table(results))
            print(f"prefix_aware ran its {impl}")
            for key, shares in vs_nginx.items():
                print(f"{key}: /nginx = {statistics.median(shares):.1%} (median of "
                      f"{args.repeat} rounds, range {min(shares):.1%}-{max(shares):.1%})")
            print_cpu(cpu_of, args.repeat)
            for case, share in paired.items():
                print(f"{case}: prefix_aware/least_load = {share:.1%} (median of "
                      f"{args.repeat} paired rounds)")
            return 0
        stream_targets = {"nginx": ports["lbs"], "agent": agent_ports["sse"], "direct": ports["s1"]}
        ttfb: dict[str, dict[str, float]] = {}
        for name, port in stream_targets.items():
            ttfb[name] = asyncio.run(measure_ttfb(port, args.ttfb_requests, 8))
        streams = asyncio.run(measure_open_streams(agent_ports["sse"], agent_sse.pid, args.streams))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["nginx", "-p", tmp, "-c", nginx_conf, "-e", os.path.join(tmp, "err.log"),
                        "-s", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    by = {(r.case, r.target): r for r in results}
    ratios = {
        case: {
            "agent_vs_nginx": statistics.median(vs_nginx[f"{case}:agent"]),
            "agent_vs_nginx_min": min(vs_nginx[f"{case}:agent"]),
            "agent_vs_nginx_max": max(vs_nginx[f"{case}:agent"]),
            "agent_vs_direct": by[(case, "agent")].rps / by[(case, "direct")].rps,
            "prefix_vs_agent": paired[case],
        }
        for case in ("GET small", "POST 1KB", "POST chat")
    }
    goals = {
        "GET req/s >= 30% of nginx (median of the rounds)":
            ratios["GET small"]["agent_vs_nginx"] >= 0.30,
        "POST 1KB req/s >= 15% of nginx (median of the rounds)":
            ratios["POST 1KB"]["agent_vs_nginx"] >= 0.15,
        f"p99 <= 5 ms at {args.connections} connections (GET small, POST 1KB)": all(
            by[(c, "agent")].p99_ms <= 5 for c in ("GET small", "POST 1KB")),
        "streaming TTFB p50 within 0.5 ms of nginx": ttfb["agent"]["p50_ms"]
        <= ttfb["nginx"]["p50_ms"] + 0.5,
        "prefix_aware loses <= 10% req/s on small requests (GET, POST 1KB, POST chat)": all(
            ratios[c]["prefix_vs_agent"] >= 0.90 for c in ("GET small", "POST 1KB", "POST chat")),
        f"RSS <= 150 MB with {args.streams} open streams": streams["rss_mb"] <= 150
        and streams["streams_open"] >= args.streams,
    }
    if args.json:
        print(json.dumps({
            "results": [asdict(r) for r in results], "ratios": ratios, "ttfb": ttfb,
            "vs_nginx_per_round": vs_nginx, "cpu_us_per_round": cpu_of,
            "open_streams": streams, "goals": goals,
            "prefix_aware_native": NATIVE and not args.pure_python,
        }, indent=2))
        return 0
    print(f"\nThroughput (wrk -t1 -c{args.connections} -d{args.duration:g}s, 2 backends, "
          f"median of {args.repeat} run(s))")
    print(fmt_table(results))
    for case, ratio in ratios.items():
        print(f"{case}: agent/nginx = {ratio['agent_vs_nginx']:.1%} (median of {args.repeat} "
              f"rounds, range {ratio['agent_vs_nginx_min']:.1%}-"
              f"{ratio['agent_vs_nginx_max']:.1%}), "
              f"agent/direct = {ratio['agent_vs_direct']:.1%}, "
              f"prefix_aware/least_load = {ratio['prefix_vs_agent']:.1%} (median of "
              f"{args.repeat} paired rounds)")
    print_cpu(cpu_of, args.repeat)
    for key, shares in vs_nginx.items():
        if key.endswith(":baseline"):
            print(f"{key.split(':')[0]}: baseline/nginx = {statistics.median(shares):.1%} (median "
                  f"of {args.repeat} rounds, range {min(shares):.1%}-{max(shares):.1%}; "
                  f"{args.baseline})")
    print(f"prefix_aware ran its {impl}")
    print(f"\nStreaming time to first byte ({args.ttfb_requests} requests, 8 at a time, "
          "new connection each)")
    for name, t in ttfb.items():
        print(f"  {name:<7} p50 {t['p50_ms']:.2f} ms  p99 {t['p99_ms']:.2f} ms  "
              f"errors {t['errors']:.0f}")
    print(f"  agent - nginx at p50: {ttfb['agent']['p50_ms'] - ttfb['nginx']['p50_ms']:+.2f} ms")
    print(f"\nAgent with {streams['streams_open']:.0f}/{args.streams} streams open: "
          f"RSS {streams['rss_mb']:.1f} MB (idle {streams['rss_idle_mb']:.1f} MB), "
          f"errors {streams['errors']:.0f}")
    print("\nGoals:")
    for goal, ok in goals.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
