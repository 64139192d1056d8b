"""Parsing ``--egress-allow`` / ``--trusted-proxies``: addresses and networks, and errors that
name the bad entry."""

from __future__ import annotations

import ipaddress

import pytest

from cli_server.plumbing.networks import parse_networks


def test_addresses_and_networks() -> None:
    """Single addresses become one-address networks; CIDR ranges are kept; both families."""
    got = parse_networks("10.0.0.1, 192.168.0.0/16,::1,fd00::/8", "10.0.0.0/8")
    assert got == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
    )


def test_host_bits_are_tolerated() -> None:
    """``10.1.2.3/8`` means the network ``10.0.0.0/8`` (operators write it that way)."""
    assert parse_networks("10.1.2.3/8", "x") == (ipaddress.ip_network("10.0.0.0/8"),)


def test_empty_entries_are_skipped() -> None:
    """An empty option, or stray commas, give no networks rather than an error."""
    assert parse_networks("", "x") == ()
    assert parse_networks(" , ,127.0.0.1,", "x") == (ipaddress.ip_network("127.0.0.1/32"),)


def test_bad_entry_is_named_with_the_example() -> None:
    """The error quotes the bad entry and shows the example the caller passed."""
    with pytest.raises(ValueError) as caught:
        parse_networks("10.0.0.0/8, example.com", "203.0.113.0/24")
    message = str(caught.value)
    assert "'example.com'" in message
    assert "203.0.113.0/24" in message
    assert caught.value.__cause__ is None
