"""prefix_aware's C helper (lb_agent/dataplane/policies/_prefix_native.c) against its pure-Python
contract.

The helper is an optional build (setup.py): where it is missing, prefix_aware runs the Python
versions these tests compare it with. The test environment builds it (scripts/bootstrap.sh
--tests installs gcc and the Python headers), and the first test says so when it did not.
"""

from __future__ import annotations

import random

import pytest

from lb_agent.dataplane.policies import prefix_aware
from lb_agent.dataplane.policies.prefix_aware import PrefixAwarePolicy, block_hashes, prompt_span
from lb_agent.dataplane.target import Target

native = prefix_aware._prefix_native


def test_the_c_helper_is_built_here() -> None:
    assert native is not None, (
        "lb_agent.dataplane.policies._prefix_native was not built: `pip install -e .` needs gcc "
        "and the Python "
        "headers (scripts/bootstrap.sh --tests installs them); prefix_aware then runs in "
        "pure Python")
    assert prefix_aware.NATIVE and PrefixAwarePolicy._native_choose is native.choose
    assert PrefixAwarePolicy._native_release is native.release
    assert type(PrefixAwarePolicy()._young) is native.Generation


def test_both_crc32_paths_are_zlibs() -> None:
    """The rendezvous anchor's CRC-32: folded by carry-less multiplication (where the CPU can)
    and by tables, both zlib.crc32, on every length around the 16- and 64-byte steps of the
    folding and at every alignment."""
    import zlib

    assert native is not None
    rng = random.Random(3)
    data = bytes(rng.randrange(256) for _ in range(1200))
    for n in [*range(0, 200), *range(500, 530), 1024, 1100]:
        for off in (0, 1, 7):
            chunk = data[off:off + n]
            assert native.crc32(chunk, True) == native.crc32(chunk, False) == zlib.crc32(chunk)


def test_a_generation_is_a_dict_of_64_bit_keys_and_masks() -> None:
    """The C helper's Generation against a dict under random insertions, updates, lookups,
    pops and deletions (clusters of colliding slots, growth, deletion moving entries back),
    with the edge keys 0 and 2**64 - 1; keys outside [0, 2**64) are never held, and neither
    they nor a mask outside [1, 2**64) can be stored."""
    assert native is not None
    rng = random.Random(19)
    pool = [0, 2**64 - 1, *(rng.randrange(2**60) for _ in range(3000))]
    gen, ref = native.Generation(), {}
    for step in range(40_000):
        h = rng.choice(pool) if step < 30_000 or rng.random() < 0.9 else rng.choice([-1, 2**64])
        op = rng.random()
        if h < 0 or h >= 2**64:
            assert gen.get(h) is None and h not in gen and gen.pop(h, 7) == 7
            with pytest.raises(OverflowError):
                gen[h] = 1
        elif op < 0.45:
            mask = rng.randrange(1, 2**64)
            gen[h] = ref[h] = mask
        elif op < 0.6:
            assert gen.pop(h, 0) == ref.pop(h, 0)
        elif op < 0.7 and h in ref:
            del gen[h]
            del ref[h]
        else:
            assert gen.get(h) == ref.get(h) and (h in gen) == (h in ref)
            assert gen.get(h, 5) == ref.get(h, 5)
        assert len(gen) == len(ref)
        if step % 5000 == 0:
            assert dict(gen.items()) == ref and sorted(gen) == sorted(ref)
    assert dict(gen.items()) == ref and sorted(gen) == sorted(ref)
    for h in list(ref):
        assert gen[h] == ref[h]
        del gen[h]
    assert len(gen) == 0 and not list(gen) and gen.items() == []
    with pytest.raises(KeyError):
        gen[5]
    with pytest.raises(KeyError):
        del gen[5]
    with pytest.raises(KeyError):
        gen.pop(5)
    for bad in (0, 2**64, -3):
        with pytest.raises(ValueError):
            gen[1] = bad
    with pytest.raises(TypeError):
        gen["1"] = 1
    with pytest.raises(TypeError):
        native.Generation(3)


def _native_hashes(data: bytes, block: int) -> list[int]:
    assert native is not None
    return native.block_hashes(data, block, 12345)


@pytest.mark.parametrize("hashes", [block_hashes, _native_hashes],
                         ids=["python", "native"])
def test_block_hashes_agree_exactly_as_long_as_the_bytes_do(hashes) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    for _ in range(300):
        block = rng.choice([1, 3, 8, 16, 64, 128])
        common = bytes(rng.choice(b"ab") for _ in range(rng.randint(0, 300)))
        a = common + bytes(rng.choice(b"ab") for _ in range(rng.randint(0, 200)))
        b = common + bytes(rng.choice(b"ab") for _ in range(rng.randint(0, 200)))
        ha, hb = hashes(a, block), hashes(b, block)
        whole = len(a) // block if len(a) >= block else (1 if a else 0)
        assert len(ha) == whole
        same = 0  # leading whole blocks that are byte-for-byte equal
        while (same < min(len(ha), len(hb)) and a[same * block:(same + 1) * block]
               == b[same * block:(same + 1) * block]
               and min(len(a), len(b)) >= (same + 1) * block):
            same += 1
        assert ha[:same] == hb[:same]
        assert all(x != y for x, y in zip(ha[same:], hb[same:], strict=False))
    assert hashes(b"short", 64) != [] and hashes(b"", 64) == []


def test_native_hashes_depend_on_the_seed_and_reject_a_zero_block() -> None:
    assert native is not None
    assert native.block_hashes(b"x" * 64, 16, 1) != native.block_hashes(b"x" * 64, 16, 2)
    with pytest.raises(ValueError):
        native.block_hashes(b"x", 0, 1)


def test_native_prompt_key_holds_the_hashes_of_prompt_span() -> None:
    """request_key's one native call against its two Python steps, on bodies built to hit
    every branch of prompt_span: leading whitespace of each kind, not an object, each key
    (first found in preference order), keys inside strings, limits shorter than the key."""
    assert native is not None
    rng = random.Random(23)
    pieces = [b'"messages"', b'"prompt"', b'"text"', b'"inputs"', b'"model"', b": ", b", ",
              b"[", b"]", b"{", b"}", b'"', b"\\", b"hello", b"x" * 40]
    seen_none = seen_list = 0
    for _ in range(3000):
        lead = bytes(rng.choice(b" \t\n\r\x0b\x0c") for _ in range(rng.randint(0, 3)))
        start = rng.choice([b"{", b"{", b"[", b"", b"x"])
        body = lead + start + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        limit, block = rng.choice([1, 5, 9, 64, 32768]), rng.choice([1, 4, 16, 128])
        span = prompt_span(body, limit)
        want = native.block_hashes(span, block, 77) if span else None
        got = native.prompt_key(body, prefix_aware._PROMPT_KEYS, limit, block, 77, 0,
                                prefix_aware.PromptKey)
        assert got == want, (body, limit, block)
        assert got is None or (type(got) is prefix_aware.PromptKey and got.anchor is None
                               and got.charge == -1)
        seen_none += got is None
        seen_list += got is not None
    assert seen_none > 300 and seen_list > 300  # both outcomes were exercised


class PythonOnly(PrefixAwarePolicy):
    """prefix_aware without the C helper's choose and release, and with dicts for its
    memory (its keys still native)."""

    _native_choose = None
    _native_release = None
    _new_generation = staticmethod(dict)


def _history(seed: int, replicas: int, steps: int) -> list[tuple[int, list[int], bool]]:
    """(which prompt stem, per-replica loads, whether the first replica leaves) per step."""
    rng = random.Random(seed)
    return [(rng.randrange(6), [rng.randint(0, 4) for _ in range(replicas)],
             step == steps // 2) for step in range(steps)]


def _count_python_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list counting the calls of ``PrefixAwarePolicy._scan`` (the Python path)
    from now on."""
    calls = [0]
    scan = PrefixAwarePolicy._scan

    def counted(self: PrefixAwarePolicy, *args):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return scan(self, *args)

    monkeypatch.setattr(PrefixAwarePolicy, "_scan", counted)
    return calls


@pytest.mark.parametrize("replicas", [1, 3, 8, 70])
def test_native_scan_makes_the_python_versions_choices(
        replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, same prompts, same loads: the same replica every time, the same counters
    and the same memory, through evictions and a replica leaving. With 70 replicas (more
    than a 64-bit mask holds) the helper hands every choice back to Python."""
    assert native is not None
    python_scans = _count_python_scans(monkeypatch)
    rng = random.Random(5)
    stems = [b'{"prompt": "' + bytes(rng.choice(b"abcd") for _ in range(60)) for _ in range(6)]
    policies = [PrefixAwarePolicy(block_chars=16, max_entries=80, blocks_per_request=3.0),
                PythonOnly(block_chars=16, max_entries=80, blocks_per_request=3.0)]
    fleets = [[Target(f"r{i}", f"http://10.0.0.{i}:8080") for i in range(replicas)]
              for _ in policies]
    for p, ts in zip(policies, fleets, strict=True):
        p.rng.seed(9)
        p.on_targets_changed(ts)
    tails = random.Random(3)
    picks: list[list[str]] = [[], []]
    for stem, loads, leave in _history(17, replicas, 800):
        body = stems[stem] + bytes(tails.choice(b"xyz") for _ in range(tails.randint(0, 80)))
        key = policies[0].request_key("POST", "/", body + b'"}')
        assert key
        for n, (p, ts) in enumerate(zip(policies, fleets, strict=True)):
            if leave and len(ts) > 1:
                ts.pop(0)
                p.on_targets_changed(ts)
            for t, load in zip(ts, loads, strict=False):
                t.in_flight = load
            chosen = p.choose(ts, list(key))
            assert chosen is not None
            picks[n].append(chosen.replica_id)
    assert picks[0] == picks[1]
    assert python_scans[0] == (1600 if replicas > 64 else 800)  # 800 of them PythonOnly's
    a, b = policies
    assert (a.matched, a.fallbacks) == (b.matched, b.fallbacks)
    assert a.matched > 0
    assert dict(a.entries) == dict(b.entries) and a._bits == b._bits


@pytest.mark.parametrize("replicas", [1, 3, 8, 70])
def test_native_choose_and_release_settle_prompt_keys_as_python_does(
        replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """PromptKeys routed by the C helper's choose (which settles them: the charge, the owed
    prefill, where release records from, the counters) and ended by its release (which
    hands only the recording back) against the Python versions: the same replica every
    time, the same owed prefill, counters and memory, and the same fields on every key,
    with requests in flight, anchors, evictions and a replica leaving. With 70 replicas the
    helper hands every choice back to Python."""
    python_scans = _count_python_scans(monkeypatch)
    rng = random.Random(8)
    stems = [b'{"prompt": "' + bytes(rng.choice(b"abcd") for _ in range(70)) for _ in range(6)]
    settings = {"block_chars": 16, "max_entries": 90, "blocks_per_request": 3.0,
                "anchor_blocks": 2}
    policies = [PrefixAwarePolicy(**settings), PythonOnly(**settings)]
    fleets = [[Target(f"r{i}", f"http://10.0.0.{i}:8080") for i in range(replicas)]
              for _ in policies]
    for p, ts in zip(policies, fleets, strict=True):
        p.rng.seed(4)
        p.on_targets_changed(ts)
    flying: list[list[tuple[Target, prefix_aware.PromptKey]]] = [[], []]
    tails = random.Random(6)
    seen_owed = 0
    for stem, loads, leave in _history(29, replicas, 600):
        body = stems[stem] + bytes(tails.choice(b"xyz") for _ in range(tails.randint(0, 90)))
        ended = tails.randint(0, 3)
        fields = []
        for n, (p, ts) in enumerate(zip(policies, fleets, strict=True)):
            for target, key in flying[n][:ended]:
                p.release(target, key)
                assert key.charge == -1
            del flying[n][:ended]
            if leave and len(ts) > 1:
                ts.pop(0)
                p.on_targets_changed(ts)
            for t, load in zip(ts, loads, strict=False):
                t.in_flight = load
            key = p.request_key("POST", "/", body + b'"}')
            assert type(key) is prefix_aware.PromptKey
            chosen = p.choose(ts, key)
            assert chosen is not None
            flying[n].append((chosen, key))
            fields.append((chosen.replica_id, key.charge, key.start, key.turn,
                           [t.owed for t in ts]))
        assert fields[0] == fields[1]
        seen_owed += sum(fields[0][4]) > 0
    for n, p in enumerate(policies):
        for target, key in flying[n]:
            p.release(target, key)
    assert python_scans[0] == (1200 if replicas > 64 else 600)  # 600 of them PythonOnly's
    a, b = policies
    assert (a.anchored, a.matched, a.fallbacks) == (b.anchored, b.matched, b.fallbacks)
    assert a.matched > 0 and a.anchored > 0 and seen_owed > 0
    assert dict(a.entries) == dict(b.entries) and a._bits == b._bits
    assert (len(a._young), len(a._old), a._turns) == (len(b._young), len(b._old), b._turns)
    assert all(t.owed == 0 for ts in fleets for t in ts)


def test_native_prompt_key_anchor_is_the_zlib_crc32_of_its_first_blocks() -> None:
    """prompt_key: a PromptKey whose anchor is zlib.crc32 of the first anchor_blocks blocks
    (every length around the 8-byte steps of the C loop) when the prompt has that many
    blocks, else None; its hashes do not depend on anchor_blocks; None without a prompt; the
    argument checks."""
    import zlib

    rng = random.Random(5)
    keys = prefix_aware._PROMPT_KEYS
    for n in range(0, 90):
        text = bytes(rng.choice(b"abc xyz\\u00e9") for _ in range(n))
        body = b'{"model": "m", "prompt": "' + text + b'"}'
        for block, anchor_blocks in ((1, 1), (3, 5), (7, 2), (16, 3), (64, 0)):
            got = native.prompt_key(body, keys, 1000, block, 9, anchor_blocks,
                                    prefix_aware.PromptKey)
            span = prompt_span(body, 1000)
            assert span is not None and got is not None
            assert got == native.block_hashes(span, block, 9)
            assert type(got) is prefix_aware.PromptKey and got.charge == -1
            if anchor_blocks and len(got) >= anchor_blocks:
                assert got.anchor == zlib.crc32(span[:anchor_blocks * block])
            else:
                assert got.anchor is None
    assert native.prompt_key(b"[1]", keys, 100, 4, 9, 1, prefix_aware.PromptKey) is None
    with pytest.raises(TypeError):
        native.prompt_key(b'{"prompt": "x"}', keys, 100, 4, 9, 1, dict)
    with pytest.raises(ValueError, match="at least 1"):
        native.prompt_key(b'{"prompt": "x"}', keys, 100, 0, 9, 1, prefix_aware.PromptKey)
    with pytest.raises(ValueError, match="at least 1"):
        native.prompt_key(b'{"prompt": "x"}', keys, 0, 4, 9, 1, prefix_aware.PromptKey)
    with pytest.raises(TypeError, match="non-empty bytes"):
        native.prompt_key(b'{"prompt": "x"}', (b"",), 100, 4, 9, 1, prefix_aware.PromptKey)


def test_native_functions_check_their_arguments_as_the_policy_passes_them() -> None:
    """prompt_key and scan take their arguments without PyArg_ParseTuple (a tenth of the
    policy's instructions per request): the same types are accepted (an int where a float
    is expected; a seed taken modulo 2**64) and the others refused with a TypeError naming the
    argument."""
    keys = prefix_aware._PROMPT_KEYS
    body = b'{"prompt": "' + b"y" * 40 + b'"}'
    pk = prefix_aware.PromptKey
    assert native.prompt_key(body, keys, 100, 4, -1, 2, pk) == native.prompt_key(
        body, keys, 100, 4, 2**64 - 1, 2, pk)
    assert native.prompt_key(body, keys, 100, True, 9, 2, pk) == native.prompt_key(
        body, keys, 100, 1, 9, 2, pk)
    for bad, pos in (((body.decode(), keys, 100, 4, 9, 2, pk), 1),
                     ((body, list(keys), 100, 4, 9, 2, pk), 2),
                     ((body, keys, 100, 4, 9, 2, "PromptKey"), 7)):
        with pytest.raises(TypeError, match=f"argument {pos} must be"):
            native.prompt_key(*bad)
    with pytest.raises(TypeError, match="argument 5 must be int"):
        native.prompt_key(body, keys, 100, 4, 9.0, 2, pk)
    with pytest.raises(TypeError, match="integer"):
        native.prompt_key(body, keys, 100.0, 4, 9, 2, pk)
    with pytest.raises(TypeError, match="exactly 7 arguments"):
        native.prompt_key(body, keys, 100, 4, 9, 2)
    ts = [Target("a", "http://10.0.0.1:80"), Target("b", "http://10.0.0.2:80")]
    args = [ts, [1, 2, 3], {}, {}, {"a": 1, "b": 2}, 16, 1.0, 3, random.Random(1).randrange,
            pk, 0.5, {}, 0.5, 0, [0, 0, 0]]
    # A plain list key, nothing held: None (least load decides), ints and floats alike.
    assert native.choose(*args) is None
    args[2] = {3: 2}  # b holds the whole key: what the caller settles (a plain list)
    assert native.choose(*args) == (1, 3, True, 3)
    assert native.choose(*[float(a) if type(a) is int and a is not args[13] else a
                           for a in args]) == (1, 3, True, 3)
    for pos, bad in ((2, (1, 2, 3)), (3, []), (5, None), (10, "PromptKey"), (12, []),
                     (14, 0.0), (15, (0, 0, 0))):
        wrong = list(args)
        wrong[pos - 1] = bad
        with pytest.raises(TypeError, match=f"argument {pos} must be"):
            native.choose(*wrong)
    with pytest.raises(TypeError, match="argument 4 must be"):
        native.choose(*args[:2], native.Generation(), {}, *args[4:])  # one of each kind
    with pytest.raises(TypeError):
        native.choose(*args[:6], "16", *args[7:])
    with pytest.raises(TypeError, match="exactly 15 arguments"):
        native.choose(*args[:14])
    assert native.release(ts[0], [1, 2], {}, 0, pk) is None  # not a PromptKey: nothing to do
    with pytest.raises(TypeError, match="argument 3 must be"):
        native.release(ts[0], [1, 2], [], 0, pk)
    with pytest.raises(TypeError, match="exactly 5 arguments"):
        native.release(ts[0], [1, 2], {}, 0)


def test_a_helper_built_from_older_source_is_set_aside() -> None:
    """A helper with every function but another VERSION (its contracts changed: choose
    settles the key it routes) is not called: prefix_aware loads as without one, and says why."""
    import importlib.util
    import sys
    import types

    from lb_agent.dataplane import policies as policies_package
    from lb_agent.dataplane.policies import base as policy_base

    assert native is not None and native.VERSION == prefix_aware.NATIVE_VERSION
    name = "lb_agent.dataplane.policies._prefix_native"
    old = types.ModuleType(name)
    for attr in ("block_hashes", "prompt_key", "choose", "release", "record", "Generation"):
        setattr(old, attr, getattr(native, attr))
    old.VERSION = prefix_aware.NATIVE_VERSION - 1  # type: ignore[attr-defined]
    saved_policy = policy_base._POLICIES["prefix_aware"]
    saved_attr = policies_package.__dict__.pop("_prefix_native", None)
    sys.modules[name] = old
    try:
        spec = importlib.util.spec_from_file_location("prefix_aware_stale", prefix_aware.__file__)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.modules[name] = native
        if saved_attr is not None:
            policies_package._prefix_native = saved_attr  # type: ignore[attr-defined]
        policy_base._POLICIES["prefix_aware"] = saved_policy
    assert module.STALE_NATIVE and not module.NATIVE
    assert module._native_prompt_key is None and module.PrefixAwarePolicy._native_choose is None
    assert module.PrefixAwarePolicy._native_release is None
