"""The prefix_aware policy's choices on constructed routing histories (no network)."""

from __future__ import annotations

import json
from typing import Any

from lb_agent.config import AgentConfig
from lb_agent.dataplane.policies import build_policy, policy_names
from lb_agent.dataplane.policies.prefix_aware import PrefixAwarePolicy, block_hashes, prompt_span
from lb_agent.dataplane.target import Target

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


def _serve(p: PrefixAwarePolicy, ts: list[Target], key: Any) -> Target:
    """One request routed and finished, as the proxy does it: ``choose``, then ``release``
    when the attempt ends."""
    t = p.choose(ts, key)
    assert t is not None
    p.release(t, key)
    return t


def _route(p: PrefixAwarePolicy, ts: list[Target], body: bytes) -> Target:
    return _serve(p, ts, p.request_key("POST", "/v1/chat/completions", body))


def test_registered_and_selectable_in_the_config() -> None:
    assert "prefix_aware" in policy_names()
    cfg = AgentConfig.from_dict({"policy": "prefix_aware", "token": "t" * 16,
                                 "routing": {"prefix_balance_abs": 7}})
    assert cfg.policy == "prefix_aware"
    p = build_policy(cfg.policy, **cfg.routing.policy_options())
    assert isinstance(p, PrefixAwarePolicy) and p.balance_abs == 7
    # The other policies ignore the routing options.
    assert build_policy("least_load", **cfg.routing.policy_options()).name == "least_load"


def test_prompt_span_covers_chat_completions_and_generate_bodies() -> None:
    chat = prompt_span(_chat("hi"), 10_000)
    assert chat is not None and chat.startswith(b'"messages": [{"role": "system"')
    assert SYSTEM.encode() in chat and b'"hi"' in chat
    # The model name before the messages does not split conversations.
    assert prompt_span(b'{"model": "x", "messages": [1]}', 100) == b'"messages": [1]}'
    assert prompt_span(b'{"prompt": "once upon a time"}', 100) == b'"prompt": "once upon a time"}'
    assert prompt_span(b'{"text": "sglang"}', 100) == b'"text": "sglang"}'
    assert prompt_span(b' {"inputs": "tgi", "parameters": {}}', 9) == b'"inputs":'
    # A key quoted inside a string value is escaped, so it is not taken for the key.
    assert prompt_span(b'{"input": "say \\"prompt\\" twice"}', 100) is None
    assert prompt_span(b'{"prompt": "' + b"x" * 500 + b'"}', 64) == b'"prompt": "' + b"x" * 53
    for other in (b"", b"not json", b"[1, 2]", b'{"input": 3}'):
        assert prompt_span(other, 100) is None


def test_requests_without_a_prompt_go_by_least_load() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(3, 0, 2)
    assert p.request_key("GET", "/v1/models", None) is None
    assert p.request_key("POST", "/v1/chat/completions", None) is None  # body not held
    assert p.request_key("POST", "/upload", b"\x00\x01") is None
    assert p.choose(ts, None) is ts[1]
    assert not p.entries  # nothing learnt


def _depth(p: PrefixAwarePolicy, key: list[int], rid: str) -> int:
    """How many leading blocks of ``key`` the policy remembers ``rid`` serving."""
    return max((d for d in range(1, len(key) + 1) if rid in p.holders(key[d - 1])), default=0)


def test_longest_matching_prefix_wins_at_equal_load() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(0, 0, 0)
    # r0 served a long conversation, r1 only the system prompt plus another question.
    p.record(p.request_key("POST", "/", _chat("q1 " * 40, "a1 " * 40)), "r0")
    p.record(p.request_key("POST", "/", _chat("other " * 30)), "r1")
    assert _route(p, ts, _chat("q1 " * 40, "a1 " * 40, "q2")) is ts[0]
    # Only the shared system prompt matches: r1 and r0 hold it, the less loaded r1 wins.
    ts[0].in_flight = 1
    assert _route(p, ts, _chat("brand new " * 20)) is ts[1]
    assert p.matched == 2 and p.fallbacks == 0


def test_a_deeper_match_outweighs_load_by_blocks_per_request() -> None:
    """Score: in flight minus matched depth / blocks_per_request. r0 holds the conversation,
    r1 its system prompt only, r2 nothing: r0's extra depth is worth 1.5 requests."""
    history = _chat("q1 " * 40, "a1 " * 40)
    body = _chat("q1 " * 40, "a1 " * 40, "q2")

    def route(loads: tuple[int, int, int]) -> str:
        p = PrefixAwarePolicy(blocks_per_request=1.0)
        p.record(p.request_key("POST", "/", history), "r0")
        p.record(p.request_key("POST", "/", _chat("other " * 30)), "r1")
        key = p.request_key("POST", "/", body)
        deep, shallow = _depth(p, key, "r0"), _depth(p, key, "r1")
        # r1's credit (shallow / blocks_per_request) is worth more than one request.
        assert deep >= shallow + 2 and 1.5 * shallow > deep - shallow
        assert _depth(p, key, "r2") == 0
        p.blocks_per_request = (deep - shallow) / 1.5
        p.balance_abs = 10  # the bound out of the way
        ts = _targets(*loads)
        return _route(p, ts, body).replica_id

    assert route((1, 0, 0)) == "r0"  # one request more is worth the deeper match
    assert route((2, 0, 0)) == "r1"  # two are not: the system prompt's holder beats r2
    assert route((2, 1, 0)) == "r0"
    assert route((5, 1, 0)) == "r1"  # r1's system prompt outweighs its one request against r2


def test_imbalance_falls_back_to_least_load_and_learns_there() -> None:
    # A match worth any load difference: only the balance bound limits it.
    p = PrefixAwarePolicy(balance_abs=4, balance_rel=0.5, blocks_per_request=0.01)
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


def test_memory_is_bounded_and_blocks_unused_longest_go_first() -> None:
    """Two generations of max_entries / 2 blocks: a block used within the last generation is
    kept, one unused while max_entries new blocks arrived is gone."""
    p = PrefixAwarePolicy(block_chars=8, max_entries=40, blocks_per_request=1.0, anchor_blocks=0)
    ts = _targets(0, 0)
    old = b'{"prompt": "' + b"a" * 45 + b'"}'
    key_old = p.request_key("POST", "/", old)
    assert len(key_old) == 7  # 58 bytes from the key on: 7 whole blocks
    _serve(p, [ts[0]], key_old)
    # Each filler: the first block ('"prompt"') shared with the old prompt, 3 blocks of its own.
    fillers = [b'{"prompt": "%02d' % i + b"b" * 17 + b'"}' for i in range(40)]
    for body in fillers[:5]:  # 15 new blocks: the young generation (20) turned over once
        _serve(p, [ts[1]], p.request_key("POST", "/", body))
        assert len(p.entries) <= 40
    assert all(h in p.entries for h in key_old)
    ts[0].in_flight = 2  # 7 blocks matched outweigh 2 requests in flight
    assert _route(p, ts, old) is ts[0]  # and the old prompt is young again
    for body in fillers[5:]:  # 105 new blocks
        _serve(p, [ts[1]], p.request_key("POST", "/", body))
        assert len(p.entries) <= 40
    assert not any(h in p.entries for h in key_old[1:])
    assert key_old[0] in p.entries  # every filler used the shared first block: it stays
    # Only that block matches, and both replicas hold it: the less loaded one, r1.
    assert _route(p, ts, old) is ts[1]


def test_a_replica_that_leaves_is_forgotten() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(0, 0)
    p.on_targets_changed(ts)
    body = _chat("long question " * 30)
    p.record(p.request_key("POST", "/", body), "r0")
    p.record(p.request_key("POST", "/", _chat("x " * 100)), "r1")
    p.on_targets_changed([ts[1]])  # r0 left
    assert all("r0" not in p.holders(h) for h in p.entries)
    assert any("r1" in p.holders(h) for h in p.entries)
    # Blocks only r0 held are gone; the shared system prompt stays, with r1 alone.
    key = p.request_key("POST", "/", body)
    assert key[-1] not in p.entries and p.holders(key[0]) == {"r1"}
    # If a new replica reuses the id, it does not inherit the old cache.
    fresh = Target("r0", "http://10.0.0.9:8080")
    # At equal load r1 wins on the system prompt it holds; the new r0 holds nothing.
    p.on_targets_changed([fresh, ts[1]])
    assert _route(p, [fresh, ts[1]], body) is ts[1]


def test_block_hashes_are_chained() -> None:
    a = block_hashes(b"x" * 64 + b"y" * 64, 64)
    b = block_hashes(b"x" * 64 + b"z" * 64, 64)
    c = block_hashes(b"w" * 64 + b"y" * 64, 64)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    assert a[1] != c[1]  # the same block after a different prefix is a different block
    assert block_hashes(b"short", 64) != [] and block_hashes(b"", 64) == []


def test_quick_mode_and_the_service_yaml_select_prefix_aware() -> None:
    from lb_agent.cli import quick_config

    d = quick_config("http://127.0.0.1:9", 8000, "127.0.0.1", None, "127.0.0.1",
                     "prefix_aware", None, None, None)
    assert AgentConfig.from_dict(d).policy == "prefix_aware"
    spec = {"service_spec": {"load_balancing_policy": "prefix_aware"}}
    assert AgentConfig.from_dict({"token": "t" * 16, "service": spec}).policy == "prefix_aware"


def test_without_a_match_the_choice_is_least_loads() -> None:
    """A prompt no replica served goes where least_load would send it: the least-loaded
    replica, a uniformly random one among ties (no bias towards the first)."""
    p = PrefixAwarePolicy()
    p.record(p.request_key("POST", "/", b'{"prompt": "an old prompt of r0"}'), "r0")
    ts = _targets(2, 1, 1, 5)
    picks = [_serve(p, ts, p.request_key("POST", "/", b'{"prompt": "%d unseen words"}' % i))
             for i in range(200)]
    assert {t.replica_id for t in picks if t is not None} == {"r1", "r2"}
    assert 60 <= sum(1 for t in picks if t is ts[1]) <= 140
    assert p.matched == 0 and p.fallbacks == 0


def test_a_new_replica_reuses_a_freed_bit_without_the_old_prefixes() -> None:
    p = PrefixAwarePolicy()
    ts = _targets(0, 0)
    p.on_targets_changed(ts)
    body = _chat("only r0 saw this " * 20)
    p.record(p.request_key("POST", "/", body), "r0")
    p.on_targets_changed([ts[1]])  # r0 leaves; its bit is free
    newcomer = Target("r9", "http://10.0.0.9:8080")
    p.on_targets_changed([ts[1], newcomer])
    p.record(p.request_key("POST", "/", _chat("x")), "r9")  # r9 takes the freed bit
    key = p.request_key("POST", "/", body)
    assert p.holders(key[-1]) == set()
    newcomer.in_flight = 0
    ts[1].in_flight = 1
    # Only the system prompt is known (held by r9 now): r9, not a ghost of r0's prompt.
    assert _route(p, [ts[1], newcomer], body) is newcomer
    assert p.holders(key[0]) == {"r9"}


def test_depths_match_a_full_scan_through_evictions_and_departures() -> None:
    """_depths walks only part of the key (what a replica holds is prefix-closed); on random
    histories with evictions and a replica leaving it agrees with a scan of every block, and
    after each choice the chosen replica holds every block of the prompt."""
    import random

    rng = random.Random(7)
    p = PrefixAwarePolicy(block_chars=16, max_entries=60, blocks_per_request=2.0)
    ts = _targets(0, 0, 0, 0)
    p.on_targets_changed(ts)
    stems = [b'{"prompt": "' + bytes(rng.choice(b"abcd") for _ in range(40)) for _ in range(5)]
    for step in range(600):
        body = rng.choice(stems) + bytes(rng.choice(b"xyz") for _ in range(rng.randint(0, 60)))
        key = p.request_key("POST", "/", body + b'"}')
        assert key
        live = ts if step < 300 else ts[1:]  # r0 leaves half-way
        if step == 300:
            p.on_targets_changed(live)
        for t in live:
            t.in_flight = rng.randint(0, 3)
        depths = p._depths(live, key)
        for t in live:
            bit = p._bits.get(t.replica_id, 0)
            assert depths.get(bit, (0, False))[0] == _depth(p, key, t.replica_id)
        chosen = _serve(p, live, key)
        assert all(chosen.replica_id in p.holders(h) for h in key)
        assert len(p.entries) <= 60
    assert not any("r0" in p.holders(h) for h in p.entries)
