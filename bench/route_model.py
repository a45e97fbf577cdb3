"""A deterministic model of route_bench's workloads: routing rules compared without timing noise.

Usage: ``.venv/bin/python bench/route_model.py [--workloads chat,fewshot] [--seeds 40]
[--contenders least_load,prefix_aware,prefix_aware@2/0.5/0.001,oracle]``

``bench/route_bench.py`` runs real processes on a shared machine, where a TTFT p99 of a few
hundred requests moves by tens of percent between runs. This script plays the same seeded
traces (``route_bench.make_workload``) through the same engine model
(``lb_agent/testing/llm_sim.py``: its prefix cache, FIFO batch admission, prefill one at a
time, batch-dependent decode), but as a discrete-event simulation on a virtual clock, with the
real policy objects deciding (the JSON body as a client sends it, ``request_key`` and
``choose``, in-flight counts kept and ``release`` called as the proxy does) and route_bench's
oracle. No network, no proxy overhead: a rule's own effect.
It prints, per contender, the median over the seeds of TTFT p50/p99, requests/s and the
cluster cache hit rate (``--scale`` sets the trace length, as route_bench's).
``prefix_aware@A/R/K`` sets ``balance_abs`` A, ``balance_rel`` R and ``blocks_per_request``
K (``@2/0.5/0.001`` is the first rule: the deepest match unless the bound forbids it);
``+option=value`` any other option (``prefix_aware+anchor_blocks=0``);
``POLICY*2`` runs two load balancers, each request through one of them at random;
``sglang-model`` is a model of SGLang's router's ``cache_aware`` (route_bench runs the real
one).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import os
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "bench"), ROOT]

from route_bench import Oracle, contender_rule, make_workload  # noqa: E402

from lb_agent.dataplane.policies import build_policy  # noqa: E402
from lb_agent.dataplane.target import Target  # noqa: E402
from lb_agent.testing.llm_sim import Engine, SimConfig, block_hashes, tokens_of  # noqa: E402

#: One way, client to replica (the proxy and the loopback), in seconds.
HOP = 0.0005


@dataclass
class Call:
    """One request in the model."""

    body: dict[str, Any]
    done: Callable[[Call], None]
    start: float
    engine: int = 0
    handle: Any = None
    tokens: list[str] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    uncached: int = 0
    out: list[str] = field(default_factory=list)
    ttft: float | None = None


@dataclass
class Replica:
    """An engine's state that llm_sim keeps in its coroutines: batch, queue, prefill."""

    engine: Engine
    running: int = 0
    waiting: list[Call] = field(default_factory=list)
    prefill_free: float = 0.0


class Model:
    """The event loop: (time, seq, action) on a heap."""

    def __init__(self, n: int, cfg: SimConfig, router: Any) -> None:
        self.cfg = cfg
        self.replicas = [Replica(Engine(f"sim-{i}", cfg)) for i in range(n)]
        self.router = router
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.now = 0.0

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self.seq), action))

    def run(self) -> None:
        while self.events:
            self.now, _, action = heapq.heappop(self.events)
            action()

    def submit(self, body: dict[str, Any], done: Callable[[Call], None]) -> None:
        c = Call(body, done, self.now, tokens=tokens_of(body))
        c.engine, c.handle = self.router.pick(body)
        self.at(self.now + HOP, lambda: self._admit(c))

    def _admit(self, c: Call) -> None:
        r = self.replicas[c.engine]
        if r.running < self.cfg.max_batch and not r.waiting:
            r.running += 1
            self._prefill(c)
        else:
            r.waiting.append(c)

    def _prefill(self, c: Call) -> None:
        r, cfg = self.replicas[c.engine], self.cfg
        e = r.engine
        c.hashes = block_hashes(c.tokens, cfg.block_tokens)
        hit = e.cached_blocks(c.hashes) * cfg.block_tokens
        c.uncached = len(c.tokens) - hit
        e.stats.requests += 1
        e.stats.prompt_tokens += len(c.tokens)
        e.stats.cached_tokens += hit
        e._insert(c.hashes[: hit // cfg.block_tokens])
        r.prefill_free = max(self.now, r.prefill_free) + c.uncached * cfg.prefill_s_per_token
        self.at(r.prefill_free, lambda: self._decode(c))

    def _step(self, r: Replica) -> float:
        return self.cfg.decode_s * (1 + self.cfg.decode_batch_factor * (r.running - 1))

    def _decode(self, c: Call) -> None:
        r = self.replicas[c.engine]
        r.engine._insert(c.hashes)
        seed = c.hashes[-1] if c.hashes else hash(tuple(c.tokens))
        self.at(self.now + self._step(r), lambda: self._token(c, seed))

    def _token(self, c: Call, seed: int) -> None:
        r = self.replicas[c.engine]
        c.out.append(f"w{(seed + len(c.out) * 7919) % 997}")
        if c.ttft is None:
            c.ttft = self.now + HOP - c.start
            self.router.first(c.handle)
        if len(c.out) < int(c.body.get("max_tokens", 16)):
            self.at(self.now + self._step(r), lambda: self._token(c, seed))
            return
        r.engine._insert(block_hashes([*c.tokens, "<assistant>", *c.out],
                                      self.cfg.block_tokens))
        if r.waiting:
            self._prefill(r.waiting.pop(0))  # the slot passes on
        else:
            r.running -= 1
        self.router.done(c.handle)
        self.at(self.now + HOP, lambda: c.done(c))


class PolicyRouter:
    """A skyform policy deciding as in the proxy, on the body a client would send."""

    def __init__(self, name: str, n: int, seed: int) -> None:
        policy, options = contender_rule(name)
        self.policy = build_policy(policy, **options)
        self.policy.rng.seed(seed)
        if os.environ.get("ROUTE_MODEL_PURE"):
            # The Python scan and settlement (the keys and memory stay the C helper's).
            self.policy._c_choose = None  # type: ignore[attr-defined]
            self.policy._c_release = None  # type: ignore[attr-defined]
        self.targets = [Target(f"sim-{i}", f"http://127.0.0.1:{9000 + i}") for i in range(n)]
        self.policy.on_targets_changed(self.targets)

    def pick(self, body: dict[str, Any]) -> tuple[int, tuple[Target, Any]]:
        p = self.policy
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()  # as httpx
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        key = p.request_key("POST", path, raw) if p.uses_request else None
        t = p.choose(self.targets, key) if p.uses_request else p.select(self.targets)
        assert t is not None
        t.in_flight += 1
        return self.targets.index(t), (t, key)

    def first(self, handle: tuple[Target, Any]) -> None:
        pass

    def done(self, handle: tuple[Target, Any]) -> None:
        """As the proxy: the in-flight count falls, then the policy's ``release``."""
        handle[0].in_flight -= 1
        if handle[1] is not None:
            self.policy.release(*handle)


class ManyBalancers:
    """``POLICY*N``: N load balancers, each its own policy instance with its own in-flight
    counts (what it routed itself), each request through one of them at random (seeded): the
    load balancers share nothing but the replicas."""

    def __init__(self, name: str, n: int, seed: int) -> None:
        name, _, count = name.partition("*")
        self.routers = [PolicyRouter(name, n, seed + k) for k in range(int(count))]
        self.rng = random.Random(seed)

    def pick(self, body: dict[str, Any]) -> tuple[int, Any]:
        router = self.rng.choice(self.routers)
        index, target = router.pick(body)
        return index, (router, target)

    def first(self, handle: Any) -> None:
        handle[0].first(handle[1])

    def done(self, handle: Any) -> None:
        handle[0].done(handle[1])


class SglangModelRouter:
    """A model of SGLang's router's ``cache_aware`` (sglang-router 0.3.2, its defaults), for
    quick comparisons only: route_bench runs the real router. Per worker, the text it was sent
    (8-character blocks standing for the router's character tree, no eviction: the default
    tree holds 64M characters); a request goes to the worker with the longest match when it
    covers more than ``cache_threshold`` of the text, else to the worker with the least text;
    when the loads differ by more than ``balance_abs`` and ``balance_rel``x, to the least
    loaded."""

    BLOCK = 8

    def __init__(self, n: int, cache_threshold: float = 0.3, balance_abs: int = 64,
                 balance_rel: float = 1.5) -> None:
        self.trees: list[dict[int, float]] = [{} for _ in range(n)]
        self.sizes = [0] * n
        self.load = [0] * n
        self.clock = 0.0
        self.cache_threshold, self.balance_abs, self.balance_rel = (
            cache_threshold, balance_abs, balance_rel)

    @staticmethod
    def _text(body: dict[str, Any]) -> str:
        if isinstance(body.get("messages"), list):
            return " ".join(str(m.get("content", "")) for m in body["messages"])
        return str(body.get("prompt") or body.get("text") or "")

    def pick(self, body: dict[str, Any]) -> tuple[int, int]:
        text = self._text(body)
        blocks, h = [], 0
        for i in range(0, len(text) - len(text) % self.BLOCK, self.BLOCK):
            h = hash((h, text[i:i + self.BLOCK]))
            blocks.append(h)
        self.clock += 1
        hi, lo = max(self.load), min(self.load)
        if hi - lo > self.balance_abs and hi > lo * self.balance_rel:
            idx = self.load.index(lo)
        else:
            best, depth = 0, 0
            for i, tree in enumerate(self.trees):
                d = 0
                for b in blocks:
                    if b not in tree:
                        break
                    d += 1
                if d > depth or (d == depth and d and tree[blocks[d - 1]] > self.trees[best][
                        blocks[d - 1]]):
                    best, depth = i, d
            rate = depth * self.BLOCK / len(text) if text else 0.0
            idx = best if rate > self.cache_threshold else self.sizes.index(min(self.sizes))
        tree = self.trees[idx]
        for b in blocks:
            if b not in tree:
                self.sizes[idx] += self.BLOCK
            tree[b] = self.clock
        self.load[idx] += 1
        return idx, idx

    def first(self, handle: int) -> None:
        pass

    def done(self, handle: int) -> None:
        self.load[handle] -= 1


class OracleRouter:
    """route_bench's oracle on the model's engines."""

    def __init__(self, model_engines: list[Engine]) -> None:
        cluster = type("ModelCluster", (), {})()
        cluster.engines = model_engines
        cluster.urls = [str(i) for i in range(len(model_engines))]
        self.oracle = Oracle(cluster)

    def pick(self, body: dict[str, Any]) -> tuple[int, Any]:
        url, handle = self.oracle.pick(body)
        return int(url), handle

    def first(self, handle: Any) -> None:
        self.oracle.first(handle)

    def done(self, handle: Any) -> None:
        self.oracle.done(handle)


def run(contender: str, workload: str, seed: int, n: int = 4,
        scale: float = 1.0) -> dict[str, float]:
    """One seeded trace through one contender: TTFT p50/p99 (ms), req/s, hit rate."""
    cfg = SimConfig(cache_blocks=1500, max_batch=8)  # route_bench's defaults
    w = make_workload(workload, seed, scale)
    engines: list[Engine] = []
    router: Any = None
    model = Model(n, cfg, None)
    engines = [r.engine for r in model.replicas]
    router = (OracleRouter(engines) if contender == "oracle"
              else SglangModelRouter(n) if contender == "sglang-model"
              else ManyBalancers(contender, n, seed) if "*" in contender
              else PolicyRouter(contender, n, seed))
    model.router = router
    calls: list[Call] = []
    def session(s: Any) -> Callable[[Call | None], None]:
        """A closed-loop conversation: each answer brings the next turn."""
        msgs: list[dict[str, str]] = [{"role": "system", "content": s.system}]
        turns = iter(s.turns)

        def turn(prev: Call | None) -> None:
            if prev is not None:
                calls.append(prev)
                msgs.append({"role": "assistant", "content": " ".join(prev.out)})
            nxt = next(turns, None)
            if nxt is not None:
                msgs.append({"role": "user", "content": nxt})
                model.submit({"model": "sim-llm", "stream": True, "max_tokens": s.max_tokens,
                              "messages": list(msgs)}, turn)

        return turn

    for s in w.sessions:
        model.at(s.start, functools.partial(session(s), None))
    for req in w.requests:
        model.at(req.at, functools.partial(model.submit, req.body, calls.append))
    model.run()
    ttfts = sorted(c.ttft or 0.0 for c in calls)
    prompt = sum(e.stats.prompt_tokens for e in engines)
    return {"ttft_p50_ms": 1000 * ttfts[len(ttfts) // 2],
            "ttft_p90_ms": 1000 * ttfts[int(0.9 * len(ttfts))],
            "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "req_s": len(calls) / model.now,
            "hit_rate": sum(e.stats.cached_tokens for e in engines) / prompt if prompt else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--workloads", default="chat,fewshot,shared,noreuse")
    ap.add_argument("--contenders", default="least_load,prefix_aware,oracle,sglang-model")
    ap.add_argument("--seeds", type=int, default=40, help="traces per workload (seeds 12..)")
    ap.add_argument("--scale", type=float, default=1.0, help="trace length multiplier")
    args = ap.parse_args()
    print(f"Median over {args.seeds} seeded traces (virtual clock; no proxy, no noise)")
    print("Spread: the lowest and highest seed in brackets.")
    print("| workload | contender | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | req/s | cache hit |\n"
          "|---|---|---|---|---|---|---|")
    for w in args.workloads.split(","):
        for c in args.contenders.split(","):
            runs = [run(c, w, seed, scale=args.scale) for seed in range(12, 12 + args.seeds)]
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            lo = {k: min(r[k] for r in runs) for k in runs[0]}
            hi = {k: max(r[k] for r in runs) for k in runs[0]}
            print(f"| {w} | {c} | {m['ttft_p50_ms']:.1f} "
                  f"| {m['ttft_p90_ms']:.1f} ({lo['ttft_p90_ms']:.0f}-{hi['ttft_p90_ms']:.0f}) "
                  f"| {m['ttft_p99_ms']:.1f} ({lo['ttft_p99_ms']:.0f}-{hi['ttft_p99_ms']:.0f}) "
                  f"| {m['req_s']:.1f} ({lo['req_s']:.1f}-{hi['req_s']:.1f}) "
                  f"| {m['hit_rate']:.1%} ({lo['hit_rate']:.1%}-{hi['hit_rate']:.1%}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
