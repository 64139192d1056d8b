"""The egress policy: what a sandbox may reach, and the nftables rules that say so."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.egress import EgressPolicy, host_addresses, parse_allow

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
Local:
     |-- 192.0.2.2
        /32 host LOCAL
"""
IF_INET6 = """\
fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
"""


class DeniedTests(SynchronousTestCase):
    def test_host_and_private_networks_denied_internet_not(self) -> None:
        """By default the host's addresses, private, shared, link-local (metadata) and
        loopback ranges of both families are denied; public addresses are not."""
        policy = EgressPolicy(host_addresses=["192.0.2.2", "2001:db8::5"])
        for address in (
            "192.0.2.2",
            "10.0.2.2",
            "10.0.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "100.100.100.100",
            "169.254.169.254",
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::2",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2001:db8::5",
        ):
            self.assertFalse(policy.permits(address), address)
        for address in ("198.51.100.7", "192.0.2.3", "8.8.8.8", "2001:db8::6", "2606:4700::1"):
            self.assertTrue(policy.permits(address), address)

    def test_allow_list_wins(self) -> None:
        """An allowed CIDR is cut out of every denied range, host addresses included; the
        rest of those ranges stays denied."""
        policy = EgressPolicy(
            host_addresses=["192.0.2.2"], allow=parse_allow("10.9.0.0/16, 192.0.2.2,fd00::/64")
        )
        self.assertTrue(policy.permits("10.9.1.1"))
        self.assertTrue(policy.permits("192.0.2.2"))
        self.assertTrue(policy.permits("fd00::2"))
        self.assertFalse(policy.permits("10.8.255.255"))
        self.assertFalse(policy.permits("10.10.0.0"))
        self.assertFalse(policy.permits("fd01::1"))
        self.assertFalse(policy.permits("169.254.169.254"))

    def test_allowing_a_whole_range(self) -> None:
        """Allowing a supernet of a denied range removes it entirely."""
        policy = EgressPolicy(allow=parse_allow("0.0.0.0/0"))
        self.assertEqual([n for n in policy.denied() if n.version == 4], [])
        self.assertFalse(policy.permits("fe80::1"))

    def test_denied_is_collapsed_networks(self) -> None:
        """denied() gives ipaddress networks, IPv4 first, without overlaps."""
        denied = EgressPolicy(host_addresses=["10.1.2.3", "192.0.2.2"]).denied()
        self.assertTrue(
            all(isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in denied)
        )
        self.assertIn(ipaddress.ip_network("192.0.2.2/32"), denied)
        self.assertNotIn(ipaddress.ip_network("10.1.2.3/32"), denied)  # inside 10/8
        versions = [n.version for n in denied]
        self.assertEqual(versions, sorted(versions))
        for i, a in enumerate(denied):
            for b in denied[i + 1 :]:
                self.assertFalse(a.version == b.version and a.overlaps(b), (a, b))

    def test_parse_allow(self) -> None:
        """Comma-separated CIDRs or addresses; blanks ignored; a bad entry is named."""
        self.assertEqual(
            parse_allow(" 10.1.0.0/16,,192.0.2.9 , fd00::/8"),
            (
                ipaddress.ip_network("10.1.0.0/16"),
                ipaddress.ip_network("192.0.2.9/32"),
                ipaddress.ip_network("fd00::/8"),
            ),
        )
        self.assertEqual(parse_allow(""), ())
        error = self.assertRaises(ValueError, parse_allow, "10.0.0.0/8,intranet")
        self.assertEqual(str(error), "'intranet' is not an IP network (e.g. 10.1.0.0/16)")


class RulesetTests(SynchronousTestCase):
    def test_ruleset(self) -> None:
        """An inet table that replaces itself, lets the sandbox's own loopback and DNS pass
        and refuses the denied networks of each family."""
        rules = EgressPolicy(host_addresses=["192.0.2.2"]).nft_ruleset(table="t", dns=["10.0.2.3"])
        lines = rules.splitlines()
        self.assertEqual(lines[:3], ["table inet t", "delete table inet t", "table inet t {"])
        self.assertIn("    type filter hook output priority 0; policy accept;", lines)
        body = lines.index('    oifname "lo" accept')
        dns = lines.index("    ip daddr 10.0.2.3 meta l4proto { tcp, udp } th dport 53 accept")
        v4 = next(i for i, line in enumerate(lines) if line.startswith("    ip daddr {"))
        v6 = next(i for i, line in enumerate(lines) if line.startswith("    ip6 daddr {"))
        self.assertEqual(lines[body + 1], "    ct state established,related accept")
        self.assertLess(body, dns)
        self.assertLess(dns, v4)
        self.assertIn("192.0.2.2/32", lines[v4])
        self.assertIn("169.254.0.0/16", lines[v4])
        self.assertIn("fc00::/7", lines[v6])
        self.assertTrue(lines[v4].endswith("reject with icmpx type admin-prohibited"))
        self.assertTrue(rules.endswith("  }\n}\n"))

    def test_no_family_line_when_all_allowed(self) -> None:
        """With a family entirely allowed, no rule is written for it."""
        rules = EgressPolicy(allow=["0.0.0.0/0"]).nft_ruleset()
        self.assertNotIn("    ip daddr {", rules)
        self.assertIn("    ip6 daddr {", rules)


class HostAddressesTests(SynchronousTestCase):
    def test_reads_both_families(self) -> None:
        """Local IPv4 addresses from fib_trie (not networks, not broadcasts), once each,
        and every IPv6 address."""
        proc = Path(tempfile.mkdtemp())
        (proc / "net").mkdir()
        (proc / "net" / "fib_trie").write_text(FIB_TRIE)
        (proc / "net" / "if_inet6").write_text(IF_INET6)
        self.assertEqual(
            host_addresses(proc),
            tuple(
                ipaddress.ip_address(a)
                for a in ("127.0.0.1", "192.0.2.2", "fd00::2", "::1", "fe80::fc:ff:fe00:1")
            ),
        )

    def test_missing_files(self) -> None:
        """Without /proc/net (or IPv6), what is there is returned."""
        self.assertEqual(host_addresses(Path(tempfile.mkdtemp())), ())

    def test_this_machine(self) -> None:
        """On this machine, loopback is always among them."""
        self.assertIn(ipaddress.ip_address("127.0.0.1"), host_addresses())
