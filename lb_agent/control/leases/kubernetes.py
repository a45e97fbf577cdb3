"""A leader lease as a Kubernetes ``coordination.k8s.io/v1`` Lease (the controller pods).

The load balancers of a service on Kubernetes are the pods of one Deployment; each calls
``acquire_or_renew`` every ``renew_seconds`` with its identity (the pod's name) and cluster
address (``<pod IP>:<admin port>``). The semantics are client-go's leader election:

- read the Lease; create it when absent (the holder is the creator);
- held by another and not expired (``renewTime + leaseDurationSeconds`` still ahead): leave it;
- otherwise write it back with the ``resourceVersion`` read (an optimistic update): a
  ``409 Conflict`` means another load balancer wrote first, and the Lease it wrote is returned.

The spec carries ``holderIdentity``, ``leaseDurationSeconds``, ``acquireTime`` (when the
holder took it), ``renewTime`` and ``leaseTransitions``, which is the term: 1 for the first
holder, one more each time the Lease changes hands (client-go counts from 0; skyform reads it
as the term, whose 0 means "no lease"). The holder's cluster address is the annotation
``ADDRESS_ANNOTATION``. ``release`` clears the holder (a clean shutdown hands over at once).

It talks to the API server with the pod's ServiceAccount (its token file, re-read on every
call as the kubelet rotates it, and the cluster CA) at ``$KUBERNETES_SERVICE_HOST:PORT``, over
the agent's own HTTP client (aiohttp): no Kubernetes client library. Tests point it at any
server (``api_url``, ``token_file``, ``ca_file``). The Role it needs: ``get``/``update`` on the
Lease by name and ``create`` on leases (components/clouds/kubernetes.py, controller_rules).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseState, LeaseUnavailable
from lb_agent.control.leases import LeaseStoreError

#: Where a pod's ServiceAccount token, cluster CA and namespace are mounted.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The Lease annotation holding the holder's cluster address (``host:port``).
ADDRESS_ANNOTATION = "skyform.dev/holder-address"
API_VERSION = "coordination.k8s.io/v1"
#: The most one API call may take; the election loop cuts a whole step off sooner.
REQUEST_TIMEOUT_SECONDS = 5.0


def format_time(epoch: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of a MicroTime (or Time); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


class KubeLeaseStore:
    """One Lease ``name`` in ``namespace``, read and written through the API at ``api_url``."""

    def __init__(
        self, name: str, namespace: str, api_url: str, *, token_file: str | None,
        ca_file: str | None, duration_seconds: float = 15.0,
        clock: Callable[[], float] = time.time,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.api_url = api_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.duration_seconds = duration_seconds
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self._ssl: ssl.SSLContext | None = None

    @property
    def collection_url(self) -> str:
        return (f"{self.api_url}/apis/{API_VERSION}/namespaces/"
                f"{quote(self.namespace, safe='')}/leases")

    @property
    def lease_url(self) -> str:
        return f"{self.collection_url}/{quote(self.name, safe='')}"

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    # -- the protocol ------------------------------------------------------------------
    async def acquire_or_renew(self, identity: str, address: str) -> LeaseState:
        now = self.clock()
        lease = await self._get()
        if lease is None:
            created = await self._write("POST", self.collection_url,
                                        self._lease_object(identity, address, now))
            return self.state_of(created if created is not None else await self._must_get())
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        if holder is not None and holder != identity and self._expires(spec) > now:
            return self.state_of(lease)
        taken = self._taken(lease, identity, address, now)
        written = await self._write("PUT", self.lease_url, taken)
        # A conflict: another load balancer wrote between our read and our write. Whatever
        # it wrote stands; report it.
        return self.state_of(written if written is not None else await self._must_get())

    async def release(self, identity: str) -> None:
        lease = await self._get()
        if lease is None:
            return
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != identity:
            return
        spec.pop("holderIdentity", None)
        spec["renewTime"] = format_time(self.clock())
        meta = dict(lease.get("metadata") or {})
        annotations = dict(meta.get("annotations") or {})
        annotations.pop(ADDRESS_ANNOTATION, None)
        meta["annotations"] = annotations
        # A conflict means the Lease changed hands already: nothing left to release.
        await self._write("PUT", self.lease_url, {**lease, "metadata": meta, "spec": spec})

    # -- the Lease object ------------------------------------------------------------------
    def state_of(self, lease: Mapping[str, Any]) -> LeaseState:
        """The LeaseState a Lease object says (holder None once it expired or was cleared)."""
        spec = lease.get("spec") or {}
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        expires = self._expires(spec)
        holder = spec.get("holderIdentity") or None
        if holder is not None and expires <= self.clock():
            holder = None
        address = annotations.get(ADDRESS_ANNOTATION) if holder is not None else None
        term = spec.get("leaseTransitions")
        return LeaseState(holder, address if isinstance(address, str) else None, expires,
                          term if isinstance(term, int) else 0)

    @staticmethod
    def _expires(spec: Mapping[str, Any]) -> float:
        renewed = parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds")
        if renewed is None or not isinstance(duration, int | float):
            return 0.0
        return renewed + float(duration)

    def _duration(self) -> int:
        return max(1, math.ceil(self.duration_seconds))

    def _lease_object(self, identity: str, address: str, now: float) -> dict[str, Any]:
        stamp = format_time(now)
        return {
            "apiVersion": API_VERSION, "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "annotations": {ADDRESS_ANNOTATION: address}},
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": self._duration(),
                     "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 1},
        }

    def _taken(self, lease: Mapping[str, Any], identity: str, address: str,
               now: float) -> dict[str, Any]:
        """``lease`` renewed by its holder ``identity``, or taken over by it (a new term)."""
        spec = dict(lease.get("spec") or {})
        stamp = format_time(now)
        transitions = spec.get("leaseTransitions")
        term = transitions if isinstance(transitions, int) else 0
        if spec.get("holderIdentity") != identity or not spec.get("acquireTime"):
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = term + 1
        spec.update(holderIdentity=identity, renewTime=stamp,
                    leaseDurationSeconds=self._duration())
        meta = dict(lease.get("metadata") or {})  # keeps resourceVersion: the precondition
        meta["annotations"] = {**(meta.get("annotations") or {}), ADDRESS_ANNOTATION: address}
        return {**lease, "apiVersion": API_VERSION, "kind": "Lease", "metadata": meta,
                "spec": spec}

    # -- HTTP ------------------------------------------------------------------------------
    async def _must_get(self) -> dict[str, Any]:
        lease = await self._get()
        if lease is None:
            raise LeaseUnavailable(f"{self.where}: deleted while being written")
        return lease

    async def _get(self) -> dict[str, Any] | None:
        status, body = await self._request("GET", self.lease_url)
        if status == 404:
            return None
        if status != 200:
            raise self._error("GET", status, body)
        return body

    async def _write(self, method: str, url: str,
                     lease: dict[str, Any]) -> dict[str, Any] | None:
        """Create (POST) or replace (PUT) the Lease; None when another writer won (409)."""
        status, body = await self._request(method, url, lease)
        if status in (200, 201):
            return body
        if status == 409:
            return None
        raise self._error(method, status, body)

    def _error(self, method: str, status: int, body: dict[str, Any]) -> LeaseUnavailable:
        message = body.get("message") if isinstance(body, dict) else None
        return LeaseUnavailable(f"{self.where}: {method} answered {status}"
                                + (f": {message}" if message else ""))

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.api_url.startswith("https://"):
            return None
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise LeaseUnavailable(
                    f"{self.where}: cluster CA {self.ca_file}: {exc}") from None
        return self._ssl

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except OSError as exc:
                raise LeaseUnavailable(f"{self.where}: ServiceAccount token "
                                       f"{self.token_file}: {exc.strerror or exc}") from None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _request(self, method: str, url: str,
                       body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        headers = self._headers()
        context = self._ssl_context()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            # A session per call: one call every few seconds, and nothing to close on exit.
            async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                    method, url, data=data, headers=headers,
                    ssl=context if context is not None else True) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise LeaseUnavailable(f"{self.where}: {method} {self.api_url}: "
                                   f"{str(exc) or type(exc).__name__}") from None
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        if status in (200, 201) and not isinstance(parsed, dict):
            raise LeaseUnavailable(f"{self.where}: {method} answered {status} without a Lease")
        return status, parsed if isinstance(parsed, dict) else {}


def in_cluster_url(environ: Mapping[str, str]) -> str:
    """The API server a pod reaches: ``$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        raise LeaseStoreError(
            "lease.kind: kubernetes needs the in-cluster API server, and "
            "$KUBERNETES_SERVICE_HOST is not set (the agent is not in a pod); use "
            "lease.kind: none or file outside Kubernetes")
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def open_store(config: LeaseConfig, *, environ: Mapping[str, str] | None = None,
               account_dir: str = SERVICE_ACCOUNT_DIR) -> KubeLeaseStore:
    """The Lease ``config`` names (``name``; ``namespace``, else the pod's own), reached with
    the pod's ServiceAccount."""
    env = os.environ if environ is None else environ
    if not config.name:
        raise LeaseStoreError("lease.name: the Lease's name is required for kind kubernetes")
    namespace = config.namespace
    if not namespace:
        try:
            with open(os.path.join(account_dir, "namespace"), encoding="utf-8") as fh:
                namespace = fh.read().strip()
        except OSError:
            namespace = ""
    if not namespace:
        raise LeaseStoreError("lease.namespace: not set, and the pod's namespace file "
                              f"{account_dir}/namespace is not readable")
    return KubeLeaseStore(
        config.name, namespace, in_cluster_url(env),
        token_file=os.path.join(account_dir, "token"),
        ca_file=os.path.join(account_dir, "ca.crt"),
        duration_seconds=config.duration_seconds,
    )
