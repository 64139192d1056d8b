"""The egress policy: what a sandbox may reach, and the nftables rules that say so."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.egress import (
    EgressPolicy,
    attached_networks,
    host_addresses,
    parse_allow,
)

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
     +-- 203.0.113.0/24 2 0 2
           |-- 203.0.113.0
              /24 link UNICAST
     |-- 198.51.100.0
        /26 universe UNICAST
     |-- 128.0.0.0
        /1 link UNICAST
Local:
     |-- 192.0.2.2
        /32 host LOCAL
Id 1000:
     |-- 192.0.2.0
        /24 link UNICAST
     |-- 100.99.0.0
        /28 link UNICAST
"""
Z = "0" * 32
# dest, prefix length, next hop, flags, device; source (::/0), metric, refs, use between
IPV6_ROUTE = "".join(
    f"{dest} {length} {Z} 00 {hop} 00000100 00000001 00000000 {flags} {device}\n"
    for dest, length, hop, flags, device in (
        ("20010db8000100000000000000000000", "40", Z, "00000001", "eth0"),
        ("fe800000000000000000000000000000", "40", Z, "00000001", "eth0"),
        (Z, "00", "20010db8000100000000000000000001", "00000003", "eth0"),
        (
            "20010db8000900000000000000000000",
            "30",
            "20010db8000100000000000000000001",
            "00000003",
            "eth0",
        ),
        ("20000000000000000000000000000000", "03", Z, "00000001", "wg0"),
        ("ff000000000000000000000000000000", "08", Z, "00000001", "eth0"),
        (Z, "00", Z, "00200200", "lo"),
    )
)
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
        self.assertEqual(
            str(error), "'intranet' is not an IP address or network (e.g. 10.1.0.0/16)"
        )


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


def _proc() -> Path:
    proc = Path(tempfile.mkdtemp())
    (proc / "net").mkdir()
    (proc / "net" / "fib_trie").write_text(FIB_TRIE)
    (proc / "net" / "if_inet6").write_text(IF_INET6)
    (proc / "net" / "ipv6_route").write_text(IPV6_ROUTE)
    return proc


class AttachedNetworksTests(SynchronousTestCase):
    def test_networks_beside_the_host(self) -> None:
        """On-link routes of every table (IPv4 scope link, IPv6 without a gateway), once
        each; not routes through a gateway, defaults, rejects, nor catch-alls wider than
        /8 and /16 (a VPN's way to the internet)."""
        self.assertEqual(
            attached_networks(_proc()),
            tuple(
                ipaddress.ip_network(n)
                for n in (
                    "192.0.2.0/24",
                    "203.0.113.0/24",
                    "100.99.0.0/28",
                    "2001:db8:1::/64",
                    "fe80::/64",
                )
            ),
        )
        self.assertEqual(attached_networks(Path(tempfile.mkdtemp())), ())

    def test_denied_on_this_host(self) -> None:
        """A public LAN beside the host (its router, its neighbours) is denied; the rest of
        the internet, reached through the router, is not; the allow-list still wins."""
        policy = EgressPolicy(allow=parse_allow("203.0.113.128/25")).on_this_host(_proc())
        self.assertIn(ipaddress.ip_address("192.0.2.2"), policy.host_addresses[1])
        for neighbour in ("192.0.2.1", "203.0.113.7", "2001:db8:1::1"):
            self.assertFalse(policy.permits(neighbour), neighbour)
        for far in ("198.51.100.9", "203.0.113.200", "2001:db8:9::1", "8.8.8.8", "128.1.1.1"):
            self.assertTrue(policy.permits(far), far)
        rules = policy.nft_ruleset()
        self.assertIn("203.0.113.0/25", rules)
        self.assertIn("2001:db8:1::/64", rules)

    def test_this_machine(self) -> None:
        """Every network this machine's interfaces are on (its eth0's) is denied."""
        policy = EgressPolicy().on_this_host()
        for network in attached_networks():
            self.assertFalse(policy.permits(network[0]), network)
            self.assertFalse(policy.permits(network[-1]), network)


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
