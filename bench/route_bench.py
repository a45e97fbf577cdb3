"""Routing benchmark: one LLM request trace through each contender, on fresh simulated replicas.

Usage: ``.venv/bin/python bench/route_bench.py [--replicas 4] [--repeat 5] [--workloads chat,...]
[--contenders ...] [--sglang-router PATH] [--json]``

Replicas are ``lb_agent/testing/llm_sim.py`` engines (prefill of uncached tokens,
batch-dependent decode, max batch with a FIFO queue, an LRU prefix cache of block hashes)
served by uvicorn in this process on 127.0.0.1, fresh for every contender and workload. Contenders:

* every skyform policy: ``python -m lb_agent`` with that policy in front of the replicas
  (``prefix_aware@A/R[/K]`` sets its rule: ``prefix_balance_abs`` A, ``_rel`` R and
  ``prefix_blocks_per_request`` K; ``@2/0.5/0.001`` is the first rule, the deepest match
  unless the bound forbids it);
* ``sglang-<policy>``: SGLang's router (PyPI ``sglang-router``, a bench-only venv; pass its
  ``sglang-router`` executable with ``--sglang-router``, default ``/tmp/sgl-venv/bin/...``)
  with ``cache_aware``, ``round_robin``, ``power_of_two``;
* ``oracle``: this load generator sends each request straight to the replica with the earliest
  expected first token, from that engine's actual cache and the oracle's exact count of the
  requests it has in flight there and the prefill they still owe (no proxy).

Workloads (seeded, identical for every contender):

* ``chat``: multi-turn sessions (closed loop) over a few shared system prompts; each next turn
  carries the previous answer;
* ``fewshot``: Poisson arrivals, each a long shared few-shot prefix (one of a few) plus a
  unique question;
* ``shared``: Poisson arrivals near saturation of 4 replicas, each one of 12 ~2k-token
  few-shot prefixes with Zipf(1.1) popularity plus a short unique question (a miss prefills
  ~2,000 tokens, a hit ~30);
* ``noreuse``: Poisson arrivals of unique prompts;
* ``burst``: bursts of shared-prefix requests arriving at once.

``--slowdown F`` stretches time: the engines' prefill and decode and every arrival F times
slower, so a run is the same in every ratio with 1/F of the CPU per second (for a busy
machine; the table's times are then F times the unslowed ones).

Per contender it prints TTFT p50/p90/p99, end-to-end p50/p99, requests/s, output tokens/s, the
cluster cache hit rate (cached / prompt tokens over all replicas), load imbalance (the busiest
replica's request count over the mean) and errors.

``--repeat N`` (default 5) runs every workload N times, each time with the next seed (``--seed``,
``--seed`` + 1, ...) and every contender on the same trace, the contenders interleaved; each
number in the table is the median over the N runs (errors: the sum), and the TTFT p99 column
also shows the lowest and highest run, since a p99 of a few hundred requests on a shared
machine moves by tens of percent from one run to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from lb_agent.dataplane.policies import policy_names  # noqa: E402
from lb_agent.testing.llm_sim import (  # noqa: E402
    Engine,
    SimConfig,
    block_hashes,
    sim_app,
    tokens_of,
)

TOKEN = "route-bench-token-0123456789"
SGLANG_POLICIES = ("cache_aware", "round_robin", "power_of_two")
WORKLOADS = ("chat", "fewshot", "shared", "noreuse", "burst")
#: The shared-prefix workload: how many prefixes, their length (tokens), the Zipf exponent of
#: their popularity, the arrival rate (near the 4 default replicas' saturation).
SHARED_PREFIXES = 12
SHARED_PREFIX_TOKENS = 2000
SHARED_ZIPF = 1.1
SHARED_RATE = 100.0
WORDS = [f"{a}{b}" for a in "bcdfghjklmnprstvz" for b in ("a", "e", "i", "o", "u", "ar", "en")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# -- workloads ---------------------------------------------------------------------------------

@dataclass
class Request:
    """One request of a trace: when (open loop) and its body."""

    at: float
    body: dict[str, Any]


@dataclass
class Session:
    """A multi-turn conversation: its system prompt and user turns (closed loop)."""

    start: float
    system: str
    turns: list[str]
    max_tokens: int


@dataclass
class Workload:
    name: str
    requests: list[Request] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)


def make_workload(name: str, seed: int, scale: float) -> Workload:
    rng = random.Random(seed)
    w = Workload(name)
    if name == "chat":
        systems = [words(rng, 400) for _ in range(4)]
        for _s in range(int(48 * scale)):
            w.sessions.append(Session(start=rng.uniform(0, 1.0), system=rng.choice(systems),
                                      turns=[words(rng, rng.randint(30, 90)) for _ in range(5)],
                                      max_tokens=24))
    elif name == "fewshot":
        prefixes = [words(rng, 1200) for _ in range(6)]
        t = 0.0
        for _ in range(int(300 * scale)):
            t += rng.expovariate(90.0)
            w.requests.append(Request(t, _chat_body(rng.choice(prefixes), words(rng, 20), 16)))
    elif name == "shared":
        # Few long few-shot prefixes with Zipf popularity, each request one plus a short
        # unique question: a miss prefills ~2k tokens, a hit ~30.
        prefixes = [words(rng, SHARED_PREFIX_TOKENS) for _ in range(SHARED_PREFIXES)]
        weights = [1.0 / (k + 1) ** SHARED_ZIPF for k in range(SHARED_PREFIXES)]
        t = 0.0
        for _ in range(int(900 * scale)):
            t += rng.expovariate(SHARED_RATE)
            system = rng.choices(prefixes, weights)[0]
            w.requests.append(Request(t, _chat_body(system, words(rng, rng.randint(15, 40)),
                                                    16)))
    elif name == "noreuse":
        t = 0.0
        for _ in range(int(240 * scale)):
            t += rng.expovariate(50.0)
            w.requests.append(Request(t, {"model": "sim-llm", "prompt": words(rng, 500),
                                          "max_tokens": 16, "stream": True}))
    elif name == "burst":
        prefixes = [words(rng, 800) for _ in range(3)]
        for b in range(int(6 * scale)):
            for _ in range(48):
                w.requests.append(Request(b * 1.0, _chat_body(rng.choice(prefixes),
                                                              words(rng, 30), 16)))
    else:
        raise SystemExit(f"unknown workload {name!r}; valid: {', '.join(WORKLOADS)}")
    return w


def slowed(w: Workload, factor: float) -> Workload:
    """``w`` with every arrival ``factor`` times later (``--slowdown``: the engines are that
    much slower too, so the run is the same in every ratio, with less CPU per second)."""
    for r in w.requests:
        r.at *= factor
    for s in w.sessions:
        s.start *= factor
    return w


def _chat_body(system: str, user: str, max_tokens: int) -> dict[str, Any]:
    return {"model": "sim-llm", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}]}


# -- the client --------------------------------------------------------------------------------

@dataclass
class Sample:
    ttft: float
    e2e: float
    tokens: int
    ok: bool
    text: str = ""


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                     on_first: Callable[[], None] | None = None) -> Sample:
    """POST a streaming request; TTFT is the first content event."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    t0 = time.perf_counter()
    ttft = 0.0
    parts: list[str] = []
    try:
        async with client.stream("POST", url + path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return Sample(0, time.perf_counter() - t0, 0, False)
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if not ttft:
                    ttft = time.perf_counter() - t0
                    if on_first is not None:
                        on_first()
                choice = json.loads(line[6:])["choices"][0]
                parts.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    except httpx.HTTPError:
        return Sample(0, time.perf_counter() - t0, 0, False)
    ok = bool(parts)
    return Sample(ttft, time.perf_counter() - t0, len(parts), ok, "".join(parts))


class Router:
    """Where each request goes: a proxy's URL, or the oracle's choice of replica."""

    def __init__(self, url: str = "") -> None:
        self.url = url

    def pick(self, body: dict[str, Any]) -> tuple[str, Any]:
        """(base URL, a handle for ``first``/``done``)."""
        return self.url, None

    def first(self, handle: Any) -> None:
        """The request's first token arrived."""

    def done(self, handle: Any) -> None:
        """The request finished."""


async def run_trace(w: Workload, router: Router) -> tuple[list[Sample], float]:
    """Play ``w`` through ``router``; (samples, makespan)."""
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(body: dict[str, Any]) -> Sample:
            url, handle = router.pick(body)
            try:
                return await stream_one(client, url, body, lambda: router.first(handle))
            finally:
                router.done(handle)

        async def timed(req: Request) -> None:
            await asyncio.sleep(max(0.0, t0 + req.at - time.perf_counter()))
            samples.append(await one(req.body))

        async def session(s: Session) -> None:
            await asyncio.sleep(s.start)
            msgs: list[dict[str, str]] = [{"role": "system", "content": s.system}]
            for turn in s.turns:
                msgs.append({"role": "user", "content": turn})
                body = {"model": "sim-llm", "stream": True, "max_tokens": s.max_tokens,
                        "messages": list(msgs)}
                sample = await one(body)
                samples.append(sample)
                if not sample.ok:
                    return
                msgs.append({"role": "assistant", "content": sample.text})

        await asyncio.gather(*(timed(r) for r in w.requests), *(session(s) for s in w.sessions))
        return samples, time.perf_counter() - t0


# -- replicas and contenders ----------------------------------------------------------------

class Cluster:
    """Fresh simulated replicas served by uvicorn in this event loop."""

    def __init__(self, n: int, cfg: SimConfig) -> None:
        self.engines = [Engine(f"sim-{i}", cfg) for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.servers: list[uvicorn.Server] = []
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    async def start(self) -> None:
        for engine, port in zip(self.engines, self.ports, strict=True):
            server = uvicorn.Server(uvicorn.Config(
                sim_app(engine), host="127.0.0.1", port=port, log_level="error",
                access_log=False, lifespan="off", timeout_keep_alive=60, backlog=4096))
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            self.servers.append(server)
            self.tasks.append(asyncio.create_task(server.serve()))
        while not all(s.started for s in self.servers):
            await asyncio.sleep(0.01)

    def reset(self) -> None:
        """Forget warm-up traffic: empty caches and statistics."""
        for e in self.engines:
            e.cache.clear()
            e.stats = type(e.stats)()

    async def stop(self) -> None:
        for s in self.servers:
            s.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self.tasks), 10)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


async def wait_routes(url: str, timeout: float = 60) -> None:
    """Until a small chat request through ``url`` answers 200."""
    body = _chat_body("warm up", "hello", 1)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as c:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = await c.post(url + "/v1/chat/completions", json=body)
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not route a request within {timeout:g}s")


def contender_rule(name: str) -> tuple[str, dict[str, Any]]:
    """``prefix_aware@A/R[/K]`` -> ("prefix_aware", {balance_abs: A, balance_rel: R,
    blocks_per_request: K}); a plain policy name -> (name, {})."""
    name, *extra = name.split("+")
    policy, _, rule = name.partition("@")
    options: dict[str, Any] = {}
    if rule:
        a, _, rest = rule.partition("/")
        r, _, k = rest.partition("/")
        options = {"balance_abs": int(a), "balance_rel": float(r or 0)}
        if k:
            options["blocks_per_request"] = float(k)
    for item in extra:  # ``+option=value``: any other setting of the policy
        opt, _, value = item.partition("=")
        options[opt] = float(value) if "." in value else int(value)
    return policy, options


class Oracle(Router):
    """Routes each request with full knowledge of every replica: its engine's real cache
    (the prefill this request would skip), its queue, and the requests the oracle itself has
    sent that have not reached their first token (prefill still owed) or finished."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.engines = cluster.engines
        self.urls = cluster.urls
        n = len(self.engines)
        self.outstanding = [0] * n
        self.owed = [0] * n  # uncached prompt tokens of requests before their first token

    def pick(self, body: dict[str, Any]) -> tuple[str, Any]:
        tokens = tokens_of(body)
        best_i, best_cost, best_unc = 0, float("inf"), 0
        for i, e in enumerate(self.engines):
            c = e.cfg
            hashes = block_hashes(tokens, c.block_tokens)
            uncached = len(tokens) - e.cached_blocks(hashes) * c.block_tokens
            prefill = (self.owed[i] + uncached) * c.prefill_s_per_token
            over = self.outstanding[i] + 1 - c.max_batch
            decode_step = c.decode_s * (1 + c.decode_batch_factor * (
                min(self.outstanding[i] + 1, c.max_batch) - 1))
            queue = max(0, over) * 24 * decode_step / c.max_batch
            # Decoding slows everyone in the batch: a small charge per running request.
            cost = prefill + queue + 0.1 * self.outstanding[i] * decode_step
            if cost < best_cost:
                best_i, best_cost, best_unc = i, cost, uncached
        self.outstanding[best_i] += 1
        self.owed[best_i] += best_unc
        return self.urls[best_i], [best_i, best_unc]

    def first(self, handle: Any) -> None:
        if handle[1]:
            self.owed[handle[0]] -= handle[1]
            handle[1] = 0

    def done(self, handle: Any) -> None:
        self.first(handle)
        self.outstanding[handle[0]] -= 1


@contextlib.asynccontextmanager
async def contender(name: str, cluster: Cluster, tmp: str, sglang: str) -> Any:
    """Start ``name`` in front of ``cluster``; yields the routing function."""
    if name == "oracle":
        yield Oracle(cluster)
        return
    port = free_port()
    if name.startswith("sglang-"):
        cmd = [sglang, "launch", "--host", "127.0.0.1", "--port", str(port),
               "--worker-urls", *cluster.urls, "--policy", name.removeprefix("sglang-"),
               "--log-level", "warn", "--disable-retries", "--disable-circuit-breaker"]
        log = open(os.path.join(tmp, f"{name.replace('/', '_')}.log"), "wb")  # noqa: SIM115
    else:
        policy, options = contender_rule(name)
        routing = {f"prefix_{k}": v for k, v in options.items()}
        cfg = {
            "public": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "token": TOKEN, "policy": policy, "routing": routing,
            "state_file": os.path.join(tmp, f"agent-{name}-{port}.db"),
            "replicas": [{"url": u, "replica_id": f"sim-{i}"}
                         for i, u in enumerate(cluster.urls)],
            "probe": {"path": "/health", "interval_seconds": 0.5},
        }
        path = os.path.join(tmp, f"agent-{port}.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        cmd = [sys.executable, "-m", "lb_agent", "--config", path]
        log = open(os.path.join(tmp, f"{name.replace('/', '_')}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        await asyncio.get_running_loop().run_in_executor(None, wait_port, port)
        await wait_routes(f"http://127.0.0.1:{port}")
        # Every replica must be routable before the run (the agent probes them one by one).
        await asyncio.sleep(1.0)
        url = f"http://127.0.0.1:{port}"
        yield Router(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def measure(name: str, w: Workload, n: int, cfg: SimConfig, tmp: str,
                  sglang: str) -> dict[str, Any]:
    cluster = Cluster(n, cfg)
    await cluster.start()
    try:
        async with contender(name, cluster, tmp, sglang) as router:
            cluster.reset()
            samples, span = await run_trace(w, router)
    finally:
        await cluster.stop()
    ok = [s for s in samples if s.ok]
    stats = [e.stats for e in cluster.engines]
    prompt = sum(s.prompt_tokens for s in stats)
    served = [s.requests for s in stats]
    mean = statistics.mean(served) if served else 0
    return {
        "workload": w.name, "contender": name, "requests": len(samples),
        "ttft_p50_ms": 1000 * pct([s.ttft for s in ok], 0.5),
        "ttft_p90_ms": 1000 * pct([s.ttft for s in ok], 0.9),
        "ttft_p99_ms": 1000 * pct([s.ttft for s in ok], 0.99),
        "e2e_p50_ms": 1000 * pct([s.e2e for s in ok], 0.5),
        "e2e_p99_ms": 1000 * pct([s.e2e for s in ok], 0.99),
        "req_s": len(ok) / span, "out_tok_s": sum(s.tokens for s in ok) / span,
        "hit_rate": sum(s.cached_tokens for s in stats) / prompt if prompt else 0.0,
        "imbalance": max(served) / mean if mean else 0.0,
        "errors": len(samples) - len(ok),
    }


METRICS = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "req_s",
           "out_tok_s", "hit_rate", "imbalance")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a (workload, contender): the median of every metric, the
    sum of the errors and requests, the TTFT p99 of every run."""
    row: dict[str, Any] = {"workload": runs[0]["workload"], "contender": runs[0]["contender"],
                           "runs": len(runs), "requests": sum(r["requests"] for r in runs),
                           "errors": sum(r["errors"] for r in runs)}
    for m in METRICS:
        row[m] = statistics.median(r[m] for r in runs)
    row["ttft_p99_runs_ms"] = [r["ttft_p99_ms"] for r in runs]
    row["req_s_runs"] = [r["req_s"] for r in runs]
    row["hit_rate_runs"] = [r["hit_rate"] for r in runs]
    return row


def fmt(rows: list[dict[str, Any]]) -> str:
    head = ("| workload | contender | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms (runs: low-high) "
            "| e2e p50 ms | e2e p99 ms | req/s (runs) | out tok/s | cache hit (runs) | imbalance "
            "| errors |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        p99s = r.get("ttft_p99_runs_ms") or [r["ttft_p99_ms"]]
        spread = f" ({min(p99s):.0f}-{max(p99s):.0f})" if len(p99s) > 1 else ""
        rs = r.get("req_s_runs") or [r["req_s"]]
        hits = r.get("hit_rate_runs") or [r["hit_rate"]]
        rs_spread = f" ({min(rs):.1f}-{max(rs):.1f})" if len(rs) > 1 else ""
        hit_spread = f" ({min(hits):.1%}-{max(hits):.1%})" if len(hits) > 1 else ""
        lines.append(
            f"| {r['workload']} | {r['contender']} | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p90_ms']:.0f} "
            f"| {r['ttft_p99_ms']:.0f}{spread} | {r['e2e_p50_ms']:.0f} | {r['e2e_p99_ms']:.0f} "
            f"| {r['req_s']:.1f}{rs_spread} | {r['out_tok_s']:.0f} "
            f"| {r['hit_rate']:.1%}{hit_spread} "
            f"| {r['imbalance']:.2f} | {r['errors']} |")
    return "\n".join(lines)


def goals(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The routing goals (medians over the runs)."""
    by = {(r["workload"], r["contender"]): r for r in rows}
    out: dict[str, bool] = {}
    pa, ca = by.get(("shared", "prefix_aware")), by.get(("shared", "sglang-cache_aware"))
    if pa and ca:
        out["shared: prefix_aware cache hit within 2 points of sglang cache_aware or better"] = (
            pa["hit_rate"] >= ca["hit_rate"] - 0.02)
        out["shared: prefix_aware TTFT p90 and p99 <= sglang cache_aware's"] = (
            pa["ttft_p90_ms"] <= ca["ttft_p90_ms"] and pa["ttft_p99_ms"] <= ca["ttft_p99_ms"])
        out["shared: prefix_aware req/s >= sglang cache_aware's"] = pa["req_s"] >= ca["req_s"]
    pa, orc = by.get(("chat", "prefix_aware")), by.get(("chat", "oracle"))
    if pa and orc:
        out["chat: prefix_aware req/s >= 0.97x oracle"] = pa["req_s"] >= 0.97 * orc["req_s"]
    ca = by.get(("chat", "sglang-cache_aware"))
    if pa and ca:
        out["chat: prefix_aware TTFT p99 <= sglang cache_aware's"] = (
            pa["ttft_p99_ms"] <= ca["ttft_p99_ms"])
    pa, orc = by.get(("fewshot", "prefix_aware")), by.get(("fewshot", "oracle"))
    if pa and orc:
        out["fewshot: hit rate within 5 points of oracle"] = (
            pa["hit_rate"] >= orc["hit_rate"] - 0.05)
    pa, ll = by.get(("noreuse", "prefix_aware")), by.get(("noreuse", "least_load"))
    if pa and ll:
        out["noreuse: prefix_aware within 3% of least_load (req/s, TTFT p99)"] = (
            pa["req_s"] >= 0.97 * ll["req_s"] and pa["ttft_p99_ms"] <= 1.03 * ll["ttft_p99_ms"])
    return out


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = SimConfig()
    cfg = SimConfig(cache_blocks=args.cache_blocks, max_batch=args.max_batch,
                    prefill_s_per_token=base.prefill_s_per_token * args.slowdown,
                    decode_s=base.decode_s * args.slowdown)
    contenders = args.contenders.split(",") if args.contenders else [
        *policy_names(), "oracle", *(f"sglang-{p}" for p in SGLANG_POLICIES)]
    if not os.path.exists(args.sglang_router):
        missing = [c for c in contenders if c.startswith("sglang-")]
        if missing:
            print(f"note: {args.sglang_router} not found; skipping {', '.join(missing)} "
                  "(pip install sglang-router into a bench-only venv)", file=sys.stderr)
            contenders = [c for c in contenders if c not in missing]
    tmp = tempfile.mkdtemp(prefix="skyform-route-bench-")
    rows: list[dict[str, Any]] = []
    try:
        for wname in args.workloads.split(","):
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
            for rep in range(args.repeat):
                # The next seed each round; every contender plays the same trace in a round.
                w = slowed(make_workload(wname, args.seed + rep, args.scale), args.slowdown)
                for name in contenders:
                    try:
                        row = await measure(name, w, args.replicas, cfg, tmp, args.sglang_router)
                    except Exception as exc:  # a contender that cannot run is reported
                        print(f"{wname}/{name}: failed: {exc}", file=sys.stderr)
                        continue
                    runs[name].append(row)
                    print(f"  {wname:<8} run {rep + 1}/{args.repeat} {name:<26} req/s "
                          f"{row['req_s']:6.1f}  TTFT p99 {row['ttft_p99_ms']:6.0f} ms  "
                          f"hit {row['hit_rate']:.1%}  errors {row['errors']}", file=sys.stderr)
            rows += [median_row(r) for r in runs.values() if r]
    finally:
        if args.keep_logs:
            print(f"logs in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--workloads", default="chat,fewshot,noreuse,burst")
    ap.add_argument("--contenders", default="",
                    help="comma list (default: every skyform policy, oracle, sglang-*)")
    ap.add_argument("--sglang-router", default="/tmp/sgl-venv/bin/sglang-router")
    ap.add_argument("--cache-blocks", type=int, default=1500,
                    help="prefix cache per replica, in 16-token blocks")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--scale", type=float, default=1.0, help="trace length multiplier")
    ap.add_argument("--seed", type=int, default=12, help="the first round's trace seed")
    ap.add_argument("--repeat", type=int, default=5,
                    help="rounds per workload (seeds --seed, --seed+1, ...); the table shows "
                    "the median of each number over the rounds")
    ap.add_argument("--slowdown", type=float, default=1.0,
                    help="stretch time: engine prefill and decode and the arrivals all this "
                    "many times slower (the same run in every ratio, for a busy machine)")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = asyncio.run(amain(args))
    g = goals(rows)
    if args.json:
        print(json.dumps({"repeat": args.repeat, "seed": args.seed, "rows": rows, "goals": g},
                         indent=2))
        return 0
    print(f"Median over {args.repeat} run(s) per workload and contender (seeds {args.seed}.."
          f"{args.seed + args.repeat - 1}); TTFT p99 also as the lowest and highest run; "
          "errors summed.")
    print(fmt(rows))
    if g:
        print("\nGoals:")
        for k, ok in g.items():
            print(f"  [{'PASS' if ok else 'MISS'}] {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
