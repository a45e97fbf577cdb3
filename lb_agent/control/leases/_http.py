"""The bucket stores' one HTTP client: a lazily made aiohttp session with short timeouts,
every transport error turned into ``LeaseUnavailable``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from lb_agent.control.leadership import LeaseUnavailable

#: A lease call must end well within the renew interval (5 s by default).
TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Reply:
    status: int
    #: Lower-case names.
    headers: Mapping[str, str]
    body: bytes


class Http:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Reply:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        try:
            async with self._session.request(method, url, headers=dict(headers or {}),
                                             data=body, allow_redirects=False) as response:
                return Reply(response.status,
                             {k.lower(): v for k, v in response.headers.items()},
                             await response.read())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise LeaseUnavailable(f"{method} {url}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
