"""The leader lease on GCP: one object in the stack's GCS files bucket, generation
preconditions.

``GcsLeaseStore`` is the ``LeaseStore`` (lb_agent/control/leadership.py) of ``lease: kind:
gcs``: the object ``<bucket>/<name>`` holds the lease record (objectlease.py). Every GCS
object version has a generation number; an upload with ``ifGenerationMatch=0`` succeeds only
when no live object has the name, with ``ifGenerationMatch=<generation>`` only when the live
object is still that generation; otherwise GCS answers 412 Precondition Failed: another load
balancer won.

Credentials: the VM's service account, an access token from the metadata server (cached
until shortly before it expires); requests go to the JSON API (download with ``alt=media``,
whose ``x-goog-generation`` header is the generation read; upload with ``uploadType=media``).
Replacing an object needs ``storage.objects.delete`` besides ``create`` (GCS's rule for
overwrites), which is why the controllers' lease role holds get, create and delete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from urllib.parse import quote

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseUnavailable
from lb_agent.control.leases._http import Http
from lb_agent.control.leases.objectlease import ObjectLease, Versioned, open_bucket_store

METADATA_URL = "http://metadata.google.internal"
API_URL = "https://storage.googleapis.com"
#: A token is refreshed this long before it expires.
REFRESH_MARGIN_SECONDS = 60.0


class MetadataToken:
    """The VM's default service account's access token (the metadata server)."""

    def __init__(self, http: Http, url: str = METADATA_URL,
                 clock: Callable[[], float] = time.time) -> None:
        self._http, self._url, self._clock = http, url.rstrip("/"), clock
        self._token: tuple[str, float] | None = None

    async def get(self) -> str:
        if self._token is not None and self._token[1] - REFRESH_MARGIN_SECONDS > self._clock():
            return self._token[0]
        reply = await self._http.request(
            "GET", f"{self._url}/computeMetadata/v1/instance/service-accounts/default/token",
            headers={"Metadata-Flavor": "Google"})
        if reply.status != 200:
            raise LeaseUnavailable(f"metadata server token: HTTP {reply.status}")
        try:
            raw = json.loads(reply.body)
            self._token = (str(raw["access_token"]), self._clock() + float(raw["expires_in"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseUnavailable(f"metadata server token unreadable: {exc}") from exc
        return self._token[0]


class GcsObject:
    """One GCS object with generation preconditions (an ``ObjectBackend``)."""

    def __init__(self, bucket: str, key: str, *, api_url: str = API_URL,
                 metadata_url: str = METADATA_URL, clock: Callable[[], float] = time.time
                 ) -> None:
        self.bucket, self.key = bucket, key
        self._api = api_url.rstrip("/")
        self._http = Http()
        self._token = MetadataToken(self._http, metadata_url, clock)

    async def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self._token.get()}"}

    async def read(self) -> Versioned | None:
        url = (f"{self._api}/storage/v1/b/{quote(self.bucket, safe='')}/o/"
               f"{quote(self.key, safe='')}?alt=media")
        reply = await self._http.request("GET", url, headers=await self._auth())
        if reply.status == 200:
            generation = reply.headers.get("x-goog-generation")
            if not generation:
                raise LeaseUnavailable(f"gs://{self.bucket}/{self.key}: no x-goog-generation")
            return Versioned(reply.body, generation)
        if reply.status == 404:
            return None
        raise LeaseUnavailable(f"gs://{self.bucket}/{self.key}: GET HTTP {reply.status}")

    async def write(self, body: bytes, version: str | None) -> bool:
        url = (f"{self._api}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
               f"?uploadType=media&name={quote(self.key, safe='')}"
               f"&ifGenerationMatch={version or '0'}")
        reply = await self._http.request(
            "POST", url, headers={**await self._auth(), "Content-Type": "application/json"},
            body=body)
        if reply.status == 200:
            return True
        if reply.status == 412:
            return False
        raise LeaseUnavailable(f"gs://{self.bucket}/{self.key}: upload HTTP {reply.status}")

    async def close(self) -> None:
        await self._http.close()


class GcsLeaseStore(ObjectLease):
    """``lease: kind: gcs``: the lease object ``name`` in ``bucket`` (the stack's files
    bucket)."""

    def __init__(self, bucket: str, key: str, duration_seconds: float, *,
                 api_url: str = API_URL, metadata_url: str = METADATA_URL,
                 clock: Callable[[], float] = time.time) -> None:
        self.object = GcsObject(bucket, key, api_url=api_url, metadata_url=metadata_url,
                                clock=clock)
        super().__init__(self.object, duration_seconds, clock)

    async def close(self) -> None:
        await self.object.close()


def open_store(config: LeaseConfig) -> GcsLeaseStore:
    """The store lb_agent.control.leases.open_store opens for ``kind: gcs``."""
    return open_bucket_store(config, GcsLeaseStore)
