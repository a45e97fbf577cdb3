"""The admin API (its own port): /health, /status, /metrics and replica registration.

Everything except /health needs ``Authorization: Bearer <token>``; tokens are compared with
``hmac.compare_digest``. A request without a valid token gets 401 JSON and changes nothing.

Replicas never hold the admin token. ``POST /replicas`` (register, heartbeat) and
``DELETE /replicas/{id}`` also take a replica credential (``lb_agent.credentials``), for the
ids its scope covers only, and only from the address the registration names: the request's
source address must be the registered URL's host (403 otherwise). When the agent has a
deployer, it registers what it launches at the address it launched it at, and a replica
credential only heartbeats and deregisters those ids (a new id is refused, 403): on the clouds
an id is thereby bound to its replica's address. A replica credential may not move a routable
replica to another address (409): a restarted replica at a new address takes its id over once
the old one stops being routable. Drain, /status and /metrics take the admin token alone.

Several load balancers (lb_agent.control.cluster): the leader also answers ``GET
/cluster/state`` and ``POST /cluster/arrivals`` (admin token; 409 on a follower). A follower
forwards registration, deregistration and drain calls to the leader and answers with the
leader's status and body (503 JSON while no leader is known or it cannot be reached); a
replica's call goes with its credential and source address in ``x-skyform-forwarded-auth`` /
``x-skyform-forwarded-for`` on a call carrying the admin token, and the leader checks them as
if the replica had called it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, field_validator

from lb_agent import credentials
from lb_agent.contract import replica_id
from lb_agent.control.cluster import (
    FORWARDED,
    FORWARDED_AUTH,
    FORWARDED_FOR,
    ClusterError,
    cluster_state,
)
from lb_agent.control.leadership import LEADER
from lb_agent.control.states import ReplicaState
from lb_agent.runtime import AgentRuntime
from lb_agent.status import snapshot

#: ``DELETE /replicas/{id}?reason=``: ``preempted`` (the replica's cloud announced its
#: interruption) or ``shutdown`` (an ordinary exit, the same as no reason).
DEREGISTER_REASONS = frozenset({"preempted", "shutdown"})


class RegisterBody(BaseModel):
    """POST /replicas body: register, or heartbeat (re-register)."""

    replica_id: str
    url: str
    version: int | None = Field(default=None, ge=1)
    spot: bool = False
    accelerator: str | None = None
    group: str | None = None
    index: int | None = Field(default=None, ge=0)

    @field_validator("replica_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return replica_id(v)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v.split("://", 1)[1]) == 0:
            raise ValueError("expected an http:// or https:// URL such as http://10.0.0.5:8080")
        return v


class ArrivalsBody(BaseModel):
    """POST /cluster/arrivals body: a follower's arrivals per whole second (epoch seconds)."""

    sender: str = Field(min_length=1, max_length=200)
    counts: dict[str, int]

    @field_validator("counts")
    @classmethod
    def _seconds(cls, v: dict[str, int]) -> dict[str, int]:
        for key, n in v.items():
            if not key.isdigit() or n < 0:
                raise ValueError("expected {epoch second: count >= 0}")
        return v


def build_admin_app(runtime: AgentRuntime) -> FastAPI:
    """The FastAPI app of the admin port, bound to ``runtime``."""
    app = FastAPI(title="skyform agent admin", docs_url=None, redoc_url=None, openapi_url=None)
    token = runtime.config.token.encode()
    replica_key = credentials.registration_key(runtime.config.token)

    def bearer(request: Request) -> str:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return given.strip() if scheme.lower() == "bearer" else ""

    def is_admin(request: Request) -> bool:
        return hmac.compare_digest(bearer(request).encode(), token)

    def caller(request: Request) -> tuple[bool, str, str]:
        """(admin, replica credential, source address) of a call; a registration another
        load balancer forwards (admin token + the forwarded headers) is the replica's."""
        source = request.client.host if request.client else ""
        if is_admin(request):
            forwarded = request.headers.get(FORWARDED_AUTH)
            if forwarded is None:
                return True, "", source
            return False, forwarded, request.headers.get(FORWARDED_FOR, "")
        return False, bearer(request), source

    async def forwarded(request: Request, method: str, body: Any = None) -> JSONResponse | None:
        """On a follower: the leader's answer to this call (None on the leader or alone)."""
        client = runtime.cluster
        if client is None or runtime.leadership.role == LEADER:
            return None
        admin, credential, source = caller(request)
        if request.headers.get(FORWARDED):  # forwarded once already: never again
            raise HTTPException(status_code=503, headers={"Retry-After": "2"}, detail=(
                f"{runtime.leadership.identity} is not the leader any more; retry"))
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            status, answer = await client.forward(
                method, path, body=body, replica_auth=None if admin else credential,
                source=source)
        except ClusterError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail,
                                headers={"Retry-After": "2"}) from None
        return JSONResponse(answer, status_code=status)

    def unauthorized() -> HTTPException:
        return HTTPException(
            status_code=401,
            detail="missing or invalid bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def require_token(request: Request) -> None:
        if not is_admin(request):
            raise unauthorized()

    async def require_replica(request: Request, replica_id: str, url: str) -> None:
        """The admin token, or a replica credential covering ``replica_id`` presented from
        ``url``'s host."""
        admin, credential, source = caller(request)
        if admin:
            return
        if not credentials.covers(replica_key, credential, replica_id):
            raise unauthorized()
        if not await _same_host(source, url):
            raise HTTPException(
                status_code=403,
                detail=f"a replica credential acts only from its own address: this request "
                       f"comes from {source or 'an unknown address'}, not from the host of "
                       f"{url}")

    auth = [Depends(require_token)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "routable_replicas": len(runtime.routable)}

    @app.get("/status", dependencies=auth)
    async def status() -> dict[str, Any]:
        return snapshot(runtime)

    @app.get("/metrics", dependencies=auth)
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/cluster/state", dependencies=auth)
    async def state(ticks: int | None = None) -> dict[str, Any]:
        not_leader()
        return cluster_state(runtime, ticks)

    @app.post("/cluster/arrivals", dependencies=auth)
    async def arrivals(body: ArrivalsBody) -> dict[str, Any]:
        not_leader()
        added = runtime.inbox.merge(body.sender, {int(k): v for k, v in body.counts.items()},
                                    runtime.clock())
        return {"added": added, "term": runtime.leadership.term}

    def not_leader() -> None:
        lead = runtime.leadership
        if lead.role != LEADER:
            raise HTTPException(status_code=409, detail=(
                f"{lead.identity} is not the leader (it is {lead.holder or 'not known'}"
                f"{f' at {lead.address}' if lead.address else ''}, term {lead.term})"))

    @app.post("/replicas", response_model=None)
    async def register(body: RegisterBody, request: Request) -> dict[str, Any] | JSONResponse:
        passed = await forwarded(request, "POST", body.model_dump(exclude_unset=True))
        if passed is not None:
            return passed
        await require_replica(request, body.replica_id, body.url)
        known = runtime.registry.get(body.replica_id)
        admin, _credential, source = caller(request)
        if not admin:
            if known is None and runtime.config.deployer is not None:
                # The deployer registers what it launches (at the address it launched it
                # at): a replica heartbeats those ids, it adds none of its own.
                raise HTTPException(
                    status_code=403,
                    detail=f"unknown replica {body.replica_id!r}: this controller registers "
                           "the replicas it launches; a replica credential does not add one")
            if (known is not None and not await _same_host(source, known.url)
                    and any(t.replica_id == body.replica_id for t in runtime.routable)):
                raise HTTPException(
                    status_code=409,
                    detail=f"replica {body.replica_id!r} is routable at {known.url}; a "
                           "replica credential moves it to another address only once it is "
                           "not")
        rec = runtime.registry.register(
            body.replica_id, body.url, version=body.version, spot=body.spot,
            accelerator=body.accelerator, group=body.group, index=body.index,
        )
        return rec.to_json()

    @app.delete("/replicas/{replica_id}", response_model=None)
    async def deregister(replica_id: str, request: Request,
                         reason: str | None = None) -> dict[str, Any] | JSONResponse:
        passed = await forwarded(request, "DELETE")
        if passed is not None:
            return passed
        known = runtime.registry.get(replica_id)
        if not caller(request)[0]:
            if known is None:  # nothing to check the source address against
                await require_token(request)
            else:
                await require_replica(request, replica_id, known.url)
        if reason is not None and reason not in DEREGISTER_REASONS:
            raise HTTPException(status_code=422, detail=(
                f"reason: expected one of {', '.join(sorted(DEREGISTER_REASONS))}, "
                f"got {reason!r}"))
        if reason == "preempted":
            # Kept as PREEMPTED: the scaler hands it to the deployer, which records the
            # preemption against the replica's location and places its replacement.
            rec = runtime.registry.set_state(replica_id, ReplicaState.PREEMPTED)
        else:
            rec = runtime.registry.remove(replica_id)
        if rec is None:
            raise HTTPException(status_code=404, detail=f"unknown replica {replica_id!r}")
        return {"removed": rec.to_json(), "in_flight": runtime.in_flight(replica_id)}

    @app.post("/replicas/{replica_id}/drain", dependencies=auth, response_model=None)
    async def drain(replica_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        passed = await forwarded(request, "POST")
        if passed is not None:
            return passed
        rec = runtime.registry.mark_draining(replica_id)
        if rec is None:
            raise HTTPException(status_code=404, detail=f"unknown replica {replica_id!r}")
        return {**rec.to_json(), "in_flight": runtime.in_flight(replica_id)}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the caller gets JSON, not a plain-text 500.
        return JSONResponse(
            {"detail": "internal error in the agent; see the agent log"}, status_code=500
        )

    return app


async def _same_host(source: str, url: str) -> bool:
    """True when ``source`` (a request's peer address) is the host of ``url`` (an address, or
    a name that resolves to it)."""
    host = urlsplit(url).hostname or ""
    try:
        peer = ipaddress.ip_address(source)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped:
        peer = peer.ipv4_mapped
    try:
        return ipaddress.ip_address(host) == peer
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        return False
    return any(ipaddress.ip_address(str(info[4][0]).split("%")[0]) == peer for info in infos)
