"""prefix_aware: send an LLM request to the replica that recently served its prompt's prefix.

A skyform extension (docs/differences.md). The policy learns only from its own routing
history: every request it routes records, when it ends (``release``), "replica R served
prompt prefix P" as a chain of block hashes (block ``b`` is the hash of block ``b-1`` and
the next ``block_chars`` bytes), so a later prompt that starts the same way finds the
deepest block some replica holds. That is what an inference engine's prefix (KV) cache
rewards: the replica skips the prefill of the matched part.

The prompt (``prompt_span``) is read only from a body the proxy already holds whole (bodies up
to ``proxy.retry_body_limit`` are buffered for retries; larger or streamed bodies fall back):
OpenAI ``chat/completions`` (the ``messages`` array, in order), ``completions`` (``prompt``),
and text-generation bodies with ``prompt``, ``text`` or ``inputs`` (vLLM, SGLang, TGI). At
most ``max_prefix_chars`` bytes of the JSON from that key on are hashed. Anything else is
routed by least load.

The rule (``choose``): each candidate scores its in-flight count plus ``owed_weight`` times
its owed prefill, minus its matched depth (in blocks, the deepest block of the prompt it
holds), both in blocks divided by ``blocks_per_request``, and the lowest score wins. So a
deeper match outweighs load by ``blocks_per_request`` blocks per request in flight: it pays to
wait behind one more request to skip that much prefill. A replica that holds the system
prompt only keeps that part of its credit, so a busy replica holding a whole conversation can
lose to an idle one holding its start. A hard bound on top: a replica whose in-flight count
exceeds the cluster minimum by more than ``max(balance_abs, balance_rel * minimum)`` is never
taken for its prefix.

Owed prefill (``Target.owed``): ``choose`` charges the replica it takes the blocks of the
prompt that replica did not hold (what its engine must prefill), and ``release``, which the
proxy calls when the attempt ends however it ends, pays the charge back and only then
records the prompt for that replica. So a new prefix (or a hot one that must spill) goes to
the replica with the least prefill queued, not merely the fewest requests, and a second
request for a prefix whose first prefill is still running is not sent to queue behind it to
prefill it again (an engine's cache holds a prompt once its prefill is done). The estimate
counts a request until it ends, not until its first token (the proxy does not read the
response stream), hence a weight under 1.

The rendezvous anchor, so that several load balancers (each with only its own history) agree:
a prompt of at least ``anchor_blocks`` blocks has an anchor, an unseeded hash of those blocks
(``PromptKey.anchor``; lb_agent/dataplane/rendezvous.py), and the replica with the heaviest
rendezvous weight for it among those within the bound is credited at least ``anchor_credit``
requests, as if it held the prompt; ties are broken by the same weights (without an anchor, at
random). So with no history a prompt goes to its rendezvous replica when that is among the
least loaded, on every load balancer that sees the same loads (in-flight counts and owed
prefill, both counted per load balancer), and a prefix that must move goes to the same next
replica from all of them. With no match anywhere, no anchor and nothing owed every score is
the in-flight count: exactly least_load.

Bounds: at most ``max_entries`` block hashes are remembered (more by less than one prompt's
blocks when ``max_entries`` is under twice that), in two generations of about
half that each (a cheap approximation of LRU: a block used is put in the young generation; when
that is full, the old generation is dropped whole and the young one becomes old, so a block
survives between ``max_entries / 2`` and ``max_entries`` new blocks after its last use, and a
hit on a young block costs one lookup, no reordering); a replica that leaves the routable set is
forgotten at once. A generation is the C helper's ``Generation`` (an open-addressing table of
64-bit block hash -> 64-bit replica mask, 16 bytes a slot, at most half full: a lookup reads
one slot) while the masks fit 64 bits, else (more than 64 replicas, or no helper) a dict.

Speed: finding the prompt, hashing its blocks (``prompt_key``), the depth scan with the
scoring and the settlement of the chosen replica's charge (``choose``), and ``release`` up to
its recording run in a small C helper (lb_agent/dataplane/policies/_prefix_native.c) when the
install could build it; otherwise the Python versions here run, with the same contracts and,
for a seeded ``rng``, the same choices (tests/test_prefix_native.py,
tests/test_prefix_differential.py), a few microseconds slower per request (bench/lb_bench.py,
``--pure-python``).
"""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from lb_agent.dataplane.affinity import balance_bound
from lb_agent.dataplane.policies.base import Policy
from lb_agent.dataplane.rendezvous import anchor_of, first_within, replica_hash, weight
from lb_agent.dataplane.target import Target

try:  # the C helper (setup.py builds it when it can: it is optional)
    from lb_agent.dataplane.policies import _prefix_native
except ImportError:  # pragma: no cover - where no C compiler was available
    _prefix_native = None  # type: ignore[assignment]
#: What this version needs from the helper: one built from an older source (a checkout
#: updated without `pip install -e .` again) lacks some, or has another ``VERSION`` (the
#: contracts of its functions), and the pure-Python path runs.
NATIVE_FUNCTIONS = ("prompt_key", "choose", "release", "record", "Generation")
NATIVE_VERSION = 3
STALE_NATIVE = _prefix_native is not None and (
    getattr(_prefix_native, "VERSION", 1) != NATIVE_VERSION
    or not all(hasattr(_prefix_native, name) for name in NATIVE_FUNCTIONS))
if STALE_NATIVE:  # pragma: no cover - a stale build in a developer's checkout
    _prefix_native = None  # type: ignore[assignment]

_native_prompt_key = _prefix_native.prompt_key if _prefix_native is not None else None
_native_record = _prefix_native.record if _prefix_native is not None else None
#: A generation of the block memory: the C helper's ``Generation`` (an open-addressing table
#: of 64-bit block hashes and masks, which its ``choose`` reads a slot of per block), or a
#: dict (block hash -> mask, an int per block).
_GENERATION: Callable[[], MutableMapping[int, int]] = (
    _prefix_native.Generation if _prefix_native is not None else dict)
#: Whether the per-request work runs in the C helper (bench/lb_bench.py prints which).
NATIVE = _prefix_native is not None
#: The C helper's per-process hash seed (Python's own bytes hash is seeded per process too).
_SEED = int.from_bytes(os.urandom(8), "little")

#: Defaults (measured in bench/route_bench.py; docs/benchmarks.md, "Routing").
DEFAULT_BLOCK_CHARS = 128
DEFAULT_MAX_PREFIX_CHARS = 32768
DEFAULT_MAX_ENTRIES = 200_000
DEFAULT_BALANCE_ABS = 16
DEFAULT_BALANCE_REL = 1.0
DEFAULT_BLOCKS_PER_REQUEST = 3.0
DEFAULT_ANCHOR_BLOCKS = 4
DEFAULT_ANCHOR_CREDIT = 0.5
DEFAULT_OWED_WEIGHT = 0.5

#: Where a prompt starts in a JSON body, in order of preference: the chat messages, then the
#: prompt of completions (OpenAI, vLLM), SGLang's ``text``, TGI's ``inputs``.
_PROMPT_KEYS = (b'"messages"', b'"prompt"', b'"text"', b'"inputs"')


def prompt_span(body: bytes, limit: int) -> bytes | None:
    """At most ``limit`` bytes of ``body`` from its prompt key on, or None without one.

    The raw JSON is hashed, not a parsed form: one client serializes a conversation the same
    way every turn, so the bytes of the messages a turn repeats are identical, and finding a
    key is a C-speed scan instead of a parse (a quote inside a string value is escaped, so
    ``"messages"`` found in the body is a key, or a whole string that reads exactly so).
    """
    if body[:1] != b"{" and body.lstrip()[:1] != b"{":
        return None
    for key in _PROMPT_KEYS:
        i = body.find(key)
        if i >= 0:
            return body[i:i + limit]
    return None


def block_hashes(data: bytes, block: int) -> list[int]:
    """Chained hashes of ``data``'s whole blocks: equal lists up to ``k`` mean equal first
    ``k * block`` bytes (up to hash collisions). Data shorter than a block is one block.
    Block ``b`` is the hash of block ``b-1``'s value and block ``b``'s bytes.

    The pure-Python version: the C helper's ``block_hashes``
    (lb_agent/dataplane/policies/_prefix_native.c, used
    through its ``prompt_key``) keeps the same contract with other values."""
    n = len(data)
    whole = n - n % block if n >= block else n
    out: list[int] = []
    h = 0
    for i in range(0, whole, block):
        h = hash((h, data[i:i + block]))
        out.append(h)
    return out


class PromptKey(list[int]):
    """A prompt's block hashes with its rendezvous ``anchor`` (``rendezvous.anchor_of`` of its
    first ``anchor_blocks`` blocks, the same value in every process; None for a shorter
    prompt) and what ``choose`` charged for it: ``charge``, the blocks its replica did not
    hold (-1: not routed by ``choose``, or released), and ``start``/``turn`` for ``release``.
    The C helper makes these without calling ``__init__`` (it sets ``anchor`` and
    ``charge``)."""

    __slots__ = ("anchor", "charge", "start", "turn")
    anchor: int | None
    charge: int
    start: int
    turn: int

    def __init__(self, hashes: list[int], anchor: int | None) -> None:
        super().__init__(hashes)
        self.anchor = anchor
        self.charge = -1


class PrefixAwarePolicy(Policy):
    """Longest recently-served prompt prefix, bounded by a load-balance rule."""

    name = "prefix_aware"
    uses_request = True
    #: The C helper's ``choose`` (``_scan``, ``_settle`` and the counters in one call) and
    #: ``release`` (``release`` up to its ``_record``), or None: pure Python.
    _native_choose: Callable[..., Any] | None = (
        staticmethod(_prefix_native.choose) if _prefix_native is not None else None)
    _native_release: Callable[..., Any] | None = (
        staticmethod(_prefix_native.release) if _prefix_native is not None else None)

    def __init__(self, *, target_qps_per_replica: float | dict[str, float] | None = None,
                 block_chars: int = DEFAULT_BLOCK_CHARS,
                 max_prefix_chars: int = DEFAULT_MAX_PREFIX_CHARS,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 balance_abs: int = DEFAULT_BALANCE_ABS,
                 balance_rel: float = DEFAULT_BALANCE_REL,
                 blocks_per_request: float = DEFAULT_BLOCKS_PER_REQUEST,
                 anchor_blocks: int = DEFAULT_ANCHOR_BLOCKS,
                 anchor_credit: float = DEFAULT_ANCHOR_CREDIT,
                 owed_weight: float = DEFAULT_OWED_WEIGHT) -> None:
        super().__init__(target_qps_per_replica=target_qps_per_replica)
        self.block_chars = max(1, block_chars)
        self.max_prefix_chars = max(self.block_chars, max_prefix_chars)
        self.max_entries = max(1, max_entries)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.blocks_per_request = max(1e-9, blocks_per_request)
        self.anchor_blocks = max(0, anchor_blocks)
        self.anchor_credit = max(0.0, anchor_credit)
        self.owed_weight = max(0.0, owed_weight)
        self._owed_per = self.owed_weight / self.blocks_per_request
        # The C helper's functions as instance attributes: a class attribute read through
        # the instance takes CPython's generic lookup (the type's dict, then the instance's),
        # with its cache misses, per request (proxy_cost_bench --cache-sim).
        self._c_choose = self._native_choose
        self._c_release = self._native_release
        #: replica id -> its rendezvous value (what the C helper reads; filled as replicas
        #: are seen, emptied of those that leave).
        self._rid_hashes: dict[str, int] = {}
        #: block hash -> bit mask of the replicas that served a prompt through it (no set
        #: objects to allocate, or for the GC to traverse), in two generations of at most
        #: ``max_entries // 2`` blocks each (see the module docstring): ``_GENERATION``s
        #: while masks fit 64 bits, dicts for more replicas.
        self._generation = max(1, self.max_entries // 2)
        self._young: MutableMapping[int, int] = self._new_generation()
        self._old: MutableMapping[int, int] = self._new_generation()
        #: replica id -> its bit in the masks (a bit is reused only after it was cleared).
        self._bits: dict[str, int] = {}
        self._turns = 0
        #: Requests no replica held a block of (routed by the anchor rule), routed to a
        #: prefix match, and with a match the balance rule overrode (``anchored``,
        #: ``matched``, ``fallbacks``: for tests and benchmarks). A list, which the C helper
        #: counts in.
        self._counts = [0, 0, 0]

    @property
    def anchored(self) -> int:
        return self._counts[0]

    @property
    def matched(self) -> int:
        return self._counts[1]

    @property
    def fallbacks(self) -> int:
        return self._counts[2]

    #: What a new generation is (tests compare it with dicts).
    _new_generation: Callable[[], MutableMapping[int, int]] = staticmethod(_GENERATION)

    @property
    def entries(self) -> ChainMap[int, int]:
        """Every remembered block hash -> its replica mask (a read-only view for tests)."""
        return ChainMap(self._young, self._old)

    def holders(self, block: int) -> set[str]:
        """The ids of the replicas remembered for ``block`` (for tests and debugging)."""
        mask = self._young.get(block) or self._old.get(block, 0)
        return {rid for rid, bit in self._bits.items() if mask & bit}

    # -- the request key --------------------------------------------------------------
    def request_key(self, method: str, path: str, body: bytes | None) -> list[int] | None:
        """The block hashes of the request's prompt (a ``PromptKey`` with its rendezvous
        anchor when the prompt is at least ``anchor_blocks`` blocks long), or None (route by
        load)."""
        if method != "POST" or body is None:
            return None
        if _native_prompt_key is not None:  # the calls below in one
            return _native_prompt_key(body, _PROMPT_KEYS, self.max_prefix_chars,
                                      self.block_chars, _SEED, self.anchor_blocks, PromptKey)
        span = prompt_span(body, self.max_prefix_chars)
        if not span:
            return None
        hashes = block_hashes(span, self.block_chars)
        if len(hashes) < self.anchor_blocks or not self.anchor_blocks:
            return PromptKey(hashes, None)
        return PromptKey(hashes, anchor_of(span[:self.anchor_blocks * self.block_chars]))

    # -- choosing -----------------------------------------------------------------------
    def select(self, candidates: Sequence[Target]) -> Target | None:
        return self.pick_min(candidates, _in_flight)

    def choose(self, candidates: Sequence[Target], key: Any) -> Target | None:
        if not candidates:
            return None
        if not key:
            return self.pick_min(candidates, _in_flight)
        native = self._c_choose
        if native is not None:
            # Usually the chosen Target, settled and counted; else what is left to do here.
            scanned = native(candidates, key, self._young, self._old, self._bits,
                             self.balance_abs, self.balance_rel, self.blocks_per_request,
                             self.rng.randrange, PromptKey, self.anchor_credit,
                             self._rid_hashes, self._owed_per, self._turns, self._counts)
            if scanned is not None and type(scanned) is not tuple and (
                    scanned is not NotImplemented):
                return scanned
        else:
            scanned = NotImplemented
        if scanned is NotImplemented:
            scanned = self._scan(candidates, key, key.anchor if type(key) is PromptKey else None)
        if scanned is None:  # no candidate holds any block: least load, which learns it
            chosen = self.pick_min(candidates, self._load)
            assert chosen is not None
            self._settle(key, chosen, 0, False)
            return chosen
        index, depth, young, deepest = scanned
        chosen = candidates[index]
        self._counts[0 if not deepest else 1 if depth == deepest else 2] += 1
        self._settle(key, chosen, depth, young)
        return chosen

    def _settle(self, key: list[int], chosen: Target, depth: int, young: bool) -> None:
        """Charge ``chosen`` the prefill ``key`` owes there (the blocks past ``depth``) and,
        for a ``PromptKey``, defer learning the prompt to ``release``: until the prefill is
        done, the replica's cache does not hold it, and a second request for a new prefix
        should not queue behind the first one's prefill to prefill it again. A plain list
        (``record``'s callers, tests) is learned at once."""
        # Blocks up to a depth found young hold the bit and are young already (see _record).
        start = depth if young else 0
        rid = chosen.replica_id
        bit = self._bits.get(rid) or self._new_bit(rid)  # ``_bit``, a call less per request
        if type(key) is PromptKey:
            key.charge = charge = len(key) - depth
            chosen.owed += charge
            key.start = start
            key.turn = self._turns
        elif start < len(key):
            self._record(key, bit, start)

    def _load(self, t: Target) -> float:
        """In-flight count plus the owed prefill (in requests' worth of blocks)."""
        return t.in_flight + t.owed * self.owed_weight / self.blocks_per_request

    def release(self, target: Target, key: Any) -> None:
        """The attempt routed to ``target`` with ``key`` ended: its prefill is no longer owed
        there, and the replica learns the prompt (unless it left routing meanwhile)."""
        native = self._c_release
        if native is not None:  # all but the recording
            start = native(target, key, self._bits, self._turns, PromptKey)
            if start is not None:
                self._record(key, self._bits[target.replica_id], start)
            return
        if type(key) is not PromptKey or key.charge < 0:
            return  # not routed by ``choose`` (a pinned session), or released already
        target.owed -= key.charge
        key.charge = -1
        bit = self._bits.get(target.replica_id)
        if bit is not None:
            # The young blocks found at ``choose`` are still young unless the generations
            # turned over since (then everything is recorded again: prefix-closed).
            start = key.start if key.turn == self._turns else 0
            if start < len(key):
                self._record(key, bit, start)

    def _scan(self, candidates: Sequence[Target], key: list[int],
              anchor: int | None = None) -> tuple[int, int, bool, int] | None:
        """What the C helper's ``scan`` returns, in Python: None without a match anywhere and
        without an ``anchor``, else (the index of the candidate to take, its depth, whether
        its deepest block is young, the deepest depth found)."""
        depths = self._depths(candidates, key)
        least = candidates[0].in_flight
        for t in candidates:
            if t.in_flight < least:
                least = t.in_flight
        bound = balance_bound(least, self.balance_abs, self.balance_rel)
        favored = -1
        if anchor is not None:
            favored = first_within(candidates, anchor, bound)
            for t in candidates:  # what the C helper reads
                if t.replica_id not in self._rid_hashes:
                    self._rid_hashes[t.replica_id] = replica_hash(t.replica_id)
        if not depths and favored < 0:
            return None
        index, depth, young = self._best_scored(candidates, depths, bound, favored, anchor)
        return index, depth, young, next(iter(depths.values()))[0] if depths else 0

    def _depths(self, candidates: Sequence[Target],
                key: list[int]) -> dict[int, tuple[int, bool]]:
        """Replica bit -> (its matched depth, the number of leading blocks of ``key`` it holds;
        whether its deepest one is in the young generation), for the candidates that hold
        any, the deepest first (empty: no match).

        What a replica holds is prefix-closed (every prompt records all its blocks, the deep
        ones first), so the deepest match is found walking down from the deepest block, and
        the others' walking up from the first block, each stopping at the first miss."""
        yget = self._young.get
        oget = self._old.get
        bits = self._bits
        pending = 0
        for t in candidates:
            pending |= bits.get(t.replica_id, 0)
        depths: dict[int, tuple[int, bool]] = {}
        deepest = len(key) if pending else 0
        while deepest:  # down to the deepest block any candidate holds
            h = key[deepest - 1]
            mask = yget(h)
            young = mask is not None
            found = (mask if mask is not None else oget(h, 0)) & pending
            if found:
                pending &= ~found
                if found & (found - 1):
                    for bit in _bits_of(found):
                        depths[bit] = (deepest, young)
                else:  # one replica (the usual case)
                    depths[found] = (deepest, young)
                break
            deepest -= 1
        # The others: up from the first block while they still match.
        prev_young = False
        for j in range(deepest - 1):
            if not pending:
                break
            h = key[j]
            mask = yget(h)
            young = mask is not None
            held = (mask if mask is not None else oget(h, 0)) & pending
            if j and pending != held:
                for bit in _bits_of(pending & ~held):  # they hold exactly j blocks
                    depths[bit] = (j, prev_young)
            pending = held
            prev_young = young
        else:
            if deepest > 1 and pending:
                for bit in _bits_of(pending):
                    depths[bit] = (deepest - 1, prev_young)
        return depths

    def _best_scored(self, candidates: Sequence[Target],
                     depths: dict[int, tuple[int, bool]], bound: float,
                     favored: int, anchor: int | None) -> tuple[int, int, bool]:
        """The index of the candidate with the lowest in-flight count minus depth /
        blocks_per_request (for the ``favored`` index, at least ``anchor_credit`` requests
        less), among those with at most ``bound`` in flight (and its depths entry). Among
        ties, the heaviest rendezvous weight for ``anchor`` (the same on every load balancer),
        or without one a uniformly random one."""
        per = self.blocks_per_request
        owed_per = self.owed_weight / per
        credit = self.anchor_credit
        bits = self._bits
        none = (0, False)
        best = 0
        best_at = none
        best_score = float("inf")
        ties = 0
        for i, t in enumerate(candidates):
            load = t.in_flight
            if load > bound:
                continue
            at = depths.get(bits.get(t.replica_id, 0), none)
            credited = at[0] / per
            if i == favored and credit > credited:
                credited = credit
            score = load + t.owed * owed_per - credited
            if score < best_score:
                best, best_at, best_score, ties = i, at, score, 1
            elif score == best_score:
                if anchor is not None:
                    rh = self._rid_hashes
                    if weight(anchor, rh[t.replica_id]) > weight(
                            anchor, rh[candidates[best].replica_id]):
                        best, best_at = i, at
                    continue
                ties += 1
                if self.rng.randrange(ties) == 0:  # reservoir sampling, as pick_min
                    best, best_at = i, at
        return best, best_at[0], best_at[1]

    def record(self, key: list[int], replica_id: str) -> None:
        """Remember that ``replica_id`` served every block of ``key`` (now)."""
        self._record(key, self._bit(replica_id), 0)

    def _record(self, key: list[int], bit: int, start: int) -> None:
        """Record ``key[start:]`` for ``bit`` (the first ``start`` blocks hold it, young).

        The deepest block first: a shallow block is then always written no earlier than the
        deeper ones of the same prompt, so it is at least as young, and a replica's blocks
        stay prefix-closed through evictions (what ``_depths`` relies on)."""
        young = self._young
        if type(young) is not dict and _native_record is not None:  # Generations
            i = _native_record(young, self._old, key, bit, start, self._generation)
            if i >= 0:
                self._turn_over(key[:i], bit)
            return
        get = young.get
        for i in range(len(key) - 1, start - 1, -1):
            h = key[i]
            mask = get(h)
            if mask is None:  # new, or promoted from the old generation
                young[h] = self._old.pop(h, 0) | bit
                if len(young) >= self._generation:
                    self._turn_over(key[:i], bit)
                    return
            elif not mask & bit:
                young[h] = mask | bit

    def _turn_over(self, rest: list[int], bit: int) -> None:
        """The young generation is full: it becomes the old one and the old one is dropped,
        except ``rest`` (the shallower blocks of the prompt being recorded), which start the
        new young generation with what either knew of them, plus ``bit``."""
        dropped, young = self._old, self._young
        fresh = type(young)()  # the same kind as now (see _new_bit)
        for h in reversed(rest):
            mask = young.pop(h, None)
            fresh[h] = (dropped.get(h, 0) if mask is None else mask) | bit
        self._old, self._young = young, fresh
        self._turns += 1

    def _bit(self, replica_id: str) -> int:
        bit = self._bits.get(replica_id)
        return bit if bit is not None else self._new_bit(replica_id)

    def _new_bit(self, replica_id: str) -> int:
        used = 0
        for b in self._bits.values():
            used |= b
        bit = (used + 1) & ~used  # the lowest free bit
        if bit >> 64 and type(self._young) is not dict:  # more bits than a Generation holds
            self._young, self._old = dict(self._young.items()), dict(self._old.items())
        self._bits[replica_id] = bit
        return bit

    # -- replicas that leave ------------------------------------------------------------
    def on_targets_changed(self, targets: Sequence[Target]) -> None:
        live = {t.replica_id for t in targets}
        self._rid_hashes = {rid: replica_hash(rid) for rid in live}
        gone = 0
        for rid in [r for r in self._bits if r not in live]:
            gone |= self._bits.pop(rid)
        if not gone:
            return
        self._turns += 1  # a bit may be reused: what release assumes held is recorded again
        for table in (self._young, self._old):
            for h, mask in list(table.items()):
                if mask & gone:
                    if mask & ~gone:
                        table[h] = mask & ~gone
                    else:
                        del table[h]


def _in_flight(t: Target) -> int:
    return t.in_flight


def _bits_of(mask: int) -> list[int]:
    """The set bits of ``mask``, lowest first."""
    out = []
    while mask:
        bit = mask & -mask
        out.append(bit)
        mask ^= bit
    return out
