"""Sandbox and preview addresses (``proxy/hosts.py``)."""

from __future__ import annotations

import pytest

from cli_server.proxy.hosts import (
    OPENCODE_PORT,
    PORT_RULE,
    Place,
    place_for_host,
    port_refusal,
    sandbox_for_host,
)
from cli_server.proxy.urls import SandboxUrls
from cli_server.sandboxes.backend import PREVIEW_PORTS

SID = "0b6f1a3e-1111-4222-8333-444455556666"
BASE = b"example.org"


@pytest.mark.parametrize(
    ("host", "place"),
    [
        (f"oc-{SID}.example.org", Place(SID)),
        (f"OC-{SID.upper()}.Example.Org:8443", Place(SID)),
        (f"oc-{SID}-p5173.example.org", Place(SID, 5173)),
        (f"oc-{SID}-p1024.example.org.", Place(SID, 1024)),
        (f"oc-{SID}-p65535.example.org:80", Place(SID, 65535)),
        (f"oc-{SID}-p4097.example.org", Place(SID, 4097)),
        ("example.org", None),
        ("oc-x.example.com", None),
        (f"oc-{SID}-p5173.example.org.evil.com", None),
    ],
)
def test_place_for_host(host: str, place: Place | None) -> None:
    """Each name and the sandbox address (sandbox, port) it stands for, in any case."""
    assert place_for_host(host.encode(), BASE) == place


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("p80", f"Port 80 cannot be previewed: {PORT_RULE}."),
        ("p0", f"Port 0 cannot be previewed: {PORT_RULE}."),
        ("p1023", f"Port 1023 cannot be previewed: {PORT_RULE}."),
        ("p4096", f"Port 4096 cannot be previewed: {PORT_RULE}."),
        ("p65536", f"Port 65536 cannot be previewed: {PORT_RULE}."),
        ("p99999999999", f"Port 99999999999 cannot be previewed: {PORT_RULE}."),
        ("p05173", "Port 05173 cannot be previewed: write it without leading zeros."),
        ("pabc", f"'abc' is not a port: {PORT_RULE}."),
        ("p", f"Not a port: {PORT_RULE}."),
        ("p+5173", f"'+5173' is not a port: {PORT_RULE}."),
        ("p5173-p8000", f"'5173-p8000' is not a port: {PORT_RULE}."),
        ("p\u0665\u0661\u0667\u0663", f"Not a port: {PORT_RULE}."),  # (digits, not ASCII)
        ("5173", ""),  # no p: no name of ours at all
        ("x5173", ""),
    ],
)
def test_a_malformed_preview_name_is_refused_with_the_reason(label: str, why: str) -> None:
    """A malformed preview label is a page saying what is wrong (never the main site, never
    opencode's address); any other label of ours is the plain not-found page ("")."""
    host = f"oc-{SID}-{label}.example.org".encode()
    assert place_for_host(host, BASE) == why
    assert sandbox_for_host(host, BASE) == (True, None)


def test_the_ports_are_the_backends_and_the_urls_name_them() -> None:
    """The ports the names take are ``backend.PREVIEW_PORTS`` but opencode's, and the URLs
    the API gives out are names the proxy reads back."""
    assert [p for p in range(0, 70_000) if port_refusal(str(p)) is None] == [
        p for p in PREVIEW_PORTS if p != OPENCODE_PORT
    ]
    urls = SandboxUrls("https", "example.org:8443")
    assert urls.home(SID) == f"https://oc-{SID}.example.org:8443/"
    assert (
        urls.opener(SID, "t", 5173) == f"https://oc-{SID}-p5173.example.org:8443/_cli/auth?ticket=t"
    )
    host = urls.home(SID, 8000).split("/")[2].encode()
    assert place_for_host(host, urls.base_host) == Place(SID, 8000)
