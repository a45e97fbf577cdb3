"""The admin API (its own port): /health, /status, /metrics and replica registration.

Everything except /health needs ``Authorization: Bearer <token>``; tokens are compared with
``hmac.compare_digest``. A request without a valid token gets 401 JSON and changes nothing.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, field_validator

from lb_agent.runtime import AgentRuntime
from lb_agent.status import snapshot


class RegisterBody(BaseModel):
    """POST /replicas body: register, or heartbeat (re-register)."""

    replica_id: str = Field(min_length=1, max_length=200)
    url: str
    version: int | None = Field(default=None, ge=1)
    spot: bool = False
    accelerator: str | None = None
    group: str | None = None
    index: int | None = Field(default=None, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v.split("://", 1)[1]) == 0:
            raise ValueError("expected an http:// or https:// URL such as http://10.0.0.5:8080")
        return v


def build_admin_app(runtime: AgentRuntime) -> FastAPI:
    """The FastAPI app of the admin port, bound to ``runtime``."""
    app = FastAPI(title="skyform agent admin", docs_url=None, redoc_url=None, openapi_url=None)
    token = runtime.config.token.encode()

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)
        if not ok:
            raise HTTPException(
                status_code=401,
                detail="missing or invalid bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

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

    @app.post("/replicas", dependencies=auth)
    async def register(body: RegisterBody) -> dict[str, Any]:
        rec = runtime.registry.register(
            body.replica_id, body.url, version=body.version, spot=body.spot,
            accelerator=body.accelerator, group=body.group, index=body.index,
        )
        return rec.to_json()

    @app.delete("/replicas/{replica_id}", dependencies=auth)
    async def deregister(replica_id: str) -> dict[str, Any]:
        rec = runtime.registry.remove(replica_id)
        if rec is None:
            raise HTTPException(status_code=404, detail=f"unknown replica {replica_id!r}")
        return {"removed": rec.to_json(), "in_flight": runtime.in_flight(replica_id)}

    @app.post("/replicas/{replica_id}/drain", dependencies=auth)
    async def drain(replica_id: str) -> dict[str, Any]:
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
