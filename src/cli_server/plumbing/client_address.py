"""Who the client is: the connection's peer, or, only when that peer is a proxy the operator
trusts (``--trusted-proxies``), the address the proxies say they forwarded for.

Every reader of a client address (login limits, access logs, ``X-Forwarded-For`` sent to
sandboxes) goes through ``TrustedProxies.client``, so a forwarding header sent by anybody else
changes nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from attrs import frozen

from cli_server.plumbing.networks import Address, Network, parse_networks

_FOR = re.compile(rb'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1, ::1"``: addresses or CIDR networks, comma-separated."""
    return parse_networks(text, "10.0.0.0/8")


def _address(text: str) -> Address | None:
    """An address as a forwarding header writes it: bare, ``[v6]:port`` or ``v4:port``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated name, garbage
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _hops(forwarded_for: Iterable[bytes], forwarded: Iterable[bytes]) -> list[Address | None]:
    """The forwarding chain, client first: X-Forwarded-For if sent, else ``Forwarded: for=``."""
    xff = [v for value in forwarded_for for v in value.split(b",")]
    if xff:
        return [_address(v.decode("latin-1")) for v in xff]
    hops: list[Address | None] = []
    for value in forwarded:
        for element in value.split(b","):
            match = _FOR.search(element)
            hops.append(_address(match.group(1).decode("latin-1")) if match else None)
    return hops


@frozen
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in n for n in self.networks)

    def trusts_peer(self, peer: str) -> bool:
        return bool(self.networks) and self.trusts(_address(peer))

    def client(
        self, peer: str, forwarded_for: Iterable[bytes] = (), forwarded: Iterable[bytes] = ()
    ) -> str:
        """The client's address. Untrusted peer: the peer, whatever it sends. Trusted peer:
        the chain is read from the right (each hop was appended by the proxy after it), past
        every trusted proxy, to the first address not trusted; an unreadable hop stops the
        walk at the last proxy that could be believed."""
        current = _address(peer)
        if current is None or not self.trusts(current):
            return peer
        for hop in reversed(_hops(forwarded_for, forwarded)):
            if hop is None:
                break
            current = hop
            if not self.trusts(hop):
                break
        return str(current)
