"""Routing that agrees across load balancers: the same prefix and the same session reach the same
replica from any of them, with no state shared between them (lb_agent/dataplane/rendezvous.py).

Each "load balancer" here is an independent policy (or Affinity) instance with its own Target
objects, its own random seed and the replica list in its own order; they see the same request
stream in different interleavings. Without the rendezvous anchor the same streams split prefixes
between replicas (the control case), so the agreement is the anchor's doing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from lb_agent.dataplane.affinity import Affinity, balance_bound
from lb_agent.dataplane.policies import prefix_aware
from lb_agent.dataplane.policies.prefix_aware import PrefixAwarePolicy, PromptKey
from lb_agent.dataplane.rendezvous import anchor_of, first_within, key_of, replica_hash, weight
from lb_agent.dataplane.target import Target

REPLICAS = [f"replica-{i}" for i in range(5)]
PREFIXES = [f"Few-shot examples, set {p}: " + f"example {p} answer {p}. " * 60 for p in range(8)]


def _body(prefix: int, question: int) -> bytes:
    return json.dumps({"model": "m", "stream": True, "messages": [
        {"role": "system", "content": PREFIXES[prefix]},
        {"role": "user", "content": f"question {question} about set {prefix}?"}]}).encode()


#: Every prefix asked 6 questions.
STREAM = [(p, q) for p in range(len(PREFIXES)) for q in range(6)]


class Balancer:
    """One load balancer: a policy of its own, its own Target objects in its own order."""

    def __init__(self, seed: int, **options: float) -> None:
        self.policy = PrefixAwarePolicy(**options)  # type: ignore[arg-type]
        self.policy.rng.seed(seed)
        ids = list(REPLICAS)
        random.Random(seed).shuffle(ids)
        self.targets = [Target(rid, f"http://127.0.0.1:{9000 + i}") for i, rid in enumerate(ids)]
        self.policy.on_targets_changed(self.targets)

    def route(self, prefix: int, question: int) -> str:
        """One request, routed and finished (as the proxy calls ``choose``, then
        ``release`` when the attempt ends)."""
        p = self.policy
        key = p.request_key("POST", "/v1/chat/completions", _body(prefix, question))
        chosen = p.choose(self.targets, key)
        assert chosen is not None
        p.release(chosen, key)
        return chosen.replica_id

    def set_loads(self, loads: dict[str, int]) -> None:
        for t in self.targets:
            t.in_flight = loads.get(t.replica_id, 0)


def _interleavings(seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    a, b = list(STREAM), list(STREAM)
    random.Random(seed).shuffle(a)
    random.Random(seed + 1).shuffle(b)
    return a, b


@pytest.mark.parametrize("seed", range(5))
def test_two_balancers_send_each_prefix_to_the_same_replica(seed: int) -> None:
    lb1, lb2 = Balancer(seed), Balancer(seed + 100)
    order1, order2 = _interleavings(seed)
    seen1 = {req: lb1.route(*req) for req in order1}
    seen2 = {req: lb2.route(*req) for req in order2}
    for p in range(len(PREFIXES)):
        where1 = {seen1[(p, q)] for q in range(6)}
        where2 = {seen2[(p, q)] for q in range(6)}
        # One replica per prefix on each balancer, and the same one on both.
        assert where1 == where2 and len(where1) == 1, (p, where1, where2)
    # The prefixes did not all land on one replica.
    assert len({seen1[(p, 0)] for p in range(len(PREFIXES))}) > 1


def test_without_the_anchor_the_same_streams_split_prefixes() -> None:
    """The control: least load with random ties picks a prefix's first replica by chance."""
    splits = 0
    for seed in range(5):
        lb1, lb2 = Balancer(seed, anchor_blocks=0), Balancer(seed + 100, anchor_blocks=0)
        order1, order2 = _interleavings(seed)
        seen1 = {req: lb1.route(*req) for req in order1}
        seen2 = {req: lb2.route(*req) for req in order2}
        splits += sum(seen1[(p, 0)] != seen2[(p, 0)] for p in range(len(PREFIXES)))
    assert splits > 0


def test_they_keep_agreeing_under_the_bound_and_overflow_alike() -> None:
    """Loaded alike (each balancer counts its own requests; here the same counts), a prefix
    stays on its replica while that is within the bound, and both move it to the same next
    replica when it is not."""
    lb1, lb2 = Balancer(1), Balancer(2)
    home = lb1.route(0, 0)
    assert lb2.route(0, 1) == home
    anchor = lb1.policy.request_key("POST", "/", _body(0, 4))
    assert isinstance(anchor, PromptKey)
    ranked = sorted(REPLICAS, key=lambda rid: weight(anchor.anchor, replica_hash(rid)))
    assert ranked[-1] == home
    # Busier than every other replica, by less than its matched prefix is worth: it stays.
    depth = len(anchor)
    worth = depth / lb1.policy.blocks_per_request
    assert worth > 2
    for lb in (lb1, lb2):
        lb.set_loads({home: 2})
    assert lb1.route(0, 2) == lb2.route(0, 3) == home
    # Busier by more than that (within the bound or over it): both move the prefix to the
    # same other replica, its next rendezvous choice, however their own histories differ.
    policy = lb1.policy
    for load in (int(worth) + 1, policy.balance_abs + 1):
        for lb in (lb1, lb2):
            lb.set_loads({home: load})
        assert lb1.route(0, 4) == lb2.route(0, 5) == ranked[-2], load
        assert (load <= balance_bound(0, policy.balance_abs, policy.balance_rel)) == (
            load < policy.balance_abs + 1)


def test_the_anchor_is_the_same_in_another_process() -> None:
    """Block hashes are seeded per process; the anchor and so the first choice are not."""
    script = (
        "import json, sys\n"
        "from tests.test_routing_agreement import Balancer, STREAM\n"
        "lb = Balancer(7)\n"
        "print(json.dumps([lb.route(p, q) for p, q in STREAM if q == 0]))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONHASHSEED="4242", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, check=True,
                         capture_output=True, text=True).stdout
    here = Balancer(8)
    assert json.loads(out) == [here.route(p, q) for p, q in STREAM if q == 0]


def test_the_anchor_covers_the_first_anchor_blocks_only() -> None:
    p = PrefixAwarePolicy(block_chars=64, anchor_blocks=4)
    key = p.request_key("POST", "/", _body(3, 1))
    other = p.request_key("POST", "/", _body(3, 10 ** 300))  # a question of its own blocks
    assert isinstance(key, PromptKey) and isinstance(other, PromptKey)
    assert key.anchor == other.anchor and key[:4] == other[:4] and key[-1] != other[-1]
    span = prefix_aware.prompt_span(_body(3, 1), 4 * 64)
    assert span is not None and key.anchor == anchor_of(span)
    assert p.request_key("POST", "/", _body(4, 1)).anchor != key.anchor  # type: ignore[union-attr]
    # A prompt shorter than the anchor has none: it is routed by load and history alone.
    short = p.request_key("POST", "/", b'{"prompt": "hi"}')
    assert isinstance(short, PromptKey) and short.anchor is None
    unanchored = PrefixAwarePolicy(anchor_blocks=0).request_key("POST", "/", _body(3, 1))
    assert isinstance(unanchored, PromptKey) and unanchored.anchor is None


def test_rendezvous_moves_only_the_keys_of_a_replica_that_leaves() -> None:
    everyone = [Target(rid, "http://127.0.0.1:1") for rid in REPLICAS]
    keys = [key_of(b"%d" % i) for i in range(300)]
    before = {k: everyone[first_within(everyone, k, 0)].replica_id for k in keys}
    fewer = everyone[1:]
    after = {k: fewer[first_within(fewer, k, 0)].replica_id for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == REPLICAS[0]}
    assert 0 < len(moved) < len(keys)  # the gone replica had some keys, not all


@pytest.mark.parametrize("seed", range(3))
def test_two_balancers_pin_a_session_to_the_same_replica(seed: int) -> None:
    sessions = [f"session-{i}" for i in range(40)]
    balancers = []
    for n in range(2):
        ids = list(REPLICAS)
        random.Random(seed * 10 + n).shuffle(ids)
        balancers.append((Affinity(1000, 2, 0.5),
                          [Target(rid, f"http://127.0.0.1:{9000 + i}") for i, rid in
                           enumerate(ids)]))
    order = [sessions, list(reversed(sessions))]
    picks: list[dict[str, str]] = [{}, {}]
    for n, (affinity, targets) in enumerate(balancers):
        for s in order[n]:
            chosen = affinity.pick(s, targets)
            assert chosen is not None
            picks[n][s] = chosen.replica_id
    assert picks[0] == picks[1]
    assert len(set(picks[0].values())) > 1
    # The same replica overloaded on both: each moves the session to the same other replica.
    s = sessions[0]
    for _affinity, targets in balancers:
        for t in targets:
            t.in_flight = 3 if t.replica_id == picks[0][s] else 0
    moved = [affinity.pick(s, targets) for affinity, targets in balancers]
    assert moved[0] is not None and moved[1] is not None
    assert moved[0].replica_id == moved[1].replica_id != picks[0][s]
