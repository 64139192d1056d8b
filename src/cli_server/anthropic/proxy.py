"""``/proxy/anthropic/v1/...``: a sandbox's calls to Claude, with the server's credentials.

The sandbox authenticates with its own proxy token (``x-api-key`` or ``Bearer``), stored only
as a hash and re-issued at every start. We replace — never append — the credentials with the
configured key or auth token, stream the reply back as it comes (SSE included), meter its
token usage on the way past, enforce workspace budgets, and record sandbox activity.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cli_server.anthropic.usage import UsageMeter, UsageStore
from cli_server.auth.tokens import token_hash
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.proxy.forward import Relay, copy_response_headers
from cli_server.proxy.hygiene import HOP_BY_HOP
from cli_server.sandboxes.activity import ActivityRecorder

PREFIX = b"/proxy/anthropic"
MAX_BODY = 32 * 1024 * 1024
_LIVE = ("running", "creating", "resuming")
_DROPPED = HOP_BY_HOP | {
    b"host",
    b"x-api-key",
    b"authorization",
    b"cookie",
    b"content-length",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-real-ip",
}


@frozen(repr=False)
class Upstream:
    """Where Claude is and how we prove who we are. Never logged, never shown."""

    base_url: str
    api_key: str | None
    auth_token: str | None

    def __repr__(self) -> str:
        return f"Upstream(base_url={self.base_url!r})"

    def credentials(self) -> tuple[bytes, bytes]:
        if self.api_key:
            return b"x-api-key", self.api_key.encode()
        assert self.auth_token
        return b"authorization", b"Bearer " + self.auth_token.encode()


@frozen
class _Caller:
    sandbox_id: str
    workspace_id: str
    fetched_at: float


def anthropic_error(request: Any, status: int, kind: str, message: str) -> bytes:
    """Errors in Anthropic's own shape, so SDKs and opencode show them properly."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@define(eq=False)
class AnthropicProxy(Resource):
    _db: Database
    _reactor: Any
    _upstream: Upstream | None
    _usage: UsageStore
    _activity: ActivityRecorder
    _metrics: Any = None
    _connect_timeout: float = 10.0
    _header_timeout: float = 600.0  # a long non-streaming answer takes minutes
    _silence_timeout: float = 300.0  # no byte for this long mid-reply: give up
    _ttl: float = 5.0
    _callers: dict[bytes, _Caller] = field(factory=dict, init=False)
    _agent: Agent = field(init=False)
    isLeaf = True
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)
        pool = HTTPConnectionPool(self._reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        self._agent = Agent(self._reactor, pool=pool, connectTimeout=self._connect_timeout)

    def render(self, request: Any) -> Any:
        d = Deferred.fromCoroutine(self._handle(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Any) -> None:
        if failure.check(DatabaseUnavailable):
            body = anthropic_error(request, 503, "api_error", "cli-server's database is down")
        else:
            self._log.failure("anthropic proxy", failure)
            body = anthropic_error(request, 500, "api_error", "internal error in the proxy")
        self._finish(request, body)

    def _finish(self, request: Any, body: bytes) -> None:
        if not request.finished and request.channel is not None:
            request.write(body)
            request.finish()

    async def _handle(self, request: Any) -> None:
        path = request.uri[len(PREFIX) :] if request.uri.startswith(PREFIX) else b""
        if not path.startswith(b"/v1/"):
            return self._finish(
                request,
                anthropic_error(request, 404, "not_found_error", "use /proxy/anthropic/v1/..."),
            )
        if self._upstream is None:
            return self._finish(
                request,
                anthropic_error(
                    request,
                    503,
                    "api_error",
                    "cli-server has no Anthropic credentials: set ANTHROPIC_API_KEY (or "
                    "ANTHROPIC_AUTH_TOKEN) in the server's environment and restart it",
                ),
            )
        caller = await self._caller(request)
        if caller is None:
            return self._finish(
                request,
                anthropic_error(
                    request,
                    401,
                    "authentication_error",
                    "invalid proxy token: use the ANTHROPIC_API_KEY this sandbox was started "
                    "with (a sandbox must be running)",
                ),
            )
        if getattr(request, "body_too_large", False):
            return self._finish(
                request,
                anthropic_error(
                    request, 413, "request_too_large", "request bodies are limited to 32 MiB"
                ),
            )
        spent, budget = await self._over_budget(caller.workspace_id)
        if spent:
            return self._finish(
                request,
                anthropic_error(
                    request,
                    429,
                    "rate_limit_error",
                    f"this workspace has used its monthly budget of {budget} tokens; an owner can "
                    "raise it",
                ),
            )
        self._activity.touch(caller.sandbox_id)
        await self._forward(request, path, caller)

    async def _caller(self, request: Any) -> _Caller | None:
        token = request.getHeader(b"x-api-key")
        if token is None:
            auth = request.getHeader(b"authorization") or b""
            token = auth[7:] if auth[:7].lower() == b"bearer " else None
        if not token:
            return None
        key = token_hash(token.decode("utf-8", "replace"))
        now = self._reactor.seconds()
        cached = self._callers.get(key)
        if cached is not None and now - cached.fetched_at < self._ttl:
            return cached
        rows = await self._db.query(
            "SELECT id, workspace_id FROM sandboxes WHERE proxy_token_hash = %s"
            " AND status = ANY(%s)",
            (key, list(_LIVE)),
        )
        if not rows:
            self._callers.pop(key, None)
            return None
        if len(self._callers) > 10_000:
            self._callers.clear()
        caller = _Caller(str(rows[0]["id"]), str(rows[0]["workspace_id"]), now)
        self._callers[key] = caller
        return caller

    async def _over_budget(self, workspace_id: str) -> tuple[bool, int | None]:
        rows = await self._db.query(
            "SELECT monthly_token_budget FROM workspaces WHERE id = %s", (workspace_id,)
        )
        budget = rows[0]["monthly_token_budget"] if rows else None
        if budget is None:
            return False, None
        return await self._usage.month_total(workspace_id) >= budget, int(budget)

    async def _forward(self, request: Any, path: bytes, caller: _Caller) -> None:
        assert self._upstream is not None
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _DROPPED:
                headers.setRawHeaders(name, values)
        name, value = self._upstream.credentials()
        headers.setRawHeaders(name, [value])
        if not headers.hasHeader(b"anthropic-version"):
            headers.setRawHeaders(b"anthropic-version", [b"2023-06-01"])
        content = request.content
        body = None
        if content is not None and not content.closed:
            content.seek(0)
            body = FileBodyProducer(content)
        url = self._upstream.base_url.rstrip("/").encode() + path
        d = self._agent.request(request.method, url, headers, body)
        d.addTimeout(self._header_timeout, self._reactor)
        request.notifyFinish().addErrback(lambda _: d.cancel() if not d.called else None)
        try:
            response = await d
        except CancelledError:
            return
        except Exception as e:
            self._log.warn("Anthropic upstream did not answer: {why}", why=type(e).__name__)
            return self._finish(
                request,
                anthropic_error(
                    request, 502, "api_error", "the Anthropic API did not answer; try again"
                ),
            )
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response, request)
        kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
        meter = UsageMeter(streaming=kind.startswith(b"text/event-stream"))
        done: Deferred[None] = Deferred()
        relay = Relay(
            request, tap=meter.feed, done=done, reactor=self._reactor, silence=self._silence_timeout
        )
        response.deliverBody(relay)
        await done
        usage = meter.finish()
        if self._metrics is not None:
            self._metrics.anthropic_calls.labels(str(response.code)).inc()
            for kind in (
                "input_tokens",
                "output_tokens",
                "cache_creation_tokens",
                "cache_read_tokens",
            ):
                self._metrics.anthropic_tokens.labels(kind).inc(getattr(usage, kind))
        if response.code < 300 and usage.total:
            await self._usage.record(caller.sandbox_id, caller.workspace_id, usage)
