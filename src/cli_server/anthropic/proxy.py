"""``/proxy/anthropic/v1/...``: a sandbox's calls to Claude, with the server's credentials.

The sandbox authenticates with its own proxy token (``x-api-key`` or ``Bearer``), stored only
as a hash and re-issued at every start. A token is only good on its sandbox's own network path
(anyone who can read the sandbox can read its token): a process sandbox's door into its network
namespace, or — on the main listener — the container address of a docker sandbox, the address
of a local agent's live tunnel. It is checked against the table at every call, so a pause, a
delete or a dropped tunnel ends it at once (and cuts the calls it has running, from the
moment its token is checked: a call still waiting for its budget hold is cut too). Only the
Messages API passes (``policy``), with only the betas known to keep its input in its body.
We replace — never append — the credentials with the configured key or auth token, stream the
reply back as it comes (SSE included), meter its token usage on the way past, hold a message
call's worst case against the workspace's budget while it runs, rate-limit the free calls
(counting tokens, listing models) per sandbox, and record sandbox activity.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any, cast

from attrs import Factory, define, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cli_server.anthropic.policy import (
    BadCall,
    Estimate,
    RateLimit,
    allowed,
    charge,
    estimate,
    safe_betas,
    spends,
)
from cli_server.anthropic.setup import NOT_CONFIGURED
from cli_server.anthropic.usage import Usage, UsageMeter, UsageStore
from cli_server.auth.tokens import token_hash
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.plumbing.metrics import Metrics
from cli_server.plumbing.quiet import ClientReactor, quiet_agent
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
    b"anthropic-beta",  # (only the safe ones are sent on: ``safe_betas``)
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


class _FinishHeld:
    """A request whose ``finish`` waits for whoever holds it; everything else passes."""

    def __init__(self, request: Request) -> None:
        self.finish_wanted = False
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def finish(self) -> None:
        self.finish_wanted = True


# (sandbox_id, is_local) -> the addresses its calls may come from on the main listener
Sources = Callable[[str, bool], Awaitable[Collection[str]]]


async def _nowhere(sandbox_id: str, is_local: bool) -> Collection[str]:
    return ()


@frozen
class _Caller:
    sandbox_id: str
    workspace_id: str
    is_local: bool
    digest: bytes = field(repr=False)  # its token's hash


def anthropic_error(request: Request, status: int, kind: str, message: str) -> bytes:
    """Errors in Anthropic's own shape, so SDKs and opencode show them properly."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def plain_host(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") else host  # (IPv4 on a dual-stack socket)


def peer_host(request: Request) -> str | None:
    """The TCP peer: never a forwarded address, which whoever connects can write (a trusted
    proxy's network may be the very one sandboxes share)."""
    channel = request.channel
    host = getattr(channel.getPeer(), "host", None) if channel is not None else None
    return plain_host(host) if isinstance(host, str) else None


@define(eq=False)
class AnthropicProxy(Resource):
    _db: Database
    _reactor: IReactorTime  # timeouts, and the body's cooperator
    _upstream: Upstream | None
    _usage: UsageStore
    _activity: ActivityRecorder
    _metrics: Metrics | None = None
    _sources: Sources = _nowhere
    _connect_timeout: float = 10.0
    _header_timeout: float = 600.0  # a long non-streaming answer takes minutes
    _silence_timeout: float = 300.0  # no byte for this long mid-reply: give up
    _hold: float = 3600.0  # a budget hold outlives any call; a crashed server's runs out
    _free_calls_per_minute: float = 60.0  # counting tokens and listing models, per sandbox
    # The upstream connections: the same reactor (attrs cannot check this default's type).
    _connections: ClientReactor = field(
        default=Factory(lambda self: self._reactor, takes_self=True)
    )
    _free_calls: RateLimit = field(init=False)
    _running: dict[str, set[Request]] = field(factory=dict, init=False)  # sandbox -> its calls
    _agent: Agent = field(init=False)
    _pool: HTTPConnectionPool = field(init=False)  # the agent's kept-alive connections
    isLeaf = True
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)
        pool = HTTPConnectionPool(self._connections, persistent=True)
        pool.maxPersistentPerHost = 64
        self._pool = pool
        self._agent = quiet_agent(self._connections, pool, self._connect_timeout)
        self._free_calls = RateLimit(self._free_calls_per_minute)

    def close_connections(self) -> Deferred[None]:
        """Close the kept-alive connections to the upstream (the next call dials afresh)."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def render(self, request: Request) -> int:
        """The main listener's ``/proxy/anthropic``: no sandbox's door."""
        return self.serve(request, None)

    def serve(self, request: Request, door: str | None) -> int:
        """A call that came in through ``door`` (a sandbox id) or the main listener (None)."""
        d = Deferred.fromCoroutine(self._handle(request, door))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def status_changed(self, sandbox_id: str) -> None:
        """A sandbox changed status: if its token is no longer good, cut its running calls."""
        if sandbox_id not in self._running:
            return
        d = Deferred.fromCoroutine(self._recheck(sandbox_id))
        d.addErrback(lambda f: self._log.failure("re-checking {id}", f, id=sandbox_id))

    async def _recheck(self, sandbox_id: str) -> None:
        try:
            if await self._live(sandbox_id, None):
                return
        except DatabaseUnavailable:
            return  # (its next call is refused with a 503 anyway)
        for request in list(self._running.get(sandbox_id, ())):
            if request.channel is not None:
                request.channel.loseConnection()

    async def _live(self, sandbox_id: str, digest: bytes | None) -> bool:
        """Whether the sandbox is still live (with a token of hash ``digest``, if given)."""
        rows = await self._db.query(
            "SELECT is_local FROM sandboxes WHERE id = %s AND status = ANY(%s)"
            " AND proxy_token_hash = coalesce(%s, proxy_token_hash)",
            (sandbox_id, list(_LIVE), digest),
        )
        if rows and not rows[0]["is_local"]:
            return True
        return bool(rows) and bool(await self._sources(sandbox_id, True))  # its tunnel is up

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(DatabaseUnavailable):
            body = anthropic_error(request, 503, "api_error", "cli-server's database is down")
        else:
            self._log.failure("anthropic proxy", failure)
            body = anthropic_error(request, 500, "api_error", "internal error in the proxy")
        self._finish(request, body)

    def _finish(self, request: Request, body: bytes) -> None:
        if not request.finished and request.channel is not None:
            if body:
                request.write(body)
            request.finish()

    async def _handle(self, request: Request, door: str | None) -> None:
        rest = request.uri[len(PREFIX) :] if request.uri.startswith(PREFIX + b"/") else b""
        if not allowed(request.method, rest):
            return self._finish(
                request,
                anthropic_error(
                    request,
                    404,
                    "not_found_error",
                    "only the Messages API passes this proxy: POST /v1/messages, POST "
                    "/v1/messages/count_tokens, GET /v1/models and GET /v1/models/{id}",
                ),
            )
        if self._upstream is None:
            # 403, not 503: opencode retries a 5xx for minutes, showing the sentence cut short
            # in its retry notice; a 403 ends the turn at once with the whole sentence.
            return self._finish(
                request, anthropic_error(request, 403, "permission_error", NOT_CONFIGURED)
            )
        caller = await self._caller(request, door)
        if caller is None:
            return self._finish(request, self._unknown(request))
        # Counted as running from here, before anything else is awaited: a pause or delete
        # from now on cuts it, wherever it is.
        running = self._running.setdefault(caller.sandbox_id, set())
        running.add(request)
        try:
            await self._admit(request, rest, caller)
        finally:
            running.discard(request)
            if not running and self._running.get(caller.sandbox_id) is running:
                del self._running[caller.sandbox_id]

    @staticmethod
    def _unknown(request: Request) -> bytes:
        return anthropic_error(
            request,
            401,
            "authentication_error",
            "invalid proxy token: use the ANTHROPIC_API_KEY this sandbox was started "
            "with, from inside that sandbox (a sandbox must be running)",
        )

    async def _admit(self, request: Request, rest: bytes, caller: _Caller) -> None:
        """Everything between a good token and the call going out, then the call."""
        if getattr(request, "body_too_large", False):
            return self._finish(
                request,
                anthropic_error(
                    request, 413, "request_too_large", "request bodies are limited to 32 MiB"
                ),
            )
        held: Estimate | None = None
        hold: str | None = None
        if spends(request.method, rest):
            try:
                held = estimate(self._body(request))
            except BadCall as e:
                return self._finish(
                    request, anthropic_error(request, 400, "invalid_request_error", str(e))
                )
            hold, budget = await self._usage.reserve(
                caller.sandbox_id, caller.workspace_id, held.tokens, self._hold
            )
            if hold is None:
                return self._finish(request, self._spent(request, budget))
        else:
            if not self._free_calls.take(caller.sandbox_id, self._reactor.seconds()):
                return self._finish(
                    request,
                    anthropic_error(
                        request,
                        429,
                        "rate_limit_error",
                        f"this sandbox may count tokens or list models "
                        f"{self._free_calls_per_minute:g} times a minute; try again shortly",
                    ),
                )
            if rest.startswith(b"/v1/messages/count_tokens"):
                budget = await self._usage.exhausted(caller.workspace_id)
                if budget is not None:
                    return self._finish(request, self._spent(request, budget))
        usage: Usage | None = None
        # A spending call's reply ends only once its hold is settled: the caller's next call
        # must not find this one still holding the budget.
        held_answer = _FinishHeld(request) if hold is not None else None
        # (it stands in for the request: everything but ``finish`` passes through)
        answer = request if held_answer is None else cast(Request, held_answer)
        try:
            # Whatever changed while we waited (for the budget above, for the database when
            # the token was checked) is seen here; what changes later cuts the call.
            if request.channel is None or not await self._live(caller.sandbox_id, caller.digest):
                return self._finish(answer, self._unknown(answer))
            self._activity.touch(caller.sandbox_id)
            usage = await self._forward(answer, rest, held)
        finally:
            if hold is not None:
                await self._settle(hold, caller, usage or Usage())
            if held_answer is not None and held_answer.finish_wanted:
                self._finish(request, b"")

    @staticmethod
    def _spent(request: Request, budget: int | None) -> bytes:
        return anthropic_error(
            request,
            429,
            "rate_limit_error",
            f"this workspace has used its monthly budget of {budget} tokens (or "
            "calls running now hold the rest); an owner can raise it",
        )

    async def _settle(self, hold: str, caller: _Caller, usage: Usage) -> None:
        try:
            await self._usage.settle(hold, caller.sandbox_id, caller.workspace_id, usage)
        except DatabaseUnavailable:
            self._log.warn(
                "usage of a call by {sandbox_id} not saved (database down); its hold runs out",
                sandbox_id=caller.sandbox_id,
            )

    @staticmethod
    def _body(request: Request) -> bytes:
        content = request.content
        if content is None or content.closed:
            return b""
        content.seek(0)
        body: bytes = content.read()
        return body

    async def _caller(self, request: Request, door: str | None) -> _Caller | None:
        token = request.getHeader(b"x-api-key")
        if token is None:
            auth = request.getHeader(b"authorization") or b""
            token = auth[7:] if auth[:7].lower() == b"bearer " else None
        if not token:
            return None
        # Never cached: a pause, delete or dropped tunnel must end the token at once.
        digest = token_hash(token.decode("utf-8", "replace"))
        rows = await self._db.query(
            "SELECT id, workspace_id, is_local FROM sandboxes WHERE proxy_token_hash = %s"
            " AND status = ANY(%s)",
            (digest, list(_LIVE)),
        )
        if not rows:
            return None
        row = rows[0]
        caller = _Caller(str(row["id"]), str(row["workspace_id"]), row["is_local"], digest)
        if door is not None:
            return caller if door == caller.sandbox_id else None
        host = peer_host(request)
        sources = await self._sources(caller.sandbox_id, caller.is_local)
        if host is None or host not in {plain_host(s) for s in sources}:
            return None
        return caller

    async def _forward(self, request: Request, rest: bytes, held: Estimate | None) -> Usage | None:
        """Pass the call on; what it cost (None: no answer, so nothing)."""
        assert self._upstream is not None
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _DROPPED:
                headers.setRawHeaders(name, values)
        betas = safe_betas(request.requestHeaders.getRawHeaders(b"anthropic-beta", []))
        if betas is not None:
            headers.setRawHeaders(b"anthropic-beta", [betas])
        name, value = self._upstream.credentials()
        headers.setRawHeaders(name, [value])
        if not headers.hasHeader(b"anthropic-version"):
            headers.setRawHeaders(b"anthropic-version", [b"2023-06-01"])
        content = request.content
        body = None
        if content is not None and not content.closed:
            content.seek(0)
            # (read on our reactor, as the sandbox proxy's Forwarder does: not the global one)
            on_reactor = Cooperator(scheduler=lambda f: self._reactor.callLater(0, f))
            body = FileBodyProducer(content, cooperator=on_reactor)
        url = self._upstream.base_url.rstrip("/").encode() + rest
        d = self._agent.request(request.method, url, headers, body)
        d.addTimeout(self._header_timeout, self._reactor)
        request.notifyFinish().addErrback(lambda _: d.cancel() if not d.called else None)
        try:
            response = await d
        except CancelledError:
            return None
        except Exception as e:
            self._log.warn("Anthropic upstream did not answer: {why}", why=type(e).__name__)
            self._finish(
                request,
                anthropic_error(
                    request, 502, "api_error", "the Anthropic API did not answer; try again"
                ),
            )
            return None
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
        if held is not None:
            usage = charge(usage, held, response.code, meter.complete, meter.began)
        elif response.code >= 300 or not meter.complete:
            usage = Usage(usage.model)  # (a call that spends nothing)
        if self._metrics is not None:
            self._metrics.anthropic_calls.labels(str(response.code)).inc()
            for kind in (
                "input_tokens",
                "output_tokens",
                "cache_creation_tokens",
                "cache_read_tokens",
            ):
                self._metrics.anthropic_tokens.labels(kind).inc(getattr(usage, kind))
        return usage
