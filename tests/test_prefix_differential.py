"""prefix_aware with its C helper against prefix_aware in pure Python, end to end.

Where no C compiler was available at install, prefix_aware runs wholly in Python: its own
keying (``prompt_span`` + ``block_hashes``, Python's hash) and its own scan. That module is
loaded here a second time with the C helper hidden, exactly as such an install imports it,
and both run side by side on random request bodies (chat, completions, other keys, not JSON,
not POST), random loads, replicas leaving and joining, and small memories that evict. The
hash values differ by design (the C helper has its own hash and seed); the choices may not:
the same request gets a key from both or from neither, of the same length, and both pick the
same replica with the same counters and the same amount of memory.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb_agent.dataplane import policies as policies_package
from lb_agent.dataplane.policies import base as policy_base
from lb_agent.dataplane.policies import prefix_aware
from lb_agent.dataplane.target import Target

NATIVE_NAME = "lb_agent.dataplane.policies._prefix_native"


def _pure_python_module() -> ModuleType:
    """prefix_aware.py imported again as if the C helper had never been built."""
    saved_policy = policy_base._POLICIES["prefix_aware"]  # the copy registers itself too
    saved_module = sys.modules.get(NATIVE_NAME)
    saved_attr = policies_package.__dict__.pop("_prefix_native", None)
    sys.modules[NATIVE_NAME] = None  # type: ignore[assignment]  # its import fails
    try:
        spec = importlib.util.spec_from_file_location("prefix_aware_pure_python",
                                                      prefix_aware.__file__)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved_module is not None:
            sys.modules[NATIVE_NAME] = saved_module
        else:
            del sys.modules[NATIVE_NAME]
        if saved_attr is not None:
            policies_package._prefix_native = saved_attr  # type: ignore[attr-defined]
        policy_base._POLICIES["prefix_aware"] = saved_policy
    return module


PURE = _pure_python_module()


def test_the_two_paths_are_what_they_claim() -> None:
    assert prefix_aware.NATIVE, "the C helper is not built here (see test_prefix_native.py)"
    assert not PURE.NATIVE and PURE._native_prompt_key is None
    assert PURE.PrefixAwarePolicy._native_choose is None
    assert PURE.PrefixAwarePolicy._native_release is None
    assert prefix_aware.PrefixAwarePolicy._native_choose is not None
    assert prefix_aware.PrefixAwarePolicy._native_release is not None


# -- random requests ---------------------------------------------------------------------------
#: A few shared openings, so that prompts share prefixes of many lengths.
SYSTEM = ["You are a helpful assistant.", "Answer in French. " * 8, "x" * 300, ""]
WORDS = st.sampled_from(["hello", "how", "are", "you", "?", "data", "é", "\\n", '"', "tok"])
TEXT = st.lists(WORDS, max_size=40).map(" ".join)


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["chat", "chat", "chat", "prompt", "text", "inputs", "raw",
                                 "none"]))
    if kind == "none":
        return None
    if kind == "raw":  # not JSON, a JSON list, or a key only inside a string
        return draw(st.sampled_from([b"", b"[1, 2]", b"plain text", b'{"model": "m"}',
                                     b'{"model": "\\"messages\\""}', b"  \n{\"prompt\": 1}"]))
    system = draw(st.sampled_from(SYSTEM))
    if kind == "chat":
        turns = draw(st.lists(TEXT, min_size=1, max_size=4))
        messages = [{"role": "system", "content": system}] + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate(turns)]
        doc: dict[str, Any] = {"model": "m", "messages": messages,
                               "stream": draw(st.booleans())}
    else:
        doc = {"model": "m", kind: system + draw(TEXT)}
    lead = draw(st.sampled_from([b"", b" ", b"\n\t"]))
    return lead + json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


steps = st.lists(
    st.tuples(
        st.sampled_from(["POST", "POST", "POST", "GET"]),
        bodies(),
        st.lists(st.integers(0, 6), min_size=8, max_size=8),  # in-flight per replica slot
        st.sampled_from(["stay", "stay", "stay", "stay", "leave", "join"]),
        st.integers(0, 3),  # how many of the oldest requests in flight end before this one
    ),
    min_size=1, max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=steps,
    replicas=st.integers(1, 8),
    block_chars=st.sampled_from([1, 4, 16, 64, 128]),
    max_prefix_chars=st.sampled_from([8, 100, 1000, 32768]),
    max_entries=st.sampled_from([2, 16, 200, 200_000]),
    blocks_per_request=st.sampled_from([0.5, 3.0, 12.0]),
    anchor_blocks=st.sampled_from([0, 1, 4]),
    anchor_credit=st.sampled_from([0.0, 0.5, 3.0]),
    balance_abs=st.sampled_from([1, 2, 16]),
    owed_weight=st.sampled_from([0.0, 0.5, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_c_and_pure_python_make_the_same_choices(
        history: list[tuple[str, bytes | None, list[int], str, int]], replicas: int,
        block_chars: int, max_prefix_chars: int, max_entries: int,
        blocks_per_request: float, anchor_blocks: int, anchor_credit: float,
        balance_abs: int, owed_weight: float, seed: int) -> None:
    """Requests stay in flight and end (``release``: the owed prefill, the learning) in
    order, some after their replica left; both paths see the same."""
    settings_ = {"block_chars": block_chars, "max_prefix_chars": max_prefix_chars,
                 "max_entries": max_entries, "blocks_per_request": blocks_per_request,
                 "anchor_blocks": anchor_blocks, "anchor_credit": anchor_credit,
                 "balance_abs": balance_abs, "owed_weight": owed_weight}
    c_policy = prefix_aware.PrefixAwarePolicy(**settings_)
    py_policy = PURE.PrefixAwarePolicy(**settings_)
    names = [f"r{i}" for i in range(replicas)]
    fleets: list[list[Target]] = [[], []]
    for n, policy in enumerate((c_policy, py_policy)):
        policy.rng.seed(seed)
        fleets[n] = [Target(name, f"http://127.0.0.1:{8000 + i}") for i, name in enumerate(names)]
        policy.on_targets_changed(fleets[n])
    joined = replicas
    in_flight: list[list[tuple[Target, Any]]] = [[], []]
    for step, (method, body, loads, change, ended) in enumerate(history):
        for n, policy in enumerate((c_policy, py_policy)):
            for target, key in in_flight[n][:ended]:
                policy.release(target, key)
            del in_flight[n][:ended]
        for n, policy in enumerate((c_policy, py_policy)):
            fleet = fleets[n]
            if change == "leave" and len(fleet) > 1:
                fleet.pop(step % len(fleet))
                policy.on_targets_changed(fleet)
            elif change == "join" and len(fleet) < 8:
                fleet.append(Target(f"r{joined}", f"http://127.0.0.1:{9000 + joined}"))
                policy.on_targets_changed(fleet)
        joined += change == "join"
        c_key = c_policy.request_key(method, "/v1/chat/completions", body)
        py_key = py_policy.request_key(method, "/v1/chat/completions", body)
        assert (c_key is None) == (py_key is None), body
        assert len(c_key or []) == len(py_key or []), body
        # The rendezvous anchor is not seeded: the same value from both, or none from either.
        assert getattr(c_key, "anchor", None) == getattr(py_key, "anchor", None), body
        chosen = []
        for n, (policy, fleet, key) in enumerate(((c_policy, fleets[0], c_key),
                                                  (py_policy, fleets[1], py_key))):
            for target, load in zip(fleet, loads, strict=False):
                target.in_flight = load
            picked = policy.choose(fleet, key)
            assert picked is not None
            chosen.append(picked.replica_id)
            if key is not None:
                in_flight[n].append((picked, key))
        assert chosen[0] == chosen[1], (step, body, loads)
        assert [t.owed for t in fleets[0]] == [t.owed for t in fleets[1]]
    assert (c_policy.matched, c_policy.fallbacks, c_policy.anchored) == (
        py_policy.matched, py_policy.fallbacks, py_policy.anchored)
    assert (len(c_policy._young), len(c_policy._old)) == (len(py_policy._young),
                                                          len(py_policy._old))
    assert c_policy._bits == py_policy._bits


def test_prefix_matches_happen_in_the_comparison() -> None:
    """The comparison is not vacuous: a repeated conversation is routed by its prefix."""
    pure = PURE.PrefixAwarePolicy(block_chars=16)
    fleet = [Target(f"r{i}", f"http://127.0.0.1:{8000 + i}") for i in range(4)]
    pure.on_targets_changed(fleet)
    body = json.dumps({"messages": [{"role": "user", "content": "a long shared start " * 5}]})
    key = pure.request_key("POST", "/", body.encode())
    first = pure.choose(fleet, key)
    assert first is not None and first.owed == len(key)  # its prefill is owed there
    pure.release(first, key)  # the request ended: the replica holds the prompt
    assert first.owed == 0
    again = pure.choose(fleet, pure.request_key("POST", "/", body.encode()))
    assert first is again and pure.matched == 1


@pytest.mark.parametrize("body", [b'{"messages": [1]}', b'{"prompt": "p"}', b"  {\"text\": \"t\"}"])
def test_both_paths_key_the_documented_bodies(body: bytes) -> None:
    c_key = prefix_aware.PrefixAwarePolicy().request_key("POST", "/", body)
    py_key = PURE.PrefixAwarePolicy().request_key("POST", "/", body)
    assert c_key and py_key and len(c_key) == len(py_key)


def test_the_c_helper_chooses_and_settles_anchored_requests_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An anchored request is scored and settled by the C helper (not handed back to Python),
    with the Python version's answer: the favoured replica when nothing is held; while that
    one owes the prompt's prefill, another; once it holds the prompt, that one."""
    policy = prefix_aware.PrefixAwarePolicy()
    fleet = [Target(f"r{i}", f"http://127.0.0.1:{8000 + i}") for i in range(4)]
    policy.on_targets_changed(fleet)
    body = json.dumps({"messages": [{"role": "system", "content": "shared " * 200}]}).encode()
    scan = prefix_aware.PrefixAwarePolicy._scan
    handed_back = 0

    def counted(self: Any, *args: Any) -> Any:
        nonlocal handed_back
        handed_back += 1
        return scan(self, *args)

    monkeypatch.setattr(prefix_aware.PrefixAwarePolicy, "_scan", counted)

    def python_says(key: Any) -> Any:  # what the Python version would choose now
        return scan(policy, fleet, key, key.anchor)

    key = policy.request_key("POST", "/", body)
    assert isinstance(key, prefix_aware.PromptKey) and key.anchor is not None
    want = python_says(key)
    assert want[3] == 0  # nothing held: the anchor
    first = policy.choose(fleet, key)
    assert first is fleet[want[0]] and policy.anchored == 1
    assert first.owed == key.charge == len(key) and key.start == 0
    second_key = policy.request_key("POST", "/", body)
    want = python_says(second_key)  # nothing held yet, and the first one owes a whole prefill
    second = policy.choose(fleet, second_key)
    assert second is fleet[want[0]] and second is not first and want[3] == 0
    policy.release(first, key)
    assert first.owed == 0 and key.charge == -1
    third_key = policy.request_key("POST", "/", body)
    want = python_says(third_key)
    third = policy.choose(fleet, third_key)
    assert third is first is fleet[want[0]] and want[1] == want[3] == len(key)
    assert policy.matched == 1 and third_key.charge == 0 and third_key.start == len(key)
    assert handed_back == 0
