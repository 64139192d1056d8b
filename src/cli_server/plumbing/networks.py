"""IP addresses and networks as operators write them in options (``--egress-allow``,
``--trusted-proxies``)."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str, example: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks; a ValueError names the bad entry (and shows
    ``example``)."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. {example})") from None
    return tuple(networks)
