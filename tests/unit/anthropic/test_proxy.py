"""The Anthropic proxy in process: a FAKE upstream (a twisted.web resource standing in for
api.anthropic.com, reached by the proxy's real HTTP client over in-memory connections), a
database stand-in that knows the sandboxes' token hashes, and an in-memory usage store.

The integration tests (tests/integration/test_anthropic_proxy.py) run the official SDK
against a real server; these add the edge cases that are cheap on a fake clock: timeouts,
a database that is down, the free-call rate limit, cut replies, revocation mid-call, and
that the key shows up neither in an answer nor in the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from cli_server.anthropic.proxy import AnthropicProxy, Upstream
from cli_server.anthropic.setup import NOT_CONFIGURED
from cli_server.anthropic.usage import Usage, UsageStore
from cli_server.auth.tokens import token_hash
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.plumbing.metrics import Metrics
from cli_server.sandboxes.activity import ActivityRecorder

REAL_KEY = "sk-ant-real-key-never-shown"
TOKEN = "proxy-token-of-sandbox-one"
OTHER_TOKEN = "proxy-token-of-sandbox-two"
SANDBOX_ADDRESS = "172.17.0.5"
MESSAGE = json.dumps(
    {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
).encode()
REPLY = {
    "id": "msg_1",
    "type": "message",
    "model": "claude-x",
    "content": [{"type": "text", "text": "hello"}],
    "usage": {"input_tokens": 12, "output_tokens": 7},
}


class FakeAnthropic(Resource):
    """A FAKE api.anthropic.com: records each call, answers ``REPLY`` (or what ``answer``
    says), or holds the request (``hold``) for the test to write to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []
        self.code = 200
        self.answer: bytes = json.dumps(REPLY).encode()
        self.content_type = b"application/json"
        self.hold = False
        self.held: list[Request] = []

    def render(self, request: Any) -> Any:
        headers = {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        self.calls.append((request.method, request.uri, headers, request.content.read()))
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.content_type)
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.answer


class Sandboxes:
    """A database stand-in: the sandboxes table (as the proxy's two queries see it) and the
    activity UPDATE; ``down`` makes every call fail the way the pool does."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.down = False
        self.activity: list[str] = []

    def add(self, sandbox_id: str, token: str, status: str = "running") -> None:
        self.rows[sandbox_id] = {
            "id": sandbox_id,
            "workspace_id": "ws-" + sandbox_id,
            "is_local": False,
            "status": status,
            "proxy_token_hash": token_hash(token),
        }

    async def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        if self.down:
            raise DatabaseUnavailable("connection refused")
        if sql.startswith("SELECT id, workspace_id, is_local FROM sandboxes"):
            digest, live = args
            return [
                r
                for r in self.rows.values()
                if r["proxy_token_hash"] == digest and r["status"] in live
            ]
        if sql.startswith("SELECT is_local FROM sandboxes WHERE id = %s"):
            sandbox_id, live, digest = args
            row = self.rows.get(sandbox_id)
            if row is None or row["status"] not in live:
                return []
            if digest is not None and row["proxy_token_hash"] != digest:
                return []
            return [row]
        raise AssertionError(f"unexpected statement {sql!r}")

    async def execute(self, sql: str, args: Any = ()) -> None:
        assert sql.startswith("UPDATE sandboxes SET last_activity_at")
        self.activity.append(args[0])


class Budgets:
    """An in-memory usage store: one budget (None: unlimited) shared by every workspace."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.spent = 0
        self.holds: dict[str, int] = {}
        self.settled: list[tuple[str, Usage]] = []

    async def reserve(
        self, sandbox_id: str, workspace_id: str, tokens: int, hold: float
    ) -> tuple[str | None, int | None]:
        if self.budget is not None and self.spent + sum(self.holds.values()) >= self.budget:
            return None, self.budget
        name = f"hold-{len(self.holds) + len(self.settled)}"
        self.holds[name] = tokens
        return name, self.budget

    async def exhausted(self, workspace_id: str) -> int | None:
        if self.budget is not None and self.spent >= self.budget:
            return self.budget
        return None

    async def settle(self, hold: str, sandbox_id: str, workspace_id: str, usage: Usage) -> None:
        del self.holds[hold]
        self.spent += usage.total
        self.settled.append((sandbox_id, usage))


class Door(Resource):
    """What a sandbox's own door serves: the proxy, with the door's sandbox id."""

    isLeaf = True

    def __init__(self, proxy: AnthropicProxy, sandbox_id: str) -> None:
        super().__init__()
        self.proxy, self.sandbox_id = proxy, sandbox_id

    def render(self, request: Any) -> Any:
        return self.proxy.serve(request, self.sandbox_id)


class Answer:
    """What the sandbox received on its connection to the proxy."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        self.hang_up: Callable[[], None] = lambda: None  # the sandbox closes its connection

    @property
    def raw(self) -> bytes:
        return self.transport.value()

    @property
    def code(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    @property
    def headers(self) -> dict[bytes, bytes]:
        head = self.raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
        return {k.lower(): v.strip() for k, _, v in (h.partition(b":") for h in head)}

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class World:
    """The proxy on a memory reactor, its fake upstream and stand-ins."""

    def __init__(
        self,
        *,
        upstream: Upstream | None = Upstream("http://api.anthropic.test", REAL_KEY, None),
        budget: int | None = None,
        sources: tuple[str, ...] = (SANDBOX_ADDRESS,),
        **options: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.fake = FakeAnthropic()
        self.db = Sandboxes()
        self.db.add("sbx-1", TOKEN)
        self.db.add("sbx-2", OTHER_TOKEN)
        self.budgets = Budgets(budget)
        self.metrics = Metrics()
        self.sources = sources

        async def sources_of(sandbox_id: str, is_local: bool) -> tuple[str, ...]:
            return self.sources

        self.proxy = AnthropicProxy(
            cast(Database, self.db),
            self.reactor,
            upstream,
            cast(UsageStore, self.budgets),
            ActivityRecorder(cast(Database, self.db), self.reactor),
            self.metrics,
            sources_of,
            **options,
        )
        self.site = Site(self.proxy)
        self.upstream_site = Site(self.fake)
        self.pumps: list[IOPump] = []
        self.connected = 0  # of the reactor's tcpClients
        self.refuse = False

    def call(
        self,
        path: bytes = b"/v1/messages",
        body: bytes | None = MESSAGE,
        *,
        method: bytes | None = None,
        headers: dict[bytes, bytes] | None = None,
        peer: str = SANDBOX_ADDRESS,
        door: str | None = None,
    ) -> Answer:
        """One HTTP/1.0 request from a sandbox, as bytes on a connection to the proxy."""
        if headers is None:
            headers = {b"x-api-key": TOKEN.encode()}
        if method is None:
            method = b"POST" if body is not None else b"GET"
        lines = [method + b" /proxy/anthropic" + path + b" HTTP/1.0", b"Host: proxy"]
        lines += [k + b": " + v for k, v in headers.items()]
        if body is not None:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        site = Site(Door(self.proxy, door)) if door is not None else self.site
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        channel = site.buildProtocol(IPv4Address("TCP", peer, 40000))
        assert channel is not None
        channel.makeConnection(transport)
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        self.pump()
        answer = Answer(transport)
        answer.hang_up = lambda: channel.connectionLost(Failure(ConnectionDone()))
        return answer

    def pump(self) -> None:
        """Connect the proxy's new upstream connections to the fake, and move bytes."""
        for _ in range(20):
            new = self.reactor.tcpClients[self.connected :]
            if not new:
                self.reactor.advance(0)  # (request bodies are read on the reactor)
                for p in self.pumps:
                    p.flush()
                if not self.reactor.tcpClients[self.connected :]:
                    return
                continue
            self.connected += len(new)
            for host, port, factory, _timeout, _bind in new:
                if self.refuse:
                    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
                    continue
                client = factory.buildProtocol(IPv4Address("TCP", host, port))
                server = self.upstream_site.buildProtocol(IPv4Address("TCP", host, port))
                self.pumps.append(
                    connect(
                        server,
                        FakeTransport(server, isServer=True),
                        client,
                        FakeTransport(client, isServer=False),
                        greet=False,
                    )
                )
        raise AssertionError("the connections never settled")

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.pump()

    def upstream_headers(self) -> dict[bytes, list[bytes]]:
        [(_method, _uri, headers, _body)] = self.fake.calls
        return headers

    def messages_total(self) -> float:
        text = self.metrics.render().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cli_anthropic_requests_total{")
        )


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
        for e in events
    )


START = {
    "type": "message_start",
    "message": {"model": "claude-x", "usage": {"input_tokens": 30, "output_tokens": 1}},
}
DELTA = {"type": "message_delta", "usage": {"output_tokens": 50}}


class CredentialsTests(SynchronousTestCase):
    def test_the_proxy_token_is_swapped_for_the_real_key(self) -> None:
        """The call reaches the upstream with the real key in place of the sandbox's token,
        and the answer comes back as the upstream gave it."""
        world = World()
        answer = world.call()
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json(), REPLY)
        [(method, uri, headers, body)] = world.fake.calls
        self.assertEqual((method, uri, body), (b"POST", b"/v1/messages", MESSAGE))
        self.assertEqual(headers[b"x-api-key"], [REAL_KEY.encode()])
        self.assertNotIn(TOKEN.encode(), repr(headers).encode())
        self.assertEqual(headers[b"anthropic-version"], [b"2023-06-01"])

    def test_a_bearer_token_is_replaced_not_appended(self) -> None:
        """A sandbox's ``Authorization: Bearer`` token is accepted and not passed on; with an
        auth token configured, the upstream sees only ours."""
        world = World(upstream=Upstream("http://api.anthropic.test", None, "oauth-secret"))
        answer = world.call(headers={b"authorization": b"bearer " + TOKEN.encode()})
        self.assertEqual(answer.code, 200)
        headers = world.upstream_headers()
        self.assertEqual(headers[b"authorization"], [b"Bearer oauth-secret"])
        self.assertNotIn(b"x-api-key", headers)

    def test_forwarding_headers_cookies_and_unknown_betas_are_dropped(self) -> None:
        """What could leak the sandbox's identity or widen the call does not pass; safe betas
        do, and the caller's ``anthropic-version`` is kept."""
        world = World()
        world.call(
            headers={
                b"x-api-key": TOKEN.encode(),
                b"cookie": b"session=abc",
                b"x-forwarded-for": b"10.0.0.1",
                b"anthropic-version": b"2024-01-01",
                b"anthropic-beta": b"files-api-2025-04-14, prompt-caching-2024-07-31",
            }
        )
        headers = world.upstream_headers()
        self.assertNotIn(b"cookie", headers)
        self.assertNotIn(b"x-forwarded-for", headers)
        self.assertEqual(headers[b"anthropic-beta"], [b"prompt-caching-2024-07-31"])
        self.assertEqual(headers[b"anthropic-version"], [b"2024-01-01"])

    def test_the_upstream_base_path_is_kept(self) -> None:
        """A base URL with a path (a gateway) gets the call's path appended to it."""
        world = World(upstream=Upstream("http://gateway.test/anthropic/", REAL_KEY, None))
        world.call(b"/v1/models?limit=5", None)
        [(_method, uri, _headers, _body)] = world.fake.calls
        self.assertEqual(uri, b"/anthropic/v1/models?limit=5")


class RefusalTests(SynchronousTestCase):
    def assert_refused(self, answer: Answer, code: int, kind: str) -> None:
        self.assertEqual(answer.code, code)
        self.assertEqual(answer.headers[b"content-type"], b"application/json")
        self.assertEqual(answer.json()["type"], "error")
        self.assertEqual(answer.json()["error"]["type"], kind)

    def test_unknown_and_missing_tokens(self) -> None:
        """No token, a wrong one, or a Basic one: 401 in Anthropic's shape; nothing goes out."""
        world = World()
        for headers in (
            {},
            {b"x-api-key": b"not-a-token"},
            {b"authorization": b"Basic " + TOKEN.encode()},
        ):
            self.assert_refused(world.call(headers=headers), 401, "authentication_error")
        self.assertEqual(world.fake.calls, [])

    def test_a_paused_sandbox_s_token_is_refused(self) -> None:
        """The table is read at every call: a token ends with its sandbox's status."""
        world = World()
        world.db.rows["sbx-1"]["status"] = "paused"
        self.assert_refused(world.call(), 401, "authentication_error")
        self.assertEqual(world.fake.calls, [])

    def test_a_token_from_another_address_is_refused(self) -> None:
        """On the main listener a token is good only from its sandbox's own addresses."""
        world = World()
        self.assert_refused(world.call(peer="10.9.9.9"), 401, "authentication_error")
        world.sources = ("::ffff:" + SANDBOX_ADDRESS,)
        self.assertEqual(world.call().code, 200)

    def test_a_door_takes_only_its_own_sandbox_s_token(self) -> None:
        """Through sandbox one's door, sandbox two's token is refused and its own passes
        (whatever the source address)."""
        world = World(sources=())
        door = "sbx-1"
        other = world.call(headers={b"x-api-key": OTHER_TOKEN.encode()}, door=door)
        self.assert_refused(other, 401, "authentication_error")
        self.assertEqual(world.call(door=door, peer="127.0.0.1").code, 200)

    def test_only_the_messages_api_passes(self) -> None:
        """Other endpoints, methods and odd query strings get a 404 before the token is
        even looked at."""
        world = World()
        for method, path in (
            (b"POST", b"/v1/files"),
            (b"GET", b"/v1/messages"),
            (b"POST", b"/v1/messages/batches"),
            (b"GET", b"/v1/models?x=<script>"),
            (b"DELETE", b"/v1/models/claude-x"),
        ):
            answer = world.call(path, MESSAGE if method == b"POST" else None, method=method)
            self.assert_refused(answer, 404, "not_found_error")
        self.assertEqual(world.fake.calls, [])

    def test_no_key_configured(self) -> None:
        """Without a key the answer is a 403 saying so, in full (a 5xx would be retried)."""
        world = World(upstream=None)
        answer = world.call()
        self.assert_refused(answer, 403, "permission_error")
        self.assertEqual(answer.json()["error"]["message"], NOT_CONFIGURED)

    def test_a_message_without_max_tokens_is_refused(self) -> None:
        """A call that cannot be bounded is refused with a 400 and holds nothing."""
        world = World()
        answer = world.call(body=b'{"model": "claude-x", "messages": []}')
        self.assert_refused(answer, 400, "invalid_request_error")
        self.assertIn("max_tokens", answer.json()["error"]["message"])
        self.assertEqual((world.fake.calls, world.budgets.holds), ([], {}))

    def test_the_database_being_down_is_a_503(self) -> None:
        """A database outage is said as such, not as a bad token."""
        world = World()
        world.db.down = True
        answer = world.call()
        self.assert_refused(answer, 503, "api_error")
        self.assertIn("database is down", answer.json()["error"]["message"])


class UsageTests(SynchronousTestCase):
    def test_a_message_holds_then_settles_at_its_usage(self) -> None:
        """The worst case is held while the call runs, and replaced by what it cost; the
        sandbox's activity is recorded and the call counted."""
        world = World(budget=10_000)
        world.fake.hold = True
        answer = world.call()
        self.assertEqual(list(world.budgets.holds.values()), [100 + len(MESSAGE)])
        held = world.fake.held[0]
        held.write(json.dumps(REPLY).encode())
        held.finish()
        world.pump()
        self.assertEqual(answer.code, 200)
        self.assertEqual(world.budgets.holds, {})
        [(sandbox, usage)] = world.budgets.settled
        self.assertEqual((sandbox, usage.model, usage.total), ("sbx-1", "claude-x", 19))
        self.assertEqual(world.db.activity, ["sbx-1"])
        self.assertEqual(world.messages_total(), 1)

    def test_a_streamed_reply_passes_through_as_it_comes(self) -> None:
        """Server-sent events reach the sandbox before the reply ends (nothing buffered), and
        the usage is read from them on the way past."""
        world = World()
        world.fake.hold = True
        world.fake.content_type = b"text/event-stream"
        answer = world.call()
        held = world.fake.held[0]
        held.write(sse(START))
        world.pump()
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.headers[b"content-type"], b"text/event-stream")
        self.assertIn(b"message_start", answer.body)
        self.assertFalse(answer.closed)
        self.assertEqual(world.budgets.settled, [])
        held.write(sse(DELTA))
        held.finish()
        world.pump()
        self.assertTrue(answer.body.endswith(sse(DELTA)))
        self.assertTrue(answer.closed)
        [(_sandbox, usage)] = world.budgets.settled
        self.assertEqual((usage.input_tokens, usage.output_tokens), (30, 50))

    def test_a_spent_budget_refuses_the_call(self) -> None:
        """A workspace at its budget gets a 429 naming it; nothing goes upstream."""
        world = World(budget=100)
        world.budgets.spent = 100
        answer = world.call()
        self.assertEqual(answer.code, 429)
        self.assertEqual(answer.json()["error"]["type"], "rate_limit_error")
        self.assertIn("monthly budget of 100 tokens", answer.json()["error"]["message"])
        counting = world.call(b"/v1/messages/count_tokens")
        self.assertEqual(counting.code, 429)
        self.assertEqual(world.fake.calls, [])

    def test_a_running_call_s_hold_refuses_the_next(self) -> None:
        """While one call holds the rest of the budget, a second is refused; once the first
        settles, its real cost is all that counts."""
        world = World(budget=150)
        world.fake.hold = True
        first = world.call()
        self.assertEqual(world.call().code, 429)
        world.fake.held[0].write(json.dumps(REPLY).encode())
        world.fake.held[0].finish()
        world.pump()
        self.assertEqual(first.code, 200)
        world.fake.hold = False
        self.assertEqual(world.call().code, 200)

    def test_upstream_errors_pass_through_and_cost_nothing(self) -> None:
        """Anthropic's own error answers reach the sandbox unchanged and are not charged."""
        world = World()
        world.fake.code = 529
        world.fake.answer = b'{"type":"error","error":{"type":"overloaded_error","message":"x"}}'
        answer = world.call()
        self.assertEqual(answer.code, 529)
        self.assertEqual(answer.json()["error"]["type"], "overloaded_error")
        [(_sandbox, usage)] = world.budgets.settled
        self.assertEqual(usage.total, 0)

    def test_free_calls_are_rate_limited_per_sandbox(self) -> None:
        """Listing models is free but limited per sandbox; the bucket refills with time."""
        world = World(free_calls_per_minute=2)
        codes = [world.call(b"/v1/models", None).code for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        other = world.call(b"/v1/models", None, headers={b"x-api-key": OTHER_TOKEN.encode()})
        self.assertEqual(other.code, 200)
        world.advance(30)
        self.assertEqual(world.call(b"/v1/models", None).code, 200)
        self.assertEqual(world.budgets.settled, [])


class FailureTests(SynchronousTestCase):
    def test_an_unreachable_upstream_is_a_502_and_releases_the_hold(self) -> None:
        """Connection refused: a clean 502 in Anthropic's shape, and the hold is given back
        at no cost."""
        world = World(budget=10_000)
        world.refuse = True
        answer = world.call()
        world.advance(0.3)  # (the endpoint's next connection attempt: there is none)
        self.assertEqual(answer.code, 502)
        self.assertEqual(answer.json()["error"]["type"], "api_error")
        self.assertEqual(world.budgets.holds, {})
        [(_sandbox, usage)] = world.budgets.settled
        self.assertEqual(usage.total, 0)

    def test_an_upstream_that_never_answers_times_out(self) -> None:
        """No response headers within ``header_timeout``: a 502, not a hung sandbox."""
        world = World(header_timeout=60.0)
        world.upstream_site = Site(Silent())
        answer = world.call()
        world.advance(59)
        self.assertEqual(answer.raw, b"")
        world.advance(1)
        self.assertEqual(answer.code, 502)
        self.assertIn("did not answer", answer.json()["error"]["message"])

    def test_a_reply_that_goes_silent_is_cut_and_charged_its_worst_case(self) -> None:
        """Mid-reply silence longer than ``silence_timeout`` ends the sandbox's connection;
        what was not seen is charged at its worst case (``max_tokens``)."""
        world = World(silence_timeout=30.0)
        world.fake.hold = True
        world.fake.content_type = b"text/event-stream"
        answer = world.call()
        world.fake.held[0].write(sse(START))
        world.pump()
        world.advance(29)
        self.assertFalse(answer.closed)
        world.advance(1)
        self.assertTrue(answer.closed)
        [(_sandbox, usage)] = world.budgets.settled
        self.assertEqual((usage.input_tokens, usage.output_tokens), (30, 100))

    def test_a_sandbox_that_hangs_up_mid_reply_is_charged_its_worst_case(self) -> None:
        """The caller leaving mid-stream stops the upstream call; the hold is settled at the
        worst case for what was not seen (Anthropic may still bill the output)."""
        world = World(budget=10_000)
        world.fake.hold = True
        world.fake.content_type = b"text/event-stream"
        answer = world.call()
        world.fake.held[0].write(sse(START))
        world.pump()
        self.assertEqual(world.budgets.settled, [])
        answer.hang_up()
        world.pump()
        self.assertEqual(world.budgets.holds, {})
        [(_sandbox, usage)] = world.budgets.settled
        self.assertEqual((usage.input_tokens, usage.output_tokens), (30, 100))

    def test_a_local_sandbox_s_token_needs_its_tunnel(self) -> None:
        """A laptop's sandbox's token works while its agent's tunnel is up (its source
        addresses exist) and not once the tunnel is gone."""
        world = World()
        world.db.rows["sbx-1"]["is_local"] = True
        self.assertEqual(world.call().code, 200)
        world.sources = ()
        self.assertEqual(world.call().code, 401)

    def test_counting_tokens_is_free_and_holds_nothing(self) -> None:
        """``count_tokens`` passes without a hold and is not charged to the budget."""
        world = World(budget=10_000)
        world.fake.answer = b'{"input_tokens": 12}'
        answer = world.call(b"/v1/messages/count_tokens")
        self.assertEqual(answer.json(), {"input_tokens": 12})
        self.assertEqual((world.budgets.holds, world.budgets.settled), ({}, []))

    def test_a_paused_sandbox_s_running_call_is_cut(self) -> None:
        """``status_changed`` for a sandbox no longer live closes its calls in flight; a
        status change that leaves it live cuts nothing."""
        world = World()
        world.fake.hold = True
        answer = world.call()
        world.proxy.status_changed("sbx-1")
        self.assertFalse(answer.closed)
        world.db.rows["sbx-1"]["status"] = "paused"
        world.proxy.status_changed("sbx-1")
        self.assertTrue(answer.closed)

    def test_no_secret_in_answers_or_the_log(self) -> None:
        """Neither the key nor the sandbox's token appears in any answer or log event, the
        failures included; the upstream's repr hides the key."""
        world = World(budget=10_000)
        with capturedLogs() as events:
            answers = [world.call(headers={b"x-api-key": b"wrong"})]
            world.refuse = True
            answers.append(world.call())
            world.advance(0.3)
            world.refuse = False
            answers.append(world.call())
            world.db.down = True
            answers.append(world.call())
        self.assertEqual([a.code for a in answers], [401, 502, 200, 503])
        text = b"".join(a.raw for a in answers).decode() + "\n".join(
            formatEvent(e) + repr(e) for e in events
        )
        self.assertNotIn(REAL_KEY, text)
        self.assertNotIn(TOKEN, text)
        self.assertNotIn(REAL_KEY, repr(Upstream("http://x", REAL_KEY, None)))


class Silent(Resource):
    """A FAKE upstream that accepts the call and never answers."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET
