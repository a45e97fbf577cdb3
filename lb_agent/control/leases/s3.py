"""The leader lease on AWS: one object in the stack's S3 files bucket, conditional writes.

``S3LeaseStore`` is the ``LeaseStore`` (lb_agent/control/leadership.py) of ``lease: kind: s3``:
the object ``<bucket>/<name>`` holds the lease record (objectlease.py). S3's conditional
writes make it atomic: ``PutObject`` with ``If-None-Match: *`` creates the object only when
it is absent, with ``If-Match: <ETag>`` replaces it only when it is still the version read;
S3 answers 412 ``PreconditionFailed`` when the condition fails and 409
``ConditionalRequestConflict`` when a concurrent conditional write to the key won: both mean
another load balancer won.

Credentials are the controller instance's role, from IMDSv2 (a session token, then the role's
temporary keys, refreshed before they expire), and requests are signed with Signature Version
4 here: about eighty lines instead of botocore, which the controller's bundle does not
install (it would add a 10 MB dependency and its own HTTP stack for two requests).

The read that finds no object: S3 answers 403 instead of 404 for a missing key to a caller
without ``s3:ListBucket``, which the controllers' grant leaves out on purpose (they get
``s3:GetObject`` and ``s3:PutObject`` on the lease key and nothing else of the bucket), so a
403 on read counts as "absent" and the create that follows (``If-None-Match``) settles it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseState, LeaseUnavailable
from lb_agent.control.leases._http import Http, Reply
from lb_agent.control.leases.objectlease import ObjectLease, Versioned, open_bucket_store

IMDS_URL = "http://169.254.169.254"
#: Temporary credentials are refreshed this long before they expire.
REFRESH_MARGIN_SECONDS = 300.0
_CODE = re.compile(rb"<Code>([^<]+)</Code>")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    #: Seconds since the epoch; None: never.
    expires_at: float | None = None


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _uri_encode(text: str, *, slash: bool) -> str:
    return quote(text, safe="-_.~" + ("/" if slash else ""))


def sigv4_headers(method: str, url: str, headers: Mapping[str, str], payload_sha256: str,
                  credentials: Credentials, region: str, service: str, amz_date: str
                  ) -> dict[str, str]:
    """``headers`` plus ``x-amz-date``, the session token and ``Authorization``: AWS
    Signature Version 4 of the request (``amz_date`` ``YYYYMMDDTHHMMSSZ``). The URL's path is
    taken as already encoded (S3 signs it as sent); every header in ``headers`` and ``host``
    is signed."""
    parts = urlsplit(url)
    out = {**headers, "x-amz-date": amz_date}
    if credentials.token:
        out["x-amz-security-token"] = credentials.token
    signed = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    signed["host"] = parts.netloc
    names = sorted(signed)
    pairs = sorted((_uri_encode(k, slash=False), _uri_encode(v, slash=False))
                   for k, v in parse_qsl(parts.query, keep_blank_values=True))
    canonical = "\n".join([
        method, parts.path or "/", "&".join(f"{k}={v}" for k, v in pairs),
        "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names), payload_sha256,
    ])
    day = amz_date[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{credentials.secret_key}".encode(), day), region),
                      service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


class InstanceMetadata:
    """IMDSv2: the instance role's temporary credentials and the instance's region."""

    def __init__(self, http: Http, url: str = IMDS_URL,
                 clock: Callable[[], float] = time.time) -> None:
        self._http, self._url, self._clock = http, url.rstrip("/"), clock
        self._credentials: Credentials | None = None

    async def _get(self, path: str) -> str:
        token = await self._http.request(
            "PUT", f"{self._url}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        if token.status != 200:
            raise LeaseUnavailable(f"IMDSv2 token: HTTP {token.status}")
        reply = await self._http.request(
            "GET", f"{self._url}{path}",
            headers={"X-aws-ec2-metadata-token": token.body.decode()})
        if reply.status != 200:
            raise LeaseUnavailable(f"instance metadata {path}: HTTP {reply.status}")
        return reply.body.decode()

    async def region(self) -> str:
        return (await self._get("/latest/meta-data/placement/region")).strip()

    async def credentials(self) -> Credentials:
        cached = self._credentials
        if cached is not None and (cached.expires_at is None or
                                   cached.expires_at - REFRESH_MARGIN_SECONDS > self._clock()):
            return cached
        base = "/latest/meta-data/iam/security-credentials/"
        role = (await self._get(base)).split()[0:1]
        if not role:
            raise LeaseUnavailable("the instance has no IAM role (instance profile)")
        try:
            raw = json.loads(await self._get(base + role[0]))
            expiry = dt.datetime.fromisoformat(str(raw["Expiration"]).replace("Z", "+00:00"))
            self._credentials = Credentials(raw["AccessKeyId"], raw["SecretAccessKey"],
                                            raw.get("Token"), expiry.timestamp())
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseUnavailable(f"instance role credentials unreadable: {exc}") from exc
        return self._credentials


def _code(reply: Reply) -> str:
    found = _CODE.search(reply.body)
    return found.group(1).decode() if found else ""


class S3Object:
    """One S3 object with conditional PutObject (an ``ObjectBackend``).

    ``endpoint`` (tests: a fake S3 on 127.0.0.1) addresses the bucket path-style
    (``<endpoint>/<bucket>/<key>``); without it, the region's virtual-hosted endpoint."""

    def __init__(self, bucket: str, key: str, *, region: str | None = None,
                 endpoint: str | None = None, metadata_url: str = IMDS_URL,
                 clock: Callable[[], float] = time.time) -> None:
        self.bucket, self.key = bucket, key
        self._region, self._endpoint = region, endpoint
        self._http = Http()
        self._metadata = InstanceMetadata(self._http, metadata_url, clock)

    async def _url(self) -> tuple[str, str]:
        if self._region is None:
            self._region = await self._metadata.region()
        path = _uri_encode(self.key, slash=True)
        if self._endpoint is not None:
            return f"{self._endpoint.rstrip('/')}/{self.bucket}/{path}", self._region
        return f"https://{self.bucket}.s3.{self._region}.amazonaws.com/{path}", self._region

    async def _send(self, method: str, headers: dict[str, str], body: bytes = b"") -> Reply:
        url, region = await self._url()
        digest = hashlib.sha256(body).hexdigest()
        now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        signed = sigv4_headers(method, url, {**headers, "x-amz-content-sha256": digest},
                               digest, await self._metadata.credentials(), region, "s3", now)
        return await self._http.request(method, url, headers=signed,
                                        body=body if method == "PUT" else None)

    async def read(self) -> Versioned | None:
        reply = await self._send("GET", {})
        if reply.status == 200:
            return Versioned(reply.body, reply.headers.get("etag", ""))
        if reply.status in (403, 404) and _code(reply) in ("NoSuchKey", "AccessDenied"):
            return None  # 403: see the module docstring
        raise LeaseUnavailable(f"s3://{self.bucket}/{self.key}: GET HTTP {reply.status} "
                               f"{_code(reply)}")

    async def write(self, body: bytes, version: str | None) -> bool:
        condition = {"If-None-Match": "*"} if version is None else {"If-Match": version}
        reply = await self._send("PUT", {**condition, "Content-Type": "application/json"},
                                 body)
        if reply.status == 200:
            return True
        code = _code(reply)
        if reply.status == 412 or (reply.status == 409 and code == "ConditionalRequestConflict"):
            return False
        if reply.status == 404 and version is not None:
            return False  # replaced a version that is gone: someone else changed the key
        raise LeaseUnavailable(f"s3://{self.bucket}/{self.key}: PUT HTTP {reply.status} {code}")

    async def close(self) -> None:
        await self._http.close()


class S3LeaseStore(ObjectLease):
    """``lease: kind: s3``: the lease object ``name`` in ``bucket`` (the stack's files
    bucket), the region from the instance unless given."""

    def __init__(self, bucket: str, key: str, duration_seconds: float, *,
                 region: str | None = None, endpoint: str | None = None,
                 metadata_url: str = IMDS_URL, clock: Callable[[], float] = time.time) -> None:
        self.object = S3Object(bucket, key, region=region, endpoint=endpoint,
                               metadata_url=metadata_url, clock=clock)
        super().__init__(self.object, duration_seconds, clock)

    async def close(self) -> None:
        await self.object.close()


def open_store(config: LeaseConfig) -> S3LeaseStore:
    """The store lb_agent.control.leases.open_store opens for ``kind: s3``."""
    return open_bucket_store(config, S3LeaseStore)


__all__ = ["Credentials", "LeaseState", "S3LeaseStore", "S3Object", "sigv4_headers"]
