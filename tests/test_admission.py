"""Admission at the public endpoint: API keys (401), rate limits (429), the FIFO wait queue
(order, timeout, disconnect, scale from zero) and per-replica circuit breakers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from agent_helpers import (
    Replica,
    agent_config,
    auth,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
    until,
)

from lb_agent.config import AgentConfig, ConfigError
from lb_agent.dataplane.admission import ApiKeys, Breaker, RateLimiter

KEY = "sk-test-0123456789abcdef"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- units ----------------------------------------------------------------------------------

def test_api_keys_accept_only_bearer_with_a_known_key() -> None:
    keys = ApiKeys([KEY, "another-key-0123456789"])
    assert keys.check(b"Bearer " + KEY.encode()) == "key-0"
    assert keys.check(b"bearer another-key-0123456789") == "key-1"
    for bad in (None, b"", KEY.encode(), b"Bearer ", b"Bearer " + KEY.encode()[:-1],
                b"Basic " + KEY.encode()):
        assert keys.check(bad) is None
    assert not ApiKeys([])


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    rl = RateLimiter(2.0, 3, clock=clock)
    assert [rl.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert rl.take("b") == 0.0  # per key
    clock.t += 0.5
    assert rl.take("a") == 0.0 and rl.take("a") > 0
    clock.t += 100  # refills up to the burst only
    assert [rl.take("a") for _ in range(4)].count(0.0) == 3


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock()
    b = Breaker(failures=3, cooldown=10, successes=2, clock=clock)
    for _ in range(2):
        b.record(False)
    b.record(True)  # a success resets the consecutive count
    for _ in range(2):
        b.record(False)
    assert b.state == "closed" and b.allows()
    b.record(False)
    assert b.state == "open" and not b.allows() and b.level == 2
    clock.t += 9.9
    assert not b.allows()
    clock.t += 0.2
    assert b.allows() and b.state == "half_open" and b.level == 1
    b.started()
    assert not b.allows()  # one trial at a time
    b.record(True)
    assert b.state == "half_open" and b.allows()
    b.started()
    b.record(False)  # a failed trial opens it again, for a full cool-down
    assert b.state == "open" and not b.allows()
    clock.t += 10.1
    for _ in range(2):
        assert b.allows()
        b.started()
        b.record(True)
    assert b.state == "closed" and b.level == 0


def test_admission_config_defaults_off_and_validates(tmp_path: Any) -> None:
    cfg = agent_config(tmp_path)
    assert cfg.admission.api_keys == [] and cfg.admission.rate_limit_rps == 0
    assert cfg.admission.breaker_failures == 0 and cfg.queue_wait_seconds == 0
    assert KEY not in repr(agent_config(tmp_path, admission={"api_keys": [KEY]}))
    with pytest.raises(ConfigError) as info:
        agent_config(tmp_path, admission={"api_keys": ["short"], "rate_limit_rps": -1})
    fields = {f for f, _ in info.value.issues}
    assert {"admission.api_keys", "admission.rate_limit_rps"} <= fields
    assert "short" not in str(info.value)
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(f"# keys\n{KEY}\n\n")
    assert agent_config(tmp_path, admission={"api_keys_file": str(keyfile)}).admission.api_keys \
        == [KEY]
    with pytest.raises(ConfigError, match=r"admission\.api_keys_file"):
        agent_config(tmp_path, admission={"api_keys_file": str(tmp_path / "missing")})


def test_queue_is_on_by_default_when_the_service_can_scale_to_zero(tmp_path: Any) -> None:
    zero = {"service_spec": {"replica_policy": {"min_replicas": 0, "max_replicas": 2}}}
    one = {"service_spec": {"replica_policy": {"min_replicas": 1}}}
    assert agent_config(tmp_path, service=zero).queue_wait_seconds == 300
    assert agent_config(tmp_path, service=one).queue_wait_seconds == 0
    assert agent_config(tmp_path, service=zero,
                        proxy={"queue_wait_seconds": 0}).queue_wait_seconds == 0
    assert isinstance(agent_config(tmp_path, service=zero), AgentConfig)


# -- against real replicas -------------------------------------------------------------------

async def test_api_key_required_on_the_public_endpoint_only(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], admission={"api_keys": [KEY]})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(timeout=10) as c:
                for hdrs in ({}, {"Authorization": "Bearer wrong-key-0123456789"},
                             {"Authorization": KEY}):
                    r = await c.post(agent.url + "/v1/completions", json={"prompt": "x"},
                                     headers=hdrs)
                    assert r.status_code == 401
                    assert r.json()["error"] == "unauthorized"
                    assert r.headers["www-authenticate"] == "Bearer"
                assert rep.state.hits == 0
                r = await c.get(agent.url + "/x", headers={"Authorization": f"Bearer {KEY}"})
                assert r.status_code == 200 and rep.state.hits == 1
                # The admin API keeps its own token; probes keep reaching the replica.
                assert (await c.get(agent.admin_url + "/status", headers=auth())).status_code \
                    == 200
                metrics = (await c.get(agent.admin_url + "/metrics", headers=auth())).text
            assert 'skyform_lb_rejected_total{reason="unauthorized"} 3.0' in metrics
            assert rep.state.probes
    finally:
        await rep.stop()


async def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    other = "second-key-0123456789"
    try:
        cfg = agent_config(tmp_path, [rep.url], admission={
            "api_keys": [KEY, other], "rate_limit_rps": 0.5, "rate_limit_burst": 2})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as c:
                codes = [(await c.get("/", headers={"Authorization": f"Bearer {KEY}"}))
                         for _ in range(3)]
                assert [r.status_code for r in codes] == [200, 200, 429]
                assert codes[2].json()["error"] == "rate_limited"
                assert 1 <= int(codes[2].headers["retry-after"]) <= 2
                # Another key has its own bucket.
                r = await c.get("/", headers={"Authorization": f"Bearer {other}"})
                assert r.status_code == 200
            assert rep.state.hits == 3
    finally:
        await rep.stop()


async def test_queue_is_fifo_at_the_per_replica_cap(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], proxy={"queue_wait_seconds": 10},
                           admission={"max_in_flight_per_replica": 1})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            done: list[int] = []
            async with httpx.AsyncClient(base_url=agent.url, timeout=20) as c:
                async def one(i: int) -> None:
                    r = await c.get(f"/{'hold' if i == 0 else 'slow'}?t=0.01&i={i}")
                    assert r.status_code == 200
                    done.append(i)

                # 0 holds the replica's one slot; 1, 2, 3, 4 arrive in that order (each is
                # in the queue before the next is sent).
                tasks = [asyncio.create_task(one(0))]
                await until(lambda: rep.state.active == 1, "request 0 to hold the slot")
                for i in range(1, 5):
                    tasks.append(asyncio.create_task(one(i)))
                    await until(lambda i=i: len(agent.runtime.queue) == i,
                                f"request {i} to be queued")
                rep.state.release.set()
                await asyncio.gather(*tasks)
            assert done == [0, 1, 2, 3, 4]
            assert rep.state.max_active == 1  # the cap held
            assert len(agent.runtime.queue) == 0
    finally:
        await rep.stop()


async def test_queue_timeout_gives_503_with_retry_after(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], proxy={"queue_wait_seconds": 0.3},
                           admission={"max_in_flight_per_replica": 1})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as c:
                busy = asyncio.create_task(c.get("/hold"))
                await until(lambda: rep.state.active == 1, "the first request to hold the slot")
                r = await c.get("/")
                assert r.status_code == 503 and "retry-after" in r.headers
                assert r.json()["error"] == "no_replica_available"
                # It gave up at its timeout: the slot it waited for is still held.
                assert not busy.done() and rep.state.hits == 1
                rep.state.release.set()
                assert (await busy).status_code == 200
                metrics = (await c.get(agent.admin_url + "/metrics", headers=auth())).text
            assert 'skyform_lb_rejected_total{reason="queue_timeout"} 1.0' in metrics
            assert "skyform_lb_queue_wait_seconds_count 1.0" in metrics
            assert "skyform_lb_queue_depth 0.0" in metrics
    finally:
        await rep.stop()


async def test_a_client_that_leaves_frees_its_place_at_once(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], proxy={"queue_wait_seconds": 10},
                           admission={"max_in_flight_per_replica": 1})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as c:
                busy = asyncio.create_task(c.get("/hold"))
                await until(lambda: rep.state.active == 1, "the first request to hold the slot")
                port = agent.runtime.bound_ports["public"]
                _, quitter = await asyncio.open_connection("127.0.0.1", port)
                quitter.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                await quitter.drain()
                await until(lambda: len(agent.runtime.queue) == 1, "the leaver to be queued")
                quitter.close()
                # The leaver's place is gone while the busy request still holds the slot.
                await until(lambda: len(agent.runtime.queue) == 0, "the leaver's place to go")
                assert not busy.done()
                rep.state.release.set()
                assert (await busy).status_code == 200
                assert (await c.get("/")).status_code == 200
            assert rep.state.hits == 2  # the leaver never reached the replica
    finally:
        await rep.stop()


async def test_scale_from_zero_first_request_waits_for_the_replica_it_wakes(
    tmp_path: Any,
) -> None:
    zero = {"name": "svc", "service_spec": {"replica_policy": {"min_replicas": 0}}}
    cfg = agent_config(tmp_path, [], service=zero)
    assert cfg.queue_wait_seconds == 300
    rep = Replica("woken")
    try:
        async with running_agent(cfg) as agent:
            async with httpx.AsyncClient(timeout=30) as c:
                first = asyncio.create_task(c.get(agent.url + "/v1/models"))
                # The request is queued (it also counts as an arrival for the autoscaler).
                await until(lambda: len(agent.runtime.queue) == 1, "the request to be queued")
                assert not first.done()
                assert agent.runtime.arrivals.count(agent.runtime.clock()) == 1
                # The replica it woke starts and registers; once READY it gets the request.
                await rep.start()
                r = await c.post(agent.admin_url + "/replicas", headers=auth(),
                                 json={"replica_id": "r-1", "url": rep.url})
                assert r.status_code == 200
                answer = await asyncio.wait_for(first, 20)
            assert answer.status_code == 200 and answer.json()["replica"] == "woken"
            assert len(agent.runtime.queue) == 0
    finally:
        await rep.stop()


async def test_breaker_opens_on_failures_and_closes_after_recovery(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    rep.state.fail_status = 500
    try:
        cfg = agent_config(tmp_path, [rep.url], admission={
            "breaker_failures": 2, "breaker_cooldown_seconds": 0.4, "breaker_successes": 1})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(timeout=10) as c:
                async def status() -> str:
                    s = (await c.get(agent.admin_url + "/status", headers=auth())).json()
                    return str(s["replicas"][0]["breaker"])

                assert [(await c.post(agent.url + "/")).status_code for _ in range(2)] \
                    == [500, 500]
                assert await status() == "open"
                r = await c.post(agent.url + "/")
                assert r.status_code == 503 and rep.state.hits == 2  # not sent
                metrics = (await c.get(agent.admin_url + "/metrics", headers=auth())).text
                assert 'skyform_lb_breaker_state{replica="static-0"} 2.0' in metrics
                rep.state.fail_status = None
                await asyncio.sleep(0.45)
                r = await c.post(agent.url + "/")  # the half-open trial succeeds
                assert r.status_code == 200 and rep.state.hits == 3
                assert await status() == "closed"
    finally:
        await rep.stop()


# -- the client's address behind a load balancer (admission.trusted_proxies) ----------------

def _scope(peer: str, *xff: str) -> dict[str, Any]:
    return {"client": (peer, 5555),
            "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}


def test_client_address_reads_x_forwarded_for_only_from_a_trusted_peer() -> None:
    from lb_agent.dataplane.forwarding import client_address, trusted_networks

    lb = trusted_networks(["10.0.0.0/8", "fd00::/8"])
    assert client_address(_scope("203.0.113.9", "1.1.1.1")) == "203.0.113.9"
    assert client_address(_scope("203.0.113.9", "1.1.1.1"), lb) == "203.0.113.9"  # spoofed
    assert client_address(_scope("10.1.2.3", "198.51.100.7"), lb) == "198.51.100.7"
    # From the right: the client may prepend anything; trusted hops are skipped.
    assert client_address(_scope("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9"), lb) \
        == "198.51.100.7"
    assert client_address(_scope("10.1.2.3", "6.6.6.6", "198.51.100.7:4711"), lb) \
        == "198.51.100.7"
    assert client_address(_scope("fd00::1", "[2001:db8::5]:443"), lb) == "2001:db8::5"
    assert client_address(_scope("::ffff:10.0.0.2", "198.51.100.7"), lb) == "198.51.100.7"
    # Nothing (or garbage) forwarded: the nearest trusted hop, never a made-up address.
    assert client_address(_scope("10.1.2.3"), lb) == "10.1.2.3"
    assert client_address(_scope("10.1.2.3", "6.6.6.6, not-an-ip, 10.2.2.2"), lb) \
        == "10.2.2.2"
    assert client_address({"headers": []}, lb) == "?"


def test_trusted_proxies_must_be_cidrs(tmp_path: Any) -> None:
    cfg = agent_config(tmp_path, admission={"trusted_proxies": ["10.0.0.0/8", "::1"]})
    assert cfg.admission.trusted_proxies == ["10.0.0.0/8", "::1"]
    with pytest.raises(ConfigError) as info:
        agent_config(tmp_path, admission={"trusted_proxies": ["10.0.0.0/8", "lb.local"]})
    assert info.value.field == "admission.trusted_proxies"
    assert "entry 1 'lb.local' is not a CIDR" in info.value.message


async def _codes(url: str, xffs: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return [(await c.get("/", headers={"X-Forwarded-For": x})).status_code for x in xffs]


async def test_keyless_rate_limit_ignores_forwarded_for_from_an_untrusted_peer(
        tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], admission={
            "rate_limit_rps": 0.01, "rate_limit_burst": 1, "trusted_proxies": ["10.0.0.0/8"]})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            # The peer (127.0.0.1) is not trusted: a spoofed header cannot pick a new bucket.
            assert await _codes(agent.url, ["1.1.1.1", "2.2.2.2", "3.3.3.3"]) \
                == [200, 429, 429]
    finally:
        await rep.stop()


async def test_keyless_rate_limit_buckets_by_forwarded_client_behind_a_trusted_proxy(
        tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        cfg = agent_config(tmp_path, [rep.url], admission={
            "rate_limit_rps": 0.01, "rate_limit_burst": 1, "trusted_proxies": ["127.0.0.1/32"]})
        async with running_agent(cfg) as agent:
            await agent.wait_ready(1)
            # The peer is the trusted "load balancer": each real client has its own bucket,
            # and what a client prepends to the header does not move it to another.
            assert await _codes(agent.url, [
                "1.1.1.1", "2.2.2.2", "1.1.1.1", "9.9.9.9, 2.2.2.2"]) == [200, 200, 429, 429]
            assert rep.state.hits == 2
    finally:
        await rep.stop()


# -- keys given as digests (what the deployed agent config holds) ----------------------------

def _digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def test_named_digests_accept_their_keys_only() -> None:
    keys = ApiKeys([], [("alice", _digest(KEY))])
    assert keys.check(b"Bearer " + KEY.encode()) == "alice"
    assert keys.check(b"Bearer " + _digest(KEY).encode()) is None  # the digest is no key


def test_digest_entries_validate_and_load_from_a_json_key_file(tmp_path: Any) -> None:
    import json

    good = [{"name": "alice", "sha256": _digest(KEY)},
            {"name": "bob", "sha256": _digest(KEY + "b"), "rate_limit_rps": 0.5,
             "rate_limit_burst": 1}]
    cfg = agent_config(tmp_path, admission={"api_key_digests": good[:1]})
    assert [d.name for d in cfg.admission.api_key_digests] == ["alice"]
    keyfile = tmp_path / "api-keys.json"
    keyfile.write_text(json.dumps(good[1:]))
    cfg = agent_config(tmp_path, admission={"api_key_digests": good[:1],
                                            "api_keys_file": str(keyfile)})
    assert [(d.name, d.rate_limit_rps) for d in cfg.admission.api_key_digests] \
        == [("alice", None), ("bob", 0.5)]
    for bad, where in (
            ([{"name": "alice", "sha256": "ab"}], "admission.api_key_digests[0].sha256"),
            ([good[0], {**good[1], "name": "alice"}], "admission.api_key_digests"),
            ([{**good[0], "rate_limit_rps": -1}],
             "admission.api_key_digests[0].rate_limit_rps")):
        with pytest.raises(ConfigError) as info:
            agent_config(tmp_path, admission={"api_key_digests": bad})
        assert info.value.field == where
    keyfile.write_text('[{"name": "x", "sha256": "zz"}]')
    with pytest.raises(ConfigError) as info:
        agent_config(tmp_path, admission={"api_keys_file": str(keyfile)})
    assert info.value.field == "admission.api_keys_file"
    assert str(keyfile) in info.value.message and "[0].sha256" in info.value.message
    keyfile.write_text("[not json")
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        agent_config(tmp_path, admission={"api_keys_file": str(keyfile)})


def test_a_key_with_its_own_limit_uses_its_own_bucket(tmp_path: Any) -> None:
    from lb_agent.runtime import AgentRuntime

    cfg = agent_config(tmp_path, admission={
        "rate_limit_rps": 100, "api_key_digests": [
            {"name": "alice", "sha256": _digest(KEY)},
            {"name": "bob", "sha256": _digest(KEY + "b"), "rate_limit_rps": 0.01,
             "rate_limit_burst": 1},
            {"name": "free", "sha256": _digest(KEY + "f"), "rate_limit_rps": 0}]})
    rt = AgentRuntime(cfg)
    try:
        assert rt.limiter_for("alice") is rt.rate_limiter is rt.limiter_for(None)
        bob = rt.limiter_for("bob")
        assert bob.take("bob") == 0 and bob.take("bob") > 0
        assert not rt.limiter_for("free")  # rate 0: this key is not limited
    finally:
        rt.close()
