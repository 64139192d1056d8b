"""Where a sandbox may connect to: the internet, yes; the host and private networks, no.

A pure policy, shared by the backends: ``EgressPolicy.denied()`` is the list of networks a
sandbox must not reach (the host's own addresses, the networks its interfaces are attached
to, private, shared, link-local, loopback, multicast and reserved ranges, both families)
minus what the operator allows (``--egress-allow``). ``EgressPolicy.nft_ruleset()`` renders
it as an nftables table for a sandbox's own network namespace; ``on_this_host()`` fills in
this machine's addresses and attached networks, read from the kernel.

Attached networks matter on a host whose LAN is not a private range (a public /24, a
provider's on-link /64): its neighbours and router are not the internet. They are read
when rules are written, at each sandbox start; an address or route added while a sandbox
runs is not in that sandbox's rules until it restarts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from attrs import evolve, field, frozen

from cli_server.plumbing.networks import Address, Network, parse_networks

# Never the internet: a sandbox has no business there unless the operator says so.
ALWAYS_DENIED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918 (also slirp4netns's gateway 10.0.2.2)
        "100.64.0.0/10",  # shared address space (carrier-grade NAT, tailnets)
        "127.0.0.0/8",  # loopback (a sandbox's own lo is allowed by interface, not address)
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",  # RFC 1918 (docker bridges)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::ffff:0:0/96",  # IPv4-mapped: the IPv4 rules by another name
        "64:ff9b:1::/48",  # local-use NAT64
        "fc00::/7",  # unique local (ULA)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routable on old networks)
        "ff00::/8",  # multicast
    )
)


def _networks(values: Iterable[Network | Address | str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def parse_allow(text: str) -> tuple[Network, ...]:
    """``--egress-allow``: comma-separated CIDRs (or single addresses)."""
    return parse_networks(text, "10.1.0.0/16")


def _subtract(denied: Network, allowed: Iterable[Network]) -> list[Network]:
    """``denied`` without the parts of it that some allowed network covers."""
    pieces: list[Network] = [denied]
    for allow in allowed:
        remaining: list[Network] = []
        for piece in pieces:
            if piece.version != allow.version or not piece.overlaps(allow):
                remaining.append(piece)
            elif not allow.supernet_of(piece):  # type: ignore[arg-type]
                remaining.extend(piece.address_exclude(allow))  # type: ignore[arg-type]
        pieces = remaining
    return pieces


def _collapse(networks: Iterable[Network]) -> list[Network]:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


@frozen
class EgressPolicy:
    """What a sandbox may not reach, given this host's addresses and the operator's
    allow-list (which wins over every deny, host addresses included)."""

    host_addresses: tuple[Network, ...] = field(default=(), converter=_networks)
    allow: tuple[Network, ...] = field(default=(), converter=_networks)
    # the networks directly attached to this host's interfaces (its LAN, its neighbours)
    host_networks: tuple[Network, ...] = field(default=(), converter=_networks)

    def on_this_host(self, proc: Path = Path("/proc")) -> EgressPolicy:
        """This policy with the host's addresses and attached networks as they are now
        (blocking reads of /proc: the host's network namespace)."""
        return evolve(
            self, host_addresses=host_addresses(proc), host_networks=attached_networks(proc)
        )

    def denied(self) -> list[Network]:
        """The denied networks, allowed parts cut out, collapsed; IPv4 first."""
        cut: list[Network] = []
        for network in (*ALWAYS_DENIED, *self.host_addresses, *self.host_networks):
            cut += _subtract(network, self.allow)
        return _collapse(cut)

    def permits(self, address: Address | str) -> bool:
        """Whether a sandbox may connect to ``address`` (beyond its own loopback)."""
        ip = ipaddress.ip_address(address)
        return not any(ip in n for n in self.denied())

    def nft_ruleset(self, table: str = "cli_sandbox", dns: Iterable[Address | str] = ()) -> str:
        """An ``inet`` table for ``nft -f -`` inside a sandbox's network namespace.

        Its own loopback, answers on connections made to it and DNS to ``dns`` (port 53)
        pass; new connections to the denied networks are refused at once (not dropped), so
        a client fails fast instead of hanging.
        """
        denied = self.denied()
        lines = [
            f"table inet {table}",
            f"delete table inet {table}",  # replace, never append, on a reload
            f"table inet {table} {{",
            "  chain output {",
            "    type filter hook output priority 0; policy accept;",
            '    oifname "lo" accept',
            # answers to connections made to the sandbox (its port forward comes from the
            # gateway's address); the sandbox's own new connections are judged below
            "    ct state established,related accept",
        ]
        for server in (ipaddress.ip_address(d) for d in dns):
            family = "ip" if server.version == 4 else "ip6"
            lines.append(
                f"    {family} daddr {server} meta l4proto {{ tcp, udp }} th dport 53 accept"
            )
        for family, version in (("ip", 4), ("ip6", 6)):
            nets = [str(n) for n in denied if n.version == version]
            if nets:
                lines.append(
                    f"    {family} daddr {{ {', '.join(nets)} }} "
                    "reject with icmpx type admin-prohibited"
                )
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"


def host_addresses(proc: Path = Path("/proc")) -> tuple[Address, ...]:
    """This machine's own addresses, both families, read from the kernel (run in the host's
    network namespace): every local IPv4 address and every configured IPv6 address."""
    found: list[Address] = []
    try:
        lines = (proc / "net" / "fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in zip(lines, lines[1:], strict=False):
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            found.append(ipaddress.ip_address(previous.split("|--", 1)[1].strip()))
    try:
        inet6 = (proc / "net" / "if_inet6").read_text().splitlines()
    except OSError:
        inet6 = []
    for line in inet6:
        digits = line.split()[0] if line.split() else ""
        if len(digits) == 32:
            found.append(ipaddress.IPv6Address(int(digits, 16)))
    return tuple(dict.fromkeys(found))


# Routes wider than these are tunnels' catch-alls (a VPN's 0.0.0.0/1 through wg0), the way
# to the internet rather than a network beside the host.
_WIDEST_ATTACHED = {4: 8, 6: 16}
_RTF_GATEWAY, _RTF_REJECT = 0x0002, 0x0200


def attached_networks(proc: Path = Path("/proc")) -> tuple[Network, ...]:
    """The networks this host reaches without a router, both families, from the kernel's
    routing tables (every table): IPv4 routes of scope link, IPv6 routes with no gateway.
    Default routes and tunnels' catch-alls (wider than /8, /16) are not networks beside us."""
    found: list[Network] = []
    try:
        lines = (proc / "net" / "fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    leaf = None
    for line in lines:
        text = line.strip()
        if "|--" in line:
            leaf = text.split("|--", 1)[1].strip()
        elif leaf and text.startswith("/") and text.split()[1:] == ["link", "UNICAST"]:
            found.append(ipaddress.ip_network(f"{leaf}{text.split()[0]}", strict=False))
    try:
        routes = (proc / "net" / "ipv6_route").read_text().splitlines()
    except OSError:
        routes = []
    for route in routes:
        words = route.split()
        if len(words) < 10 or int(words[4], 16) or int(words[8], 16) & (_RTF_GATEWAY | _RTF_REJECT):
            continue
        address = ipaddress.IPv6Address(int(words[0], 16))
        found.append(ipaddress.IPv6Network(f"{address}/{int(words[1], 16)}", strict=False))
    wide_enough = [n for n in found if n.prefixlen >= _WIDEST_ATTACHED[n.version]]
    return tuple(dict.fromkeys(wide_enough))
