"""The bucket lease stores (lb_agent/control/leases/s3.py, gcs.py) against small fake S3 and
GCS servers on 127.0.0.1 that implement the documented conditional-write semantics:

* S3 ``PutObject``: ``If-None-Match: *`` fails with 412 ``PreconditionFailed`` when the key
  exists; ``If-Match: <ETag>`` fails with 412 when the ETag differs and 404 ``NoSuchKey`` when
  the key is absent; a concurrent conditional write may get 409
  ``ConditionalRequestConflict``; a GET of a missing key is 404 ``NoSuchKey`` (403
  ``AccessDenied`` to a caller without ``s3:ListBucket``).
* GCS upload: ``ifGenerationMatch=0`` fails with 412 when a live object exists,
  ``ifGenerationMatch=<g>`` when the live generation is not ``g`` (or there is none); a
  download carries the generation in ``x-goog-generation``.

Both fakes also check the credentials the stores take from the (fake) instance metadata:
S3 a SigV4 ``Authorization`` with the role's key and session token, GCS the metadata
server's bearer token. Time is a fake clock: no test sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseUnavailable
from lb_agent.control.leases import LeaseStoreError, open_store
from lb_agent.control.leases.gcs import GcsLeaseStore
from lb_agent.control.leases.objectlease import ObjectLease
from lb_agent.control.leases.s3 import Credentials, S3LeaseStore, sigv4_headers

BUCKET, KEY = "stack-files", "lease/service.json"
ROLE_KEY, ROLE_SECRET, ROLE_TOKEN = "ASIAFAKEROLE", "fake/secret", "fake-session-token"
GCP_TOKEN = "ya29.fake"
START = 1_800_000_000.0
DURATION = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Fake:
    """Shared state of a fake bucket: objects by key -> (body, version)."""

    objects: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: The next ``hold_reads`` object reads wait until all of them arrived: racing readers
    #: all read before any of them writes.
    hold_reads: int = 0
    reads_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: S3: answer the next conditional PUT with 409 ConditionalRequestConflict.
    conflict_next: bool = False
    #: S3: a missing key answers 403 AccessDenied (a caller without s3:ListBucket).
    no_list: bool = False
    fail_status: int | None = None
    refused_auth: int = 0
    #: How often the stores fetched credentials (IMDS role keys / metadata token), and the
    #: expiry the fake metadata hands out.
    credential_fetches: int = 0
    credential_expiry: str = "2099-01-01T00:00:00Z"
    token_seconds: int = 3599
    generation: int = 1000
    writes: list[tuple[str, dict[str, str]]] = field(default_factory=list)


async def _gate(fake: Fake) -> None:
    if fake.hold_reads > 0:
        fake.hold_reads -= 1
        if fake.hold_reads == 0:
            fake.reads_arrived.set()
        else:
            await fake.reads_arrived.wait()


def _s3_error(status: int, code: str) -> web.Response:
    return web.Response(status=status, content_type="application/xml",
                        text=f"<?xml version=\"1.0\"?><Error><Code>{code}</Code></Error>")


def s3_app(fake: Fake) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        assert request.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        return web.Response(text="imds-token")

    async def metadata(request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") != "imds-token":
            return web.Response(status=401)
        path = request.path
        if path == "/latest/meta-data/placement/region":
            return web.Response(text="us-east-1")
        if path == "/latest/meta-data/iam/security-credentials/":
            return web.Response(text="skyform-controller\n")
        if path == "/latest/meta-data/iam/security-credentials/skyform-controller":
            fake.credential_fetches += 1
            return web.json_response({"AccessKeyId": ROLE_KEY, "SecretAccessKey": ROLE_SECRET,
                                      "Token": ROLE_TOKEN,
                                      "Expiration": fake.credential_expiry})
        return web.Response(status=404)

    async def obj(request: web.Request) -> web.Response:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        if (not auth.startswith(f"AWS4-HMAC-SHA256 Credential={ROLE_KEY}/")
                or "/us-east-1/s3/aws4_request" not in auth
                or request.headers.get("x-amz-security-token") != ROLE_TOKEN
                or request.headers.get("x-amz-content-sha256")
                != hashlib.sha256(body).hexdigest()):
            fake.refused_auth += 1
            return _s3_error(403, "InvalidToken")
        if request.match_info["bucket"] != BUCKET:
            return _s3_error(404, "NoSuchBucket")
        if fake.fail_status is not None:
            return _s3_error(fake.fail_status, "InternalError")
        key = request.match_info["key"]
        current = fake.objects.get(key)
        if request.method == "GET":
            await _gate(fake)
            if current is None:
                return _s3_error(403, "AccessDenied") if fake.no_list \
                    else _s3_error(404, "NoSuchKey")
            return web.Response(body=current[0], headers={"ETag": current[1]})
        fake.writes.append((key, {k: v for k, v in request.headers.items()
                                  if k.lower().startswith("if-")}))
        if_none, if_match = request.headers.get("If-None-Match"), request.headers.get("If-Match")
        if (if_none or if_match) and fake.conflict_next:
            fake.conflict_next = False
            return _s3_error(409, "ConditionalRequestConflict")
        if if_none == "*" and current is not None:
            return _s3_error(412, "PreconditionFailed")
        if if_match is not None:
            if current is None:
                return _s3_error(404, "NoSuchKey")
            if current[1] != if_match:
                return _s3_error(412, "PreconditionFailed")
        fake.generation += 1
        etag = f'"{hashlib.md5(body).hexdigest()}{fake.generation}"'
        fake.objects[key] = (body, etag)
        return web.Response(headers={"ETag": etag})

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/latest/{rest:.*}", metadata)
    app.router.add_route("*", "/{bucket}/{key:.+}", obj)
    return app


def gcs_app(fake: Fake) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403)
        fake.credential_fetches += 1
        return web.json_response({"access_token": GCP_TOKEN,
                                  "expires_in": fake.token_seconds, "token_type": "Bearer"})

    def authorized(request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {GCP_TOKEN}"
        fake.refused_auth += 0 if ok else 1
        return ok

    async def download(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"code": 401}}, status=401)
        if fake.fail_status is not None:
            return web.json_response({"error": {"code": fake.fail_status}},
                                     status=fake.fail_status)
        assert request.query.get("alt") == "media"
        if request.match_info["bucket"] != BUCKET:
            return web.json_response({"error": {"code": 404}}, status=404)
        await _gate(fake)
        current = fake.objects.get(request.match_info["name"])
        if current is None:
            return web.json_response({"error": {"code": 404, "message": "No such object"}},
                                     status=404)
        return web.Response(body=current[0], headers={"x-goog-generation": current[1]})

    async def upload(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"code": 401}}, status=401)
        if fake.fail_status is not None:
            return web.json_response({"error": {"code": fake.fail_status}},
                                     status=fake.fail_status)
        assert request.query.get("uploadType") == "media"
        name, wanted = request.query["name"], request.query.get("ifGenerationMatch")
        body = await request.read()
        fake.writes.append((name, {"ifGenerationMatch": wanted or ""}))
        current = fake.objects.get(name)
        if wanted is not None:
            live = current[1] if current is not None else "0"
            if wanted != live:
                return web.json_response({"error": {"code": 412,
                                                    "message": "Precondition Failed"}},
                                         status=412)
        fake.generation += 1
        fake.objects[name] = (body, str(fake.generation))
        return web.json_response({"bucket": BUCKET, "name": name,
                                  "generation": str(fake.generation)})

    app = web.Application()
    app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/token", token)
    app.router.add_get("/storage/v1/b/{bucket}/o/{name}", download)
    app.router.add_post("/upload/storage/v1/b/{bucket}/o", upload)
    return app


@dataclass
class Bucket:
    cloud: str
    fake: Fake
    url: str
    clock: Clock
    stores: list[ObjectLease] = field(default_factory=list)

    def store(self) -> ObjectLease:
        made: ObjectLease
        if self.cloud == "s3":
            made = S3LeaseStore(BUCKET, KEY, DURATION, endpoint=self.url,
                                metadata_url=self.url, clock=self.clock)
        else:
            made = GcsLeaseStore(BUCKET, KEY, DURATION, api_url=self.url,
                                 metadata_url=self.url, clock=self.clock)
        self.stores.append(made)
        return made

    def record(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.fake.objects[KEY][0])
        return loaded


@pytest.fixture(params=["s3", "gcs"])
async def bucket(request: pytest.FixtureRequest) -> AsyncIterator[Bucket]:
    async for made in _serve(request.param):
        yield made


@pytest.fixture
async def s3_bucket() -> AsyncIterator[Bucket]:
    async for made in _serve("s3"):
        yield made


async def _serve(cloud: str) -> AsyncIterator[Bucket]:
    fake = Fake()
    app = s3_app(fake) if cloud == "s3" else gcs_app(fake)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    made = Bucket(cloud, fake, f"http://127.0.0.1:{port}", Clock())
    yield made
    for store in made.stores:
        await store.close()  # type: ignore[attr-defined]
    await runner.cleanup()


async def test_first_acquire_creates_the_record(bucket: Bucket) -> None:
    state = await bucket.store().acquire_or_renew("lb-a", "10.0.0.1:20001")
    assert (state.holder, state.address, state.term) == ("lb-a", "10.0.0.1:20001", 1)
    assert state.expires_at == START + DURATION
    assert bucket.record() == {"holder": "lb-a", "address": "10.0.0.1:20001", "term": 1,
                               "expires_at": START + DURATION}
    # Created only-if-absent.
    condition = bucket.fake.writes[0][1]
    assert condition == ({"If-None-Match": "*"} if bucket.cloud == "s3"
                         else {"ifGenerationMatch": "0"})
    assert bucket.fake.refused_auth == 0


async def test_others_see_the_holder_and_renewal_keeps_the_term(bucket: Bucket) -> None:
    a, b = bucket.store(), bucket.store()
    await a.acquire_or_renew("lb-a", "10.0.0.1:20001")
    seen = await b.acquire_or_renew("lb-b", "10.0.0.2:20001")
    assert (seen.holder, seen.address, seen.term) == ("lb-a", "10.0.0.1:20001", 1)
    assert len(bucket.fake.writes) == 1  # b wrote nothing
    bucket.clock.now += 5
    renewed = await a.acquire_or_renew("lb-a", "10.0.0.1:20001")
    assert (renewed.holder, renewed.term) == ("lb-a", 1)
    assert renewed.expires_at == START + 5 + DURATION
    # The renewal names the version it read.
    assert bucket.fake.writes[-1][1] != ({"If-None-Match": "*"} if bucket.cloud == "s3"
                                         else {"ifGenerationMatch": "0"})


async def test_two_stores_racing_for_an_expired_lease_exactly_one_wins(bucket: Bucket) -> None:
    dead = bucket.store()
    await dead.acquire_or_renew("lb-dead", "10.0.0.9:20001")
    bucket.clock.now += DURATION + 1
    a, b = bucket.store(), bucket.store()
    # Both read the expired record before either writes.
    bucket.fake.hold_reads = 2
    results = await asyncio.gather(a.acquire_or_renew("lb-a", "10.0.0.1:20001"),
                                   b.acquire_or_renew("lb-b", "10.0.0.2:20001"))
    winners = {s.holder for s in results}
    assert len(winners) == 1 and winners <= {"lb-a", "lb-b"}
    winner = winners.pop()
    assert all(s.term == 2 for s in results)
    assert bucket.record()["holder"] == winner and bucket.record()["term"] == 2
    # Two conditional writes were made on the same version; one was refused.
    assert len(bucket.fake.writes) == 3
    assert bucket.fake.writes[1][1] == bucket.fake.writes[2][1]


async def test_racing_creates_of_an_absent_lease_exactly_one_wins(bucket: Bucket) -> None:
    a, b = bucket.store(), bucket.store()
    bucket.fake.hold_reads = 2
    results = await asyncio.gather(a.acquire_or_renew("lb-a", "a:1"),
                                   b.acquire_or_renew("lb-b", "b:1"))
    holders = [s.holder for s in results]
    assert holders[0] == holders[1] and holders[0] in ("lb-a", "lb-b")
    assert bucket.record()["term"] == 1


async def test_a_killed_holder_is_taken_over_after_expiry(bucket: Bucket) -> None:
    a, b = bucket.store(), bucket.store()
    await a.acquire_or_renew("lb-a", "10.0.0.1:20001")
    # lb-a is killed: it renews no more. Before expiry lb-b keeps seeing it.
    bucket.clock.now += DURATION - 1
    assert (await b.acquire_or_renew("lb-b", "10.0.0.2:20001")).holder == "lb-a"
    bucket.clock.now += 2
    taken = await b.acquire_or_renew("lb-b", "10.0.0.2:20001")
    assert (taken.holder, taken.address, taken.term) == ("lb-b", "10.0.0.2:20001", 2)
    # The old holder, back, finds it lost the lease and does not take it back.
    back = await a.acquire_or_renew("lb-a", "10.0.0.1:20001")
    assert (back.holder, back.term) == ("lb-b", 2)


async def test_release_lets_the_next_take_over_before_expiry(bucket: Bucket) -> None:
    a, b = bucket.store(), bucket.store()
    await a.acquire_or_renew("lb-a", "a:1")
    await b.release("lb-b")  # not the holder: changes nothing
    assert bucket.record()["holder"] == "lb-a"
    await a.release("lb-a")
    assert bucket.record()["holder"] is None and bucket.record()["term"] == 1
    taken = await b.acquire_or_renew("lb-b", "b:1")
    assert (taken.holder, taken.term) == ("lb-b", 2)


async def test_credentials_are_fetched_once_and_again_before_they_expire(
        bucket: Bucket) -> None:
    """Role keys (S3) and tokens (GCS) are cached, and fetched anew once within the
    refresh margin of their expiry (the fake metadata's expiry follows the fake clock)."""
    import datetime as dt

    lasting = 3600.0

    def expiry(at: float) -> str:
        return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    bucket.fake.credential_expiry, bucket.fake.token_seconds = expiry(START + lasting), 3600
    store = bucket.store()
    for _ in range(3):
        await store.acquire_or_renew("lb-a", "a:1")
    assert bucket.fake.credential_fetches == 1
    bucket.clock.now += lasting - 30  # inside both refresh margins (300 s and 60 s)
    bucket.fake.credential_expiry = expiry(bucket.clock.now + lasting)  # fresh keys
    for _ in range(3):
        await store.acquire_or_renew("lb-a", "a:1")
    assert bucket.fake.credential_fetches == 2
    assert bucket.fake.refused_auth == 0


async def test_server_errors_and_unreachable_raise_lease_unavailable(bucket: Bucket) -> None:
    store = bucket.store()
    bucket.fake.fail_status = 500
    with pytest.raises(LeaseUnavailable):
        await store.acquire_or_renew("lb-a", "a:1")
    bucket.fake.fail_status = None
    if bucket.cloud == "s3":
        gone = S3LeaseStore(BUCKET, KEY, DURATION, endpoint="http://127.0.0.1:9",
                            region="us-east-1", metadata_url=bucket.url, clock=bucket.clock)
    else:
        gone = GcsLeaseStore(BUCKET, KEY, DURATION, api_url="http://127.0.0.1:9",
                             metadata_url=bucket.url, clock=bucket.clock)
    bucket.stores.append(gone)
    with pytest.raises(LeaseUnavailable):
        await gone.acquire_or_renew("lb-a", "a:1")


async def test_s3_conditional_request_conflict_means_another_won(s3_bucket: Bucket) -> None:
    bucket = s3_bucket
    a = bucket.store()
    bucket.fake.conflict_next = True
    state = await a.acquire_or_renew("lb-a", "a:1")
    # Refused: nothing was written, and the store reports no holder (it does not lead).
    assert state.holder is None and KEY not in bucket.fake.objects


async def test_s3_missing_key_answered_403_still_creates(s3_bucket: Bucket) -> None:
    bucket = s3_bucket
    bucket.fake.no_list = True
    state = await bucket.store().acquire_or_renew("lb-a", "a:1")
    assert (state.holder, state.term) == ("lb-a", 1)


def test_the_agent_opens_the_bucket_stores_from_its_lease_section() -> None:
    config = LeaseConfig(kind="s3", bucket="b", name="lease/x.json", duration_seconds=9)
    s3 = open_store(config)
    assert isinstance(s3, S3LeaseStore)
    assert (s3.object.bucket, s3.object.key, s3.duration_seconds) == ("b", "lease/x.json", 9)
    gcs = open_store(config.model_copy(update={"kind": "gcs"}))
    assert isinstance(gcs, GcsLeaseStore)
    assert (gcs.object.bucket, gcs.object.key) == ("b", "lease/x.json")
    for kind in ("s3", "gcs"):
        with pytest.raises(LeaseStoreError,
                           match=rf"lease\.bucket, lease\.name: kind {kind} needs"):
            open_store(LeaseConfig(kind=kind))
        with pytest.raises(LeaseStoreError, match=r"lease\.bucket, lease\.name"):
            open_store(LeaseConfig(kind=kind, bucket="b"))  # the key is needed too


# AWS's published Signature Version 4 examples (the same example keys and dates).
EXAMPLE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("method, url, headers, payload, region, service, date, signature", [
    # "Create a signed AWS API request" (IAM ListUsers).
    ("GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
     {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}, EMPTY_SHA256,
     "us-east-1", "iam", "20150830T123600Z",
     "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
    # S3 "Signature calculations for the Authorization header", GET object example.
    ("GET", "https://examplebucket.s3.amazonaws.com/test.txt",
     {"Range": "bytes=0-9", "x-amz-content-sha256": EMPTY_SHA256}, EMPTY_SHA256,
     "us-east-1", "s3", "20130524T000000Z",
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
])
def test_sigv4_matches_the_published_examples(
        method: str, url: str, headers: dict[str, str], payload: str, region: str,
        service: str, date: str, signature: str) -> None:
    creds: Callable[[], Credentials] = lambda: EXAMPLE  # noqa: E731
    if service == "s3":
        creds = lambda: Credentials("AKIAIOSFODNN7EXAMPLE",  # noqa: E731
                                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    signed = sigv4_headers(method, url, headers, payload, creds(), region, service, date)
    assert signed["Authorization"].endswith(f"Signature={signature}")
