"""Claude's setup in words, the budget's parser, and the quiet client factories."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from cli_server.anthropic.setup import CONFIGURED, NOT_CONFIGURED, ClaudeSetup
from cli_server.domain.errors import BadRequest
from cli_server.plumbing.quiet import QuietEndpoint, QuietEndpoints, connect_quietly
from cli_server.web.workspaces_api import parse_budget


class ClaudeSetupTests(SynchronousTestCase):
    def test_a_key_or_a_token_is_a_setup(self) -> None:
        """Only credentials count: the proxy forwards nothing without them."""
        self.assertFalse(ClaudeSetup.of(None, None).configured)
        self.assertFalse(ClaudeSetup.of("", "").configured)
        self.assertTrue(ClaudeSetup.of("sk-ant-x", None).configured)
        self.assertTrue(ClaudeSetup.of(None, "token").configured)

    def test_report_and_readiness_say_it_in_words(self) -> None:
        missing = ClaudeSetup(False)
        self.assertEqual(missing.report()["message"], NOT_CONFIGURED)
        self.assertIn("ANTHROPIC_API_KEY", NOT_CONFIGURED)
        self.assertIn("restarts it", NOT_CONFIGURED)
        self.assertEqual(missing.readiness, "not configured")
        self.assertEqual(ClaudeSetup(True).report()["message"], CONFIGURED)
        self.assertEqual(ClaudeSetup(True).readiness, "configured")
        self.assertNotIn("sk-", repr(ClaudeSetup.of("sk-ant-secret", None)))


class ParseBudgetTests(SynchronousTestCase):
    def test_numbers_and_null(self) -> None:
        self.assertIsNone(parse_budget({"monthly_tokens": None}))
        self.assertEqual(parse_budget({"monthly_tokens": 2_000_000}), 2_000_000)
        self.assertEqual(parse_budget({"monthly_tokens": 0}), 0)

    def test_each_refusal_names_the_field_in_words(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "monthly_tokens is missing"),
            ({"monthly_tokens": "5"}, "not text"),
            ({"monthly_tokens": 2.5}, "not a fraction"),
            ({"monthly_tokens": False}, "not true or false"),
            ({"monthly_tokens": -3}, "cannot be negative"),
            ({"monthly_tokens": 10**15 + 1}, "at most 1000000000000000"),
        ]
        for body, words in cases:
            error = self.assertRaises(BadRequest, parse_budget, body)
            self.assertIn(words, error.message)
            self.assertEqual(error.details().get("field"), "monthly_tokens")


class QuietTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.said: list[str] = []

        def observe(event: LogEvent) -> None:
            self.said.append(str(event.get("log_format", "")) + repr(event.get("factory")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_connect_quietly_says_nothing_and_hands_back_the_protocol(self) -> None:
        """Where connectProtocol's factory logs a start and a stop, ours logs nothing."""
        reactor = MemoryReactorClock()
        protocol = Protocol()
        connected = connect_quietly(TCP4ClientEndpoint(reactor, "127.0.0.1", 1), protocol)
        factory = reactor.tcpClients[0][2]
        factory.doStart()  # (what a real connector does around the connection)
        factory.buildProtocol(None).makeConnection(StringTransport())
        factory.doStop()
        self.assertIs(self.successResultOf(connected), protocol)
        self.assertEqual([line for line in self.said if "factory" in line.lower()], [])
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", 1), Protocol())
        noisy = reactor.tcpClients[1][2]
        noisy.doStart()
        noisy.doStop()
        self.assertEqual(len([line for line in self.said if "factory" in line.lower()]), 2)

    def test_a_quiet_endpoint_silences_the_factory_it_connects(self) -> None:
        """The HTTP client's pool makes a noisy factory per connection; ours says nothing."""
        reactor = MemoryReactorClock()
        factory = Factory.forProtocol(Protocol)
        self.assertTrue(factory.noisy)
        QuietEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", 1)).connect(factory)
        connected = reactor.tcpClients[0][2]
        connected.doStart()
        connected.doStop()
        self.assertEqual([line for line in self.said if "factory" in line.lower()], [])

    def test_the_agent_endpoints_are_quiet_for_http_and_https(self) -> None:
        endpoints = QuietEndpoints(MemoryReactorClock(), 5.0)
        for url in (b"http://127.0.0.1:8080/", b"https://api.example.com/v1/messages"):
            self.assertIsInstance(endpoints.endpointForURI(URI.fromBytes(url)), QuietEndpoint)
