"""The replica simulator of bench/route_bench.py: cache hits, LRU eviction, batch and queue."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import uvicorn
from agent_helpers import free_port

from lb_agent.testing.llm_sim import Engine, SimConfig, sim_app

FAST = SimConfig(prefill_s_per_token=0.0, decode_s=0.001)


@contextlib.asynccontextmanager
async def _serve(engine: Engine) -> Any:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(sim_app(engine), host="127.0.0.1", port=port,
                                           log_level="error", lifespan="off"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            yield c
    finally:
        server.should_exit = True
        await task


def _chat(system: str, question: str, stream: bool = True) -> dict[str, Any]:
    return {"model": "sim-llm", "stream": stream, "max_tokens": 5,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": question}]}


async def test_a_shared_prefix_hits_the_cache_and_streams_openai_events() -> None:
    engine = Engine("a", FAST)
    system = " ".join(f"s{i}" for i in range(63))  # 64 tokens with <system>: 4 blocks
    async with _serve(engine) as c:
        r = await c.post("/v1/chat/completions", json=_chat(system, "first question"))
        events = [line for line in r.text.split("\n") if line.startswith("data: ")]
        assert r.headers["content-type"] == "text/event-stream"
        assert len(events) == 6 and events[-1] == "data: [DONE]"
        r = await c.post("/v1/chat/completions", json=_chat(system, "second one", False))
        assert r.json()["usage"] == {"prompt_tokens": 67, "completion_tokens": 5}
        stats = (await c.get("/sim/stats")).json()
        assert stats["requests"] == 2 and stats["prompt_tokens"] == 67 + 67
        assert stats["cached_tokens"] == 64  # the 4 system blocks, second time only
        assert abs(stats["hit_rate"] - 64 / 134) < 1e-9
        # A next turn (the question and its answer in the prompt) hits the answer too.
        body = _chat(system, " ".join(f"q{i}" for i in range(30)), False)
        answer = (await c.post("/v1/chat/completions", json=body)).json()
        body["messages"] += [answer["choices"][0]["message"],
                             {"role": "user", "content": "and then?"}]
        await c.post("/v1/chat/completions", json=body)
        after = (await c.get("/sim/stats")).json()
    # Turn 1 is 95 tokens, plus <assistant> and 5 answer tokens: 6 whole blocks cached.
    assert after["cached_tokens"] - stats["cached_tokens"] == 64 + 96


async def test_lru_eviction_forgets_the_oldest_prefix() -> None:
    engine = Engine("a", SimConfig(prefill_s_per_token=0.0, decode_s=0.0, cache_blocks=4))
    a = " ".join(f"a{i}" for i in range(64))
    b = " ".join(f"b{i}" for i in range(64))
    async with _serve(engine) as c:
        for prompt in (a, b, a):
            r = await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
            assert r.status_code == 200
        stats = (await c.get("/sim/stats")).json()
    assert stats["cached_tokens"] == 0  # b evicted a, then a evicted b
    assert stats["evicted_blocks"] >= 8 and stats["cached_blocks"] == 4


async def test_max_batch_queues_the_rest_in_order() -> None:
    engine = Engine("a", SimConfig(prefill_s_per_token=0.0, decode_s=0.01, max_batch=2))
    async with _serve(engine) as c:
        async def one(i: int) -> None:
            await c.post("/generate", json={"text": f"p{i}", "max_new_tokens": 5})

        await asyncio.gather(*(one(i) for i in range(6)))
        stats = (await c.get("/sim/stats")).json()
        load = (await c.get("/get_load")).json()
    assert stats["max_waiting"] == 4 and stats["requests"] == 6
    assert load["load"] == 0 and stats["running"] == 0
