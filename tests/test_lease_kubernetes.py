"""The Kubernetes lease store (lb_agent/control/leases/kubernetes.py) against a fake API
server with the real server's resourceVersion rules (tests/kube_api_fake.py)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kube_api_fake import FakeLeaseApi

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseUnavailable
from lb_agent.control.leases import LeaseStoreError
from lb_agent.control.leases import open_store as open_any_store
from lb_agent.control.leases.kubernetes import (
    ADDRESS_ANNOTATION,
    KubeLeaseStore,
    format_time,
    open_store,
    parse_time,
)

NAME, NS = "svc-leader", "svc"
T0 = 1_900_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[FakeLeaseApi]:
    server = await FakeLeaseApi(allowed_names={NAME}).start()
    try:
        yield server
    finally:
        await server.stop()


def _token(tmp_path: Path, value: str = "sa-token") -> str:
    path = tmp_path / "token"
    path.write_text(value + "\n")
    return str(path)


def _store(api: FakeLeaseApi, tmp_path: Path, clock: Clock, name: str = NAME) -> KubeLeaseStore:
    return KubeLeaseStore(name, NS, api.url, token_file=_token(tmp_path), ca_file=None,
                          duration_seconds=15, clock=clock)


def test_microtime_round_trips() -> None:
    stamp = format_time(T0 + 0.25)
    assert stamp.endswith(".250000Z")
    assert parse_time(stamp) == T0 + 0.25
    assert parse_time("2030-03-17T17:46:40Z") == T0
    assert parse_time("not a time") is None and parse_time(None) is None


async def test_the_first_load_balancer_creates_the_lease_and_leads(
        api: FakeLeaseApi, tmp_path: Path) -> None:
    clock = Clock()
    state = await _store(api, tmp_path, clock).acquire_or_renew("pod-a", "10.0.0.1:20001")
    assert (state.holder, state.address, state.term) == ("pod-a", "10.0.0.1:20001", 1)
    assert state.expires_at == T0 + 15
    lease = api.lease(NAME, NS)
    assert lease["spec"] == {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                             "acquireTime": format_time(T0), "renewTime": format_time(T0),
                             "leaseTransitions": 1}
    assert lease["metadata"]["annotations"] == {ADDRESS_ANNOTATION: "10.0.0.1:20001"}
    assert api.statuses("POST") == [201]


async def test_a_held_lease_is_left_alone_and_renewed_by_its_holder(
        api: FakeLeaseApi, tmp_path: Path) -> None:
    clock = Clock()
    a, b = _store(api, tmp_path, clock), _store(api, tmp_path, clock)
    await a.acquire_or_renew("pod-a", "10.0.0.1:20001")
    version = api.lease(NAME, NS)["metadata"]["resourceVersion"]

    clock.now += 14
    seen = await b.acquire_or_renew("pod-b", "10.0.0.2:20001")
    assert (seen.holder, seen.address, seen.term) == ("pod-a", "10.0.0.1:20001", 1)
    assert api.lease(NAME, NS)["metadata"]["resourceVersion"] == version  # no write
    assert api.statuses("PUT") == []

    renewed = await a.acquire_or_renew("pod-a", "10.0.0.1:20001")
    assert (renewed.holder, renewed.term, renewed.expires_at) == ("pod-a", 1, T0 + 14 + 15)
    spec = api.lease(NAME, NS)["spec"]
    assert spec["acquireTime"] == format_time(T0)  # the same term
    assert spec["renewTime"] == format_time(T0 + 14)
    assert api.lease(NAME, NS)["metadata"]["resourceVersion"] != version


async def test_an_expired_lease_goes_to_the_next_load_balancer_as_a_new_term(
        api: FakeLeaseApi, tmp_path: Path) -> None:
    clock = Clock()
    a, b = _store(api, tmp_path, clock), _store(api, tmp_path, clock)
    await a.acquire_or_renew("pod-a", "10.0.0.1:20001")
    clock.now += 15  # renewTime + leaseDurationSeconds: expired
    assert a.state_of(api.lease(NAME, NS)).holder is None
    state = await b.acquire_or_renew("pod-b", "10.0.0.2:20001")
    assert (state.holder, state.address, state.term) == ("pod-b", "10.0.0.2:20001", 2)
    spec = api.lease(NAME, NS)["spec"]
    assert spec["acquireTime"] == spec["renewTime"] == format_time(T0 + 15)
    # The old holder learns it on its next call and does not take it back.
    again = await a.acquire_or_renew("pod-a", "10.0.0.1:20001")
    assert (again.holder, again.term) == ("pod-b", 2)


async def test_two_load_balancers_taking_an_expired_lease_at_once_one_wins(
        api: FakeLeaseApi, tmp_path: Path) -> None:
    """Both read the same resourceVersion; the API server accepts the first update and
    refuses the second with 409 Conflict; the loser reports the winner."""
    clock = Clock()
    await _store(api, tmp_path, clock).acquire_or_renew("pod-old", "10.0.0.9:20001")
    clock.now += 60
    api.reads = 0
    api.hold_writes_for_reads = 2  # neither writes before both have read
    b, c = _store(api, tmp_path, clock), _store(api, tmp_path, clock)
    got_b, got_c = await asyncio.gather(b.acquire_or_renew("pod-b", "10.0.0.2:20001"),
                                        c.acquire_or_renew("pod-c", "10.0.0.3:20001"))
    assert sorted(api.statuses("PUT")) == [200, 409]
    winner = api.lease(NAME, NS)["spec"]["holderIdentity"]
    assert winner in ("pod-b", "pod-c")
    assert got_b.holder == got_c.holder == winner
    assert got_b.term == got_c.term == 2
    assert got_b.address == got_c.address == {"pod-b": "10.0.0.2:20001",
                                              "pod-c": "10.0.0.3:20001"}[winner]


async def test_two_load_balancers_creating_the_lease_at_once_one_wins(
        api: FakeLeaseApi, tmp_path: Path) -> None:
    clock = Clock()
    api.hold_writes_for_reads = 2
    b, c = _store(api, tmp_path, clock), _store(api, tmp_path, clock)
    got_b, got_c = await asyncio.gather(b.acquire_or_renew("pod-b", "10.0.0.2:20001"),
                                        c.acquire_or_renew("pod-c", "10.0.0.3:20001"))
    assert sorted(api.statuses("POST")) == [201, 409]
    winner = api.lease(NAME, NS)["spec"]["holderIdentity"]
    assert got_b.holder == got_c.holder == winner and got_b.term == 1


async def test_release_hands_over_at_once(api: FakeLeaseApi, tmp_path: Path) -> None:
    clock = Clock()
    a, b = _store(api, tmp_path, clock), _store(api, tmp_path, clock)
    await a.acquire_or_renew("pod-a", "10.0.0.1:20001")
    await b.release("pod-b")  # not the holder: nothing written
    assert api.statuses("PUT") == []
    await a.release("pod-a")
    lease = api.lease(NAME, NS)
    assert "holderIdentity" not in lease["spec"]
    assert ADDRESS_ANNOTATION not in lease["metadata"]["annotations"]
    assert lease["spec"]["leaseTransitions"] == 1
    clock.now += 1  # well within the old holder's duration
    state = await b.acquire_or_renew("pod-b", "10.0.0.2:20001")
    assert (state.holder, state.term) == ("pod-b", 2)


async def test_api_errors_raise_lease_unavailable_with_the_reason(
        api: FakeLeaseApi, tmp_path: Path) -> None:
    clock = Clock()
    wrong_token = KubeLeaseStore(NAME, NS, api.url, token_file=_token(tmp_path, "other"),
                                 ca_file=None, clock=clock)
    with pytest.raises(LeaseUnavailable, match=r"Lease svc/svc-leader: GET answered 401"):
        await wrong_token.acquire_or_renew("pod-a", "10.0.0.1:20001")
    other = _store(api, tmp_path, clock, name="someone-elses-lease")
    with pytest.raises(LeaseUnavailable, match=r"GET answered 403: .*forbidden"):
        await other.acquire_or_renew("pod-a", "10.0.0.1:20001")
    missing = KubeLeaseStore(NAME, NS, api.url, token_file=str(tmp_path / "nope"),
                             ca_file=None, clock=clock)
    with pytest.raises(LeaseUnavailable, match="ServiceAccount token"):
        await missing.acquire_or_renew("pod-a", "10.0.0.1:20001")
    url = api.url
    await api.stop()
    gone = KubeLeaseStore(NAME, NS, url, token_file=_token(tmp_path), ca_file=None, clock=clock)
    with pytest.raises(LeaseUnavailable, match=r"GET http://127\.0\.0\.1"):
        await gone.acquire_or_renew("pod-a", "10.0.0.1:20001")


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    keyfile, certfile = tmp_path / "server.key", tmp_path / "server.crt"
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keyfile, certfile


async def test_in_cluster_the_pods_service_account_and_the_cluster_ca_are_used(
        tmp_path: Path) -> None:
    """open_store as in a pod: $KUBERNETES_SERVICE_HOST/PORT, the mounted token, CA and
    namespace; the server's certificate is checked against that CA."""
    keyfile, certfile = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    api = await FakeLeaseApi().start(context)
    try:
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text("sa-token")
        (account / "ca.crt").write_bytes(certfile.read_bytes())
        (account / "namespace").write_text(NS)
        port = api.url.rsplit(":", 1)[1]
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        store = open_store(LeaseConfig(kind="kubernetes", name=NAME, duration_seconds=10),
                           environ=env, account_dir=str(account))
        assert store.api_url == api.url and store.namespace == NS
        assert store.duration_seconds == 10
        state = await store.acquire_or_renew("pod-a", "10.0.0.1:20001")
        assert state.holder == "pod-a"
        assert api.lease(NAME, NS)["spec"]["leaseDurationSeconds"] == 10

        (tmp_path / "other").mkdir()
        (account / "ca.crt").write_bytes(_certificate(tmp_path / "other")[1].read_bytes())
        untrusted = open_store(LeaseConfig(kind="kubernetes", name=NAME, namespace=NS),
                               environ=env, account_dir=str(account))
        with pytest.raises(LeaseUnavailable, match="certificate verify failed"):
            await untrusted.acquire_or_renew("pod-a", "10.0.0.1:20001")
    finally:
        await api.stop()


def test_outside_a_pod_or_without_a_name_the_section_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LeaseStoreError, match=r"KUBERNETES_SERVICE_HOST is not set"):
        open_any_store(LeaseConfig(kind="kubernetes", name=NAME, namespace=NS))
    with pytest.raises(LeaseStoreError, match=r"lease.name"):
        open_store(LeaseConfig(kind="kubernetes", namespace=NS), environ={})
    with pytest.raises(LeaseStoreError, match=r"lease.namespace"):
        open_store(LeaseConfig(kind="kubernetes", name=NAME),
                   environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
                   account_dir=str(tmp_path))
    store = open_store(LeaseConfig(kind="kubernetes", name=NAME, namespace=NS),
                       environ={"KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert store.api_url == "https://[fd00::1]:443"
