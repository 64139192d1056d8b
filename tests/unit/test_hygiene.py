"""What a sandbox sees of a request's target: credential parameters go, the rest stays."""

from __future__ import annotations

import pytest

from cli_server.proxy.hygiene import clean_query


@pytest.mark.parametrize(
    ("target", "cleaned"),
    [
        (b"/x", b"/x"),
        (b"/file?token=s&directory=%2Ftmp", b"/file?directory=%2Ftmp"),
        (b"/x?a=1&auth_token=s&ticket=t&b=2", b"/x?a=1&b=2"),
        (b"/x?%74oken=s&TICKET=t&Auth%5Ftoken=a&b", b"/x?b"),  # as a URL parser reads names
        (b"/x?a=\xc3\xa9&token=s", b"/x?a=\xc3\xa9"),  # any bytes: kept as they came
        (b"/x?a=%ff+b&tok+en=1", b"/x?a=%ff+b&tok+en=1"),
        (b"/x?token", b"/x"),
    ],
)
def test_credential_parameters_are_removed_and_nothing_else_changes(
    target: bytes, cleaned: bytes
) -> None:
    assert clean_query(target) == cleaned
