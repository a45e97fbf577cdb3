"""Request-aware routing through the real proxy: prefix_aware against uvicorn replicas."""

from __future__ import annotations

import json
from typing import Any

import httpx
from agent_helpers import (
    Replica,
    agent_config,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)

from lb_agent.policies.prefix_aware import PrefixAwarePolicy


def _chat(session: int, turns: int) -> dict[str, Any]:
    msgs = [{"role": "system", "content": f"session {session} instructions " * 10}]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"question {t} " * 20})
        msgs.append({"role": "assistant", "content": f"answer {t} " * 20})
    msgs.append({"role": "user", "content": "and now?"})
    return {"model": "m", "messages": msgs}


async def test_prefix_aware_keeps_each_conversation_on_the_replica_that_served_it(
    tmp_path: Any,
) -> None:
    reps = [await Replica(n).start() for n in "abc"]
    try:
        cfg = agent_config(tmp_path, [r.url for r in reps], policy="prefix_aware")
        async with running_agent(cfg) as agent:
            await agent.wait_ready(3)
            assert isinstance(agent.runtime.policy, PrefixAwarePolicy)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                seen: dict[int, set[str]] = {s: set() for s in range(6)}
                for turn in range(4):
                    for s in range(6):
                        r = await client.post("/v1/chat/completions", json=_chat(s, turn))
                        assert r.status_code == 200
                        seen[s].add(r.json()["replica"])
                # Requests without a prompt still go through (least load).
                assert (await client.get("/v1/models")).status_code == 200
                # The body reached the replica unchanged.
                body = json.dumps(_chat(0, 1)).encode()
                r = await client.post("/v1/chat/completions", content=body)
                assert r.json()["size"] == len(body)
            # Every session stayed on one replica for all 4 turns.
            assert all(len(v) == 1 for v in seen.values()), seen
            assert agent.runtime.policy.matched >= 6 * 3
    finally:
        for r in reps:
            await r.stop()
