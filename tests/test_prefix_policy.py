"""The prefix_aware policy's choices on constructed routing histories (no network)."""

from __future__ import annotations

import json
from typing import Any

from lb_agent.config import AgentConfig
from lb_agent.policies import build_policy, policy_names
from lb_agent.policies.prefix_aware import PrefixAwarePolicy, block_hashes, prompt_text
from lb_agent.target import Target

SYSTEM = "You are a helpful assistant. " * 20  # 580 characters: 9 blocks of 64


def _targets(*loads: int) -> list[Target]:
    out = []
    for i, load in enumerate(loads):
        t = Target(f"r{i}", f"http://10.0.0.{i}:8080")
        t.in_flight = load
        out.append(t)
    return out


def _chat(*turns: str) -> bytes:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
             for i, t in enumerate(turns)]
    return json.dumps({"model": "m", "messages": msgs, "stream": True}).encode()


def _route(p: PrefixAwarePolicy, ts: list[Target], body: bytes) -> Target:
    t = p.choose(ts, p.request_key("POST", "/v1/chat/completions", body))
    assert t is not None
    return t


def test_registered_and_selectable_in_the_config() -> None:
    assert "prefix_aware" in policy_names()
    cfg = AgentConfig.from_dict({"policy": "prefix_aware", "token": "t" * 16,
                                 "routing": {"prefix_balance_abs": 7}})
    assert cfg.policy == "prefix_aware"
    p = build_policy(cfg.policy, **cfg.routing.policy_options())
    assert isinstance(p, PrefixAwarePolicy) and p.balance_abs == 7
    # The other policies ignore the routing options.
    assert build_policy("least_load", **cfg.routing.policy_options()).name == "least_load"


def test_prompt_text_covers_chat_completions_and_generate_bodies() -> None:
    chat = prompt_text(_chat("hi"), 10_000)
    assert chat is not None and chat.startswith("system\x1f" + SYSTEM) and chat.endswith("hi\x1e")
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"},
                                                      {"type": "text", "text": "cd"}]}]}
    assert prompt_text(json.dumps(parts).encode(), 100) == "user\x1fabcd\x1e"
    assert prompt_text(b'{"prompt": "once upon a time"}', 100) == "once upon a time"
    assert prompt_text(b'{"prompt": ["first", "second"]}', 100) == "first"
    assert prompt_text(b'{"text": "sglang"}', 100) == "sglang"
    assert prompt_text(b'{"inputs": "tgi", "parameters": {}}', 100) == "tgi"
    assert prompt_text(b'{"prompt": "' + b"x" * 500 + b'"}', 64) == "x" * 64  # bounded
    for other in (b"", b"not json", b"[1, 2]", b'{"input": 3}', b'{"prompt": 5}'):
        assert prompt_text(other, 100) is None


def test_requests_without_a_prompt_go_by_least_load() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(3, 0, 2)
    assert p.request_key("GET", "/v1/models", None) is None
    assert p.request_key("POST", "/v1/chat/completions", None) is None  # body not held
    assert p.request_key("POST", "/upload", b"\x00\x01") is None
    assert p.choose(ts, None) is ts[1]
    assert not p.entries  # nothing learnt


def test_longest_matching_prefix_wins() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(0, 0, 0)
    # r0 served a long conversation, r1 only the system prompt plus another question.
    p.record(p.request_key("POST", "/", _chat("q1 " * 40, "a1 " * 40)), "r0")
    p.record(p.request_key("POST", "/", _chat("other " * 30)), "r1")
    ts[0].in_flight = 2  # busier, but within the balance slack (4)
    assert _route(p, ts, _chat("q1 " * 40, "a1 " * 40, "q2")) is ts[0]
    # Only the shared system prompt matches: r1 and r0 hold it, the less loaded r1 wins.
    assert _route(p, ts, _chat("brand new " * 20)) is ts[1]
    assert p.matched == 2


def test_imbalance_falls_back_to_least_load_and_learns_there() -> None:
    p = PrefixAwarePolicy(balance_abs=4, balance_rel=0.5)
    ts = _targets(0, 0)
    body = _chat("q " * 100)
    p.record(p.request_key("POST", "/", body), "r0")
    ts[0].in_flight, ts[1].in_flight = 4, 0  # 4 - 0 <= max(4, 0): still the match
    assert _route(p, ts, body) is ts[0]
    ts[0].in_flight = 5  # 5 - 0 > 4: too unbalanced
    assert _route(p, ts, body) is ts[1]
    assert p.fallbacks == 1
    # Both replicas hold the prefix now (r1 learnt it on the fallback): the less loaded one.
    ts[0].in_flight, ts[1].in_flight = 20, 30
    assert _route(p, ts, body) is ts[0]
    # The relative part: with the minimum at 10 the slack is max(4, 0.5 * 10) = 5.
    only_r0 = _chat("z " * 100)
    p.record(p.request_key("POST", "/", only_r0), "r0")
    ts[0].in_flight, ts[1].in_flight = 15, 10
    assert _route(p, ts, only_r0) is ts[0]
    ts[0].in_flight = 16
    assert _route(p, ts, only_r0) is ts[1]


def test_memory_is_bounded_and_least_recently_used_blocks_go_first() -> None:
    p = PrefixAwarePolicy(block_chars=8, max_entries=10)
    ts = _targets(0, 0)
    old = b'{"prompt": "' + b"a" * 40 + b'"}'  # 5 blocks
    p.choose([ts[0]], p.request_key("POST", "/", old))
    assert len(p.entries) == 5
    for i in range(3):  # 3 x 3 new blocks push the oldest out
        p.choose([ts[1]], p.request_key("POST", "/", b'{"prompt": "%d' % i + b"b" * 23 + b'"}'))
        assert len(p.entries) <= 10
    assert len(p.entries) == 10
    ts[1].in_flight = 3
    # Only the first blocks of "aaaa..." were evicted; the deepest ones remain and still match.
    assert _route(p, ts, old) is ts[0]
    # A prompt whose blocks were all evicted matches nothing: least load.
    p2 = PrefixAwarePolicy(block_chars=8, max_entries=4)
    p2.choose([ts[0]], p2.request_key("POST", "/", old))
    p2.choose([ts[1]], p2.request_key("POST", "/", b'{"prompt": "' + b"c" * 32 + b'"}'))
    assert all(ids == {"r1"} for ids in p2.entries.values())


def test_a_replica_that_leaves_is_forgotten() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(0, 0)
    p.on_targets_changed(ts)
    body = _chat("long question " * 30)
    p.record(p.request_key("POST", "/", body), "r0")
    p.record(p.request_key("POST", "/", _chat("x " * 100)), "r1")
    p.on_targets_changed([ts[1]])  # r0 left
    assert all("r0" not in ids for ids in p.entries.values())
    assert any("r1" in ids for ids in p.entries.values())
    # If a new replica reuses the id, it does not inherit the old cache.
    fresh = Target("r0", "http://10.0.0.9:8080")
    ts[1].in_flight = 2  # busier, but it holds the system prompt; the new r0 holds nothing
    p.on_targets_changed([fresh, ts[1]])
    assert _route(p, [fresh, ts[1]], body) is ts[1]


def test_block_hashes_are_chained() -> None:
    a = block_hashes("x" * 64 + "y" * 64, 64)
    b = block_hashes("x" * 64 + "z" * 64, 64)
    c = block_hashes("w" * 64 + "y" * 64, 64)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    assert a[1] != c[1]  # the same block after a different prefix is a different block
    assert block_hashes("short", 64) != [] and block_hashes("", 64) == []
