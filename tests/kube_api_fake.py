"""A small fake of the Kubernetes API's ``coordination.k8s.io/v1`` Leases, for lease tests.

It serves GET/POST/PUT of Leases in any namespace on 127.0.0.1 (HTTP, or HTTPS with a given
certificate) with the API server's rules the lease store relies on: a bearer token
(401 without it), ``resourceVersion`` on every object, ``409 AlreadyExists`` on a second
create, ``409 Conflict`` on an update whose ``resourceVersion`` is not the current one, 404
for a missing Lease, and Status bodies. ``allowed_names`` emulates a Role limited by
``resourceNames`` (403 for get/update of other Leases). ``hold_writes_for_reads`` holds every
write until that many reads happened, so tests can make two writers race on the same
``resourceVersion`` deterministically.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from typing import Any

from aiohttp import web

PREFIX = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


class FakeLeaseApi:
    def __init__(self, token: str = "sa-token", allowed_names: set[str] | None = None) -> None:
        self.token = token
        self.allowed_names = allowed_names
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 100
        #: (method, name, status) of every request, in order.
        self.log: list[tuple[str, str, int]] = []
        self.hold_writes_for_reads = 0
        self.reads = 0
        self._read_seen = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, ssl_context: ssl.SSLContext | None = None) -> FakeLeaseApi:
        app = web.Application()
        app.router.add_get(PREFIX + "/{name}", self._get)
        app.router.add_post(PREFIX, self._create)
        app.router.add_put(PREFIX + "/{name}", self._update)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def lease(self, name: str, namespace: str = "svc") -> dict[str, Any]:
        return copy.deepcopy(self.leases[(namespace, name)])

    def statuses(self, method: str) -> list[int]:
        return [status for m, _, status in self.log if m == method]

    # -- handlers ----------------------------------------------------------------------
    def _denied(self, request: web.Request, name: str, verb: str) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if verb != "create" and self.allowed_names is not None \
                and name not in self.allowed_names:
            return _status(403, "Forbidden",
                           f'leases.coordination.k8s.io "{name}" is forbidden: cannot {verb}')
        return None

    def _done(self, request: web.Request, name: str, response: web.Response) -> web.Response:
        self.log.append((request.method, name, response.status))
        return response

    async def _get(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        denied = self._denied(request, name, "get")
        if denied is None:
            lease = self.leases.get((ns, name))
            response = (web.json_response(lease) if lease is not None else
                        _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found'))
        else:
            response = denied
        async with self._read_seen:
            self.reads += 1
            self._read_seen.notify_all()
        return self._done(request, name, response)

    async def _hold(self) -> None:
        async with self._read_seen:
            await self._read_seen.wait_for(lambda: self.reads >= self.hold_writes_for_reads)

    async def _create(self, request: web.Request) -> web.Response:
        await self._hold()
        ns = request.match_info["namespace"]
        body = await request.json()
        name = body["metadata"]["name"]
        denied = self._denied(request, name, "create")
        if denied is not None:
            return self._done(request, name, denied)
        if (ns, name) in self.leases:
            return self._done(request, name, _status(
                409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists'))
        if body["metadata"].get("resourceVersion"):
            return self._done(request, name, _status(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"))
        self.version += 1
        body["metadata"].update(namespace=ns, resourceVersion=str(self.version))
        self.leases[(ns, name)] = body
        return self._done(request, name, web.json_response(body, status=201))

    async def _update(self, request: web.Request) -> web.Response:
        await self._hold()
        ns, name = request.match_info["namespace"], request.match_info["name"]
        denied = self._denied(request, name, "update")
        if denied is not None:
            return self._done(request, name, denied)
        body = await request.json()
        current = self.leases.get((ns, name))
        if current is None:
            return self._done(request, name, _status(
                404, "NotFound", f'leases.coordination.k8s.io "{name}" not found'))
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return self._done(request, name, _status(
                409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io '
                f'"{name}": the object has been modified; please apply your changes to the '
                "latest version and try again"))
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(ns, name)] = body
        return self._done(request, name, web.json_response(body))
