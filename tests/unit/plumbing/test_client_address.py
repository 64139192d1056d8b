"""Who the client is: forwarding headers count only from the proxies the operator trusts."""

from __future__ import annotations

import ipaddress

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.plumbing.client_address import TrustedProxies, parse_trusted_proxies
from cli_server.tap.server import Options

PROXIES = TrustedProxies(parse_trusted_proxies("10.0.0.0/8, 127.0.0.1, ::1"))


def _parse(argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ=environ or {}, preflight=False)
    options.parseOptions(argv)
    return options


class ClientAddressTests(SynchronousTestCase):
    def test_an_untrusted_peer_is_the_client_whatever_it_sends(self) -> None:
        """Forwarding headers from anybody else are ignored, and so is everything by default."""
        for proxies, peer in [(PROXIES, "198.51.100.9"), (TrustedProxies(), "127.0.0.1")]:
            self.assertEqual(
                proxies.client(peer, [b"1.2.3.4"], [b"for=5.6.7.8"]), peer, (proxies, peer)
            )

    def test_the_rightmost_untrusted_hop_is_the_client(self) -> None:
        """Read from the right past trusted proxies: what the client wrote on the left (a
        spoofed first hop) is never reached."""
        cases = [
            ([b"203.0.113.5"], "203.0.113.5"),
            ([b"6.6.6.6, 203.0.113.5"], "203.0.113.5"),  # 6.6.6.6 was the client's own lie
            ([b"6.6.6.6", b"203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # two headers, two proxies
            ([b"10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # every hop trusted: the leftmost
            ([b"203.0.113.5, garbage, 10.1.2.3"], "10.1.2.3"),  # unreadable: stop at a proxy
            ([b"[2001:db8::1]:4711"], "2001:db8::1"),
            ([b"::ffff:203.0.113.5"], "203.0.113.5"),
            ([b"203.0.113.5:1234"], "203.0.113.5"),
            ([], "127.0.0.1"),  # nothing forwarded: the proxy itself
        ]
        for xff, client in cases:
            self.assertEqual(PROXIES.client("127.0.0.1", xff), client, xff)

    def test_forwarded_is_read_when_there_is_no_x_forwarded_for(self) -> None:
        """RFC 7239 ``for=`` hops (quoted, bracketed, with ports), the same rightmost rule."""
        forwarded = [b'for=6.6.6.6, for="[2001:db8::7]:80";proto=https, for=10.0.0.2']
        self.assertEqual(PROXIES.client("::1", [], forwarded), "2001:db8::7")
        self.assertEqual(PROXIES.client("::1", [b"203.0.113.5"], forwarded), "203.0.113.5")
        self.assertEqual(PROXIES.client("::1", [], [b"for=unknown"]), "::1")

    def test_the_option(self) -> None:
        """--trusted-proxies / TRUSTED_PROXIES take addresses and CIDRs; bad ones fail at start
        with one line naming the source; the default trusts nobody."""
        self.assertEqual(_parse([]).config().trusted_proxies, ())
        config = _parse(["--trusted-proxies", "10.0.0.0/8,::1"]).config()
        self.assertEqual(
            config.trusted_proxies,
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1")),
        )
        from_env = _parse([], {"TRUSTED_PROXIES": "192.168.1.1"}).config()
        self.assertEqual(from_env.trusted_proxies, (ipaddress.ip_network("192.168.1.1/32"),))
        error = self.assertRaises(usage.UsageError, _parse, [], {"TRUSTED_PROXIES": "10.0.0.0/33"})
        self.assertIn("TRUSTED_PROXIES: '10.0.0.0/33' is not an IP address or network", str(error))
