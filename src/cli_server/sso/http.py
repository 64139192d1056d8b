"""Bounded JSON requests to a sign-in provider: every wait has a timeout, every failure to get
an answer is ``ProviderDown`` and every answer we cannot use is ``ProviderError``."""

from __future__ import annotations

import json

from attrs import Factory, define, field
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionClosed,
    DNSLookupError,
)
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

from cli_server.plumbing.encoding import JSON
from cli_server.plumbing.quiet import ClientReactor, quiet_agent

_UNREACHABLE = (
    TimeoutError,
    CancelledError,
    ConnectError,
    ConnectingCancelledError,  # (the timeout, while still connecting)
    DNSLookupError,
    ConnectionClosed,
    ResponseFailed,
)
_MOST_BYTES = 1024 * 1024  # discovery, keys, tokens and profiles are a few KiB


class ProviderDown(Exception):
    """The provider did not answer (in time), or answered that it is not well."""


class ProviderError(Exception):
    """The provider answered, but not with what a sign-in needs (or with a forgery)."""


@define(eq=False)
class ProviderHttp:
    _reactor: IReactorTime  # timeouts
    timeout: float = 10.0
    # The provider connections: the same reactor (attrs cannot check this default's type).
    _connections: ClientReactor = field(
        default=Factory(lambda self: self._reactor, takes_self=True)
    )

    async def get_json(self, url: str, headers: dict[bytes, bytes] | None = None) -> JSON:
        return await self._request("GET", url, headers or {}, None)

    async def post_form(
        self, url: str, form: dict[str, str], headers: dict[bytes, bytes] | None = None
    ) -> JSON:
        return await self._request("POST", url, headers or {}, form)

    async def _request(
        self, method: str, url: str, headers: dict[bytes, bytes], form: dict[str, str] | None
    ) -> JSON:
        pool = HTTPConnectionPool(self._connections, persistent=False)
        http = HTTPClient(quiet_agent(self._connections, pool, self.timeout))
        sent = Headers({b"accept": [b"application/json"], b"user-agent": [b"cli-server"]})
        for name, value in headers.items():
            sent.setRawHeaders(name, [value])
        try:
            d = http.request(method, url, headers=sent, data=form)
            d.addTimeout(self.timeout, self._reactor)
            response = await d
            body_d = response.content()
            body_d.addTimeout(self.timeout, self._reactor)
            body = await body_d
        except _UNREACHABLE as e:
            raise ProviderDown(f"{method} {_where(url)}: {type(e).__name__}") from None
        if response.code >= 500:
            raise ProviderDown(f"{method} {_where(url)}: HTTP {response.code}")
        if len(body) > _MOST_BYTES:
            raise ProviderError(f"{_where(url)}: an answer of {len(body)} bytes")
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise ProviderError(f"{_where(url)}: HTTP {response.code}, not JSON") from None
        if response.code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ProviderError(f"{_where(url)}: HTTP {response.code} {str(error)[:80]}")
        return answer


def _where(url: str) -> str:
    """A URL for a log line: never its query (it may carry a code)."""
    return url.split("?", 1)[0]
