"""Request-aware routing through the real proxy: prefix_aware against uvicorn replicas."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import httpx
from agent_helpers import (
    Replica,
    agent_config,
    free_port,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)

from lb_agent.dataplane.affinity import (
    DIGEST_BYTES,
    MAX_SESSION_BYTES,
    Affinity,
    session_key,
)
from lb_agent.dataplane.policies.prefix_aware import PrefixAwarePolicy
from lb_agent.dataplane.rendezvous import first_within
from lb_agent.dataplane.target import Target


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


async def test_prefix_aware_is_paid_back_and_learns_after_a_failed_attempt_too(
    tmp_path: Any,
) -> None:
    """The proxy calls the policy's release after every attempt: the owed prefill charged to
    a replica that refused the connection is paid back (it learns nothing), and the replica
    that answered the retry is charged, paid back and learns the prompt."""
    reps = [await Replica(n).start() for n in "ab"]
    try:
        cfg = agent_config(tmp_path, [r.url for r in reps], policy="prefix_aware")
        async with running_agent(cfg) as agent:
            await agent.wait_ready(2)
            policy = agent.runtime.policy
            assert isinstance(policy, PrefixAwarePolicy)
            targets = dict(agent.runtime.targets)
            dead = next(rid for rid, t in targets.items() if t.url == reps[0].url)
            live = next(rid for rid in targets if rid != dead)
            # Its connections are refused (the prober still finds the replica itself up).
            targets[dead].port = free_port()
            body = json.dumps(_chat(7, 2)).encode()
            key = policy.request_key("POST", "/v1/chat/completions", body)
            assert key is not None
            # The stopped replica holds all but the last 2 blocks: it is tried first.
            policy.record(list(key)[:-2], dead)
            released: list[tuple[str, int]] = []
            release = policy.release

            def spy(target: Target, k: Any) -> None:
                released.append((target.replica_id, target.owed))
                release(target, k)

            policy.release = spy  # type: ignore[method-assign]
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                r = await client.post("/v1/chat/completions", content=body,
                                      headers={"content-type": "application/json"})
            assert r.status_code == 200 and r.json()["replica"] == "b"
            # Each attempt released, with what it was charged: 2 blocks there, all here.
            assert released == [(dead, 2), (live, len(key))]
            assert targets[dead].owed == 0 and targets[live].owed == 0
            assert live in policy.holders(key[-1]) and dead not in policy.holders(key[-1])
    finally:
        for r in reps:
            await r.stop()


def test_affinity_unit_pins_moves_when_overloaded_and_is_bounded() -> None:
    a = Affinity(max_sessions=2, balance_abs=2, balance_rel=0.5)
    ts = [Target(f"r{i}", f"http://10.0.0.{i}:80") for i in range(2)]
    # An unknown session goes to its rendezvous replica, and is pinned there.
    first = a.pick("s1", ts)
    assert first is ts[first_within(ts, int.from_bytes(session_key("s1")[:8], "little"), 0)]
    assert a.pins[session_key("s1")] == first.replica_id and a.moved == 0
    a.pin("s1", ts[1])
    assert a.pick("s1", ts) is ts[1]
    ts[1].in_flight = 2  # 2 - 0 <= max(2, 0): not overloaded
    assert a.pick("s1", ts) is ts[1]
    ts[1].in_flight = 3  # overloaded: the only replica within the bound, pinned anew
    assert a.pick("s1", ts) is ts[0] and a.moved == 1
    assert a.pins[session_key("s1")] == "r0"
    ts[1].in_flight = 0
    a.pin("s1", ts[1])
    assert a.pick("s1", [ts[0]]) is ts[0] and a.moved == 2  # the pinned one is not routable
    a.pin("s2", ts[0])
    a.pin("s3", ts[0])  # the least recently used pin (s1) goes
    assert list(a.pins) == [session_key("s2"), session_key("s3")]
    assert a.pick("x" * (MAX_SESSION_BYTES + 1), ts) is None  # too long: the policy decides


def test_affinity_keeps_a_fixed_size_key_whatever_the_session_value() -> None:
    # A client choosing 16 KB session values must not grow a pin beyond a fixed size: count
    # the bytes the pins hold for 2,000 distinct long values of each kind.
    a = Affinity(max_sessions=100_000, balance_abs=2, balance_rel=0.5)
    t = Target("r0", "http://10.0.0.1:80")
    longest = [f"{i:05d}".encode() + b"x" * (MAX_SESSION_BYTES - 5) for i in range(2000)]
    huge = [f"{i:05d}".encode() + b"y" * 16 * 1024 for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for v in huge:
            a.pin(v, t)  # too long to pin: routed by the policy, nothing stored
        for v in longest:
            a.pin(v, t)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(a.pins) == len(longest)
    assert {len(k) for k in a.pins} == {DIGEST_BYTES}
    assert all(v is t.replica_id for v in a.pins.values())
    # A 16-byte key plus its dict entry: far below one value (2,000 x 16 KB would be 32 MB).
    assert held / len(longest) < 200, held
    assert a.pick(huge[1], [t]) is None
    assert a.pick(longest[1], [t]) is t


async def test_session_header_keeps_a_session_on_one_ready_replica(tmp_path: Any) -> None:
    reps = [await Replica(n).start() for n in "abc"]
    try:
        cfg = agent_config(tmp_path, [r.url for r in reps], policy="round_robin")
        async with running_agent(cfg) as agent:
            await agent.wait_ready(3)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
                async def who(session: str | None) -> str:
                    hdrs = {"X-Session-Id": session} if session else {}
                    r = await client.get("/", headers=hdrs)
                    assert r.status_code == 200
                    return str(r.json()["replica"])

                # Without the header round robin spreads; with it, one replica per session.
                assert len({await who(None) for _ in range(6)}) == 3
                first = await who("alice")
                assert {await who("alice") for _ in range(8)} == {first}
                # The session's replica stops being READY: the session moves, then stays.
                pinned = next(r for r in reps if r.state.name == first)
                pinned.state.healthy = False
                rid = f"static-{reps.index(pinned)}"
                for _ in range(200):
                    if all(t.replica_id != rid for t in agent.runtime.routable):
                        break
                    await asyncio.sleep(0.05)
                moved = await who("alice")
                assert moved != first
                assert {await who("alice") for _ in range(5)} == {moved}
                # Overloaded (more in flight than the idle replica plus the bound's
                # prefix_balance_abs): another replica.
                target = agent.runtime.targets[
                    f"static-{[r.state.name for r in reps].index(moved)}"]
                extra = agent.config.routing.prefix_balance_abs + 1
                target.in_flight += extra  # as if that many more requests were running there
                try:
                    assert await who("alice") not in (moved, first)
                finally:
                    target.in_flight -= extra
            assert agent.runtime.affinity is not None and agent.runtime.affinity.moved == 2
    finally:
        for r in reps:
            await r.stop()
