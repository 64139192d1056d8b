"""Talking to a sandbox's opencode server: health and whether its agent is busy."""

from __future__ import annotations

import json
from base64 import b64encode

from attrs import Factory, define, field
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionClosed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

from cli_server.plumbing.quiet import ClientReactor, quiet_agent
from cli_server.sandboxes.backend import BackendError, Endpoint


def basic_auth(password: str) -> bytes:
    return b"Basic " + b64encode(f"opencode:{password}".encode())


@define(eq=False)
class OpencodeClient:
    """Short, bounded requests. Connections are not kept: these calls are rare."""

    _reactor: IReactorTime  # timeouts and retries
    # what connects to opencode: by default the same reactor (the server's is both)
    _connections: ClientReactor = field(
        default=Factory(lambda self: self._reactor, takes_self=True)
    )

    async def get_json(
        self, endpoint: Endpoint, password: str, path: str, timeout: float = 2.0
    ) -> tuple[int, object]:
        """The status code and the JSON body (None if empty or unreadable)."""
        pool = HTTPConnectionPool(self._connections, persistent=False)
        http = HTTPClient(quiet_agent(self._connections, pool, timeout))
        url = f"http://{endpoint.host}:{endpoint.port}{path}"
        d = http.get(url, headers=Headers({b"authorization": [basic_auth(password)]}))
        d.addTimeout(timeout, self._reactor)
        response = await d
        body_d = response.content()
        body_d.addTimeout(timeout, self._reactor)
        body = await body_d
        try:
            return response.code, json.loads(body) if body else None
        except (ValueError, RecursionError):  # (a sandbox's answer is not to be trusted)
            return response.code, None

    async def wait_healthy(self, endpoint: Endpoint, password: str, *, timeout: float) -> None:
        """Poll ``/global/health`` with a 1 s timeout per try.

        A connection made just as opencode's port opens can hang forever, hence the short
        per-try timeout rather than one long wait.
        """
        # By the clock: a refused try (a published port before opencode listens) takes no
        # time at all, so counting tries would give up long before ``timeout``.
        deadline, last = self._reactor.seconds() + timeout, "no answer"
        while self._reactor.seconds() < deadline:
            try:
                code, body = await self.get_json(endpoint, password, "/global/health", 1.0)
                if code == 200 and isinstance(body, dict) and body.get("healthy"):
                    return
                last = f"HTTP {code}"
            except (
                TimeoutError,
                CancelledError,
                ConnectingCancelledError,  # (a try whose connection hung, cut at its timeout)
                ConnectError,
                ConnectionClosed,
                ResponseFailed,
            ) as e:
                last = type(e).__name__
            await deferLater(self._reactor, 0.25)
        raise BackendError(f"opencode did not become healthy ({last})")

    async def busy(self, endpoint: Endpoint, password: str) -> bool:
        """Whether any session's agent is working (``GET /session/status``)."""
        code, body = await self.get_json(endpoint, password, "/session/status", 3.0)
        if code != 200 or not isinstance(body, dict):
            raise BackendError(f"session status answered HTTP {code}")
        return any(
            isinstance(s, dict) and s.get("type") not in (None, "idle") for s in body.values()
        )
