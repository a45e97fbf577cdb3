"""A simulated LLM inference replica: an OpenAI-compatible streaming server with a prefix cache.

Shared by the tests and ``bench/route_bench.py``. The model of an inference engine, in
compressed time (a run takes seconds):

* tokens are whitespace-separated words (a chat message is ``<role>`` plus its words);
* the prompt's tokens are cut into blocks of ``block_tokens``; each block's hash chains the
  previous one, and the replica keeps up to ``cache_blocks`` of them in an LRU (its KV cache);
* prefill time is ``prefill_s_per_token`` times the *uncached* prompt tokens (the longest
  cached run of blocks is skipped); prefills run one at a time (one accelerator);
* decoding a token takes ``decode_s`` times ``1 + decode_batch_factor * (running - 1)``;
* at most ``max_batch`` requests run; the rest wait in FIFO order;
* a finished request's prompt and output blocks are in the cache (a next turn hits both).

Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``, ``/generate`` (SSE with
``"stream": true``, else JSON with ``usage``); ``GET /health``, ``/v1/models``,
``/sim/stats`` (requests, prompt and cached tokens, hit rate, running, waiting, evictions),
and what SGLang's router asks a worker for: ``/get_server_info``, ``/server_info``,
``/get_model_info``, ``/model_info``, ``/get_load``, ``/health_generate``, ``/flush_cache``.

Run alone: ``python -m lb_agent.testing.llm_sim --port 8000``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

MODEL = "sim-llm"


@dataclass
class SimConfig:
    """The engine's parameters (already in compressed time)."""

    block_tokens: int = 16
    cache_blocks: int = 4096
    max_batch: int = 8
    prefill_s_per_token: float = 0.00005
    decode_s: float = 0.004
    decode_batch_factor: float = 0.08


@dataclass
class SimStats:
    """What the replica served, for ``/sim/stats``."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    evicted_blocks: int = 0
    max_waiting: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["hit_rate"] = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return d


def tokens_of(body: dict[str, Any]) -> list[str]:
    """The prompt tokens of a chat/completions/generate body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        out: list[str] = []
        for m in messages:
            content = m.get("content", "")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            out.append(f"<{m.get('role', '')}>")
            out.extend(str(content).split())
        return out
    for key in ("prompt", "text", "inputs"):
        v = body.get(key)
        if isinstance(v, list) and v:
            v = v[0]
        if isinstance(v, str):
            return v.split()
    return []


def block_hashes(tokens: list[str], block: int) -> list[int]:
    """Chained hashes of the whole blocks of ``tokens``."""
    out: list[int] = []
    h = 0
    for i in range(0, len(tokens) - len(tokens) % block, block):
        h = hash((h, tuple(tokens[i:i + block])))
        out.append(h)
    return out


@dataclass
class Engine:
    """The simulated engine of one replica (its cache, batch and queue)."""

    name: str
    cfg: SimConfig = field(default_factory=SimConfig)
    stats: SimStats = field(default_factory=SimStats)

    def __post_init__(self) -> None:
        self.cache: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.running = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.prefill_lock = asyncio.Lock()
        self.pending_prefill_tokens = 0  # admitted, not yet prefilled

    # -- cache ---------------------------------------------------------------------------
    def cached_blocks(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are cached (no side effects)."""
        n = 0
        for h in hashes:
            if h not in self.cache:
                break
            n += 1
        return n

    def _insert(self, hashes: list[int]) -> None:
        cache = self.cache
        for h in hashes:
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = None
        while len(cache) > self.cfg.cache_blocks:
            cache.popitem(last=False)
            self.stats.evicted_blocks += 1

    # -- what an oracle may read ---------------------------------------------------------
    def estimate_ttft(self, tokens: list[str]) -> float:
        """Expected time to first token of ``tokens`` here now, from the cache and queue."""
        c = self.cfg
        hashes = block_hashes(tokens, c.block_tokens)
        uncached = len(tokens) - self.cached_blocks(hashes) * c.block_tokens
        prefill = (self.pending_prefill_tokens + uncached) * c.prefill_s_per_token
        over = self.running + len(self.waiters) + 1 - c.max_batch
        queue = 0.0
        if over > 0:  # wait for ``over`` running requests to finish (~30 tokens each)
            queue = over * 30 * c.decode_s * (1 + c.decode_batch_factor * (c.max_batch - 1)) \
                / c.max_batch
        return prefill + queue

    # -- serving -------------------------------------------------------------------------
    async def _admit(self) -> None:
        if self.running < self.cfg.max_batch and not self.waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.stats.max_waiting = max(self.stats.max_waiting, len(self.waiters))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed over just as the client left
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    def _release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on: ``running`` stays
                return
        self.running -= 1

    async def generate(self, tokens: list[str], max_tokens: int) -> Any:
        """Yield output tokens one by one, after queueing and prefill."""
        c = self.cfg
        await self._admit()
        try:
            hashes = block_hashes(tokens, c.block_tokens)
            hit = self.cached_blocks(hashes) * c.block_tokens
            uncached = len(tokens) - hit
            self.stats.requests += 1
            self.stats.prompt_tokens += len(tokens)
            self.stats.cached_tokens += hit
            self._insert(hashes[: hit // c.block_tokens])  # touch what was used
            self.pending_prefill_tokens += uncached
            try:
                async with self.prefill_lock:
                    await asyncio.sleep(uncached * c.prefill_s_per_token)
            finally:
                self.pending_prefill_tokens -= uncached
            self._insert(hashes)
            out: list[str] = []
            seed = hashes[-1] if hashes else hash(tuple(tokens))
            for i in range(max_tokens):
                await asyncio.sleep(c.decode_s * (1 + c.decode_batch_factor * (self.running - 1)))
                tok = f"w{(seed + i * 7919) % 997}"
                out.append(tok)
                self.stats.output_tokens += 1
                yield tok
            self._insert(block_hashes([*tokens, "<assistant>", *out], c.block_tokens))
        finally:
            self._release()


def sim_app(engine: Engine) -> Any:
    """The ASGI app of a simulated replica."""

    async def reply(send: Any, code: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    info = {"model_path": MODEL, "tokenizer_path": MODEL, "is_generation": True,
            "served_model_name": MODEL, "max_total_num_tokens": 1 << 20,
            "dp_size": 1, "tp_size": 1}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        path = scope["path"]
        if scope["method"] == "GET" or path in ("/flush_cache",):
            if path in ("/health", "/health_generate", "/readiness", "/liveness"):
                await reply(send, 200, {"ok": True})
            elif path == "/v1/models":
                await reply(send, 200, {"object": "list",
                                        "data": [{"id": MODEL, "object": "model"}]})
            elif path == "/sim/stats":
                st = engine.stats.as_dict()
                st.update(running=engine.running, waiting=len(engine.waiters),
                          cached_blocks=len(engine.cache), name=engine.name)
                await reply(send, 200, st)
            elif path in ("/get_server_info", "/server_info", "/get_model_info", "/model_info"):
                await reply(send, 200, info)
            elif path == "/get_load":
                await reply(send, 200, {"load": engine.running + len(engine.waiters),
                                        "num_reqs": engine.running + len(engine.waiters)})
            elif path == "/flush_cache":
                engine.cache.clear()
                await reply(send, 200, {"ok": True})
            else:
                await reply(send, 404, {"error": "not found"})
            return
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            await reply(send, 400, {"error": "invalid JSON"})
            return
        tokens = tokens_of(body)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens")
                         or body.get("max_new_tokens")
                         or (body.get("sampling_params") or {}).get("max_new_tokens") or 16)
        chat = "messages" in body
        created = int(time.time())
        if not body.get("stream"):
            async with contextlib.aclosing(engine.generate(tokens, max_tokens)) as gen:
                out = [t async for t in gen]
            text = " ".join(out)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat
                      else {"index": 0, "text": text, "finish_reason": "length"})
            await reply(send, 200, {"id": "sim", "object": "chat.completion", "model": MODEL,
                                    "created": created, "choices": [choice],
                                    "usage": {"prompt_tokens": len(tokens),
                                              "completion_tokens": len(out)}})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"),
                                (b"cache-control", b"no-cache")]})
        first = True
        async with contextlib.aclosing(engine.generate(tokens, max_tokens)) as gen:
            async for tok in gen:
                piece = tok if first else " " + tok
                first = False
                delta = ({"delta": {"content": piece}} if chat else {"text": piece})
                event = {"id": "sim", "model": MODEL, "created": created,
                         "choices": [{"index": 0, **delta, "finish_reason": None}]}
                await send({"type": "http.response.body",
                            "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                            "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def main() -> None:
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="sim")
    args = ap.parse_args()
    uvicorn.run(sim_app(Engine(args.name)), host="127.0.0.1", port=args.port,
                log_level="error", access_log=False)


if __name__ == "__main__":
    main()
