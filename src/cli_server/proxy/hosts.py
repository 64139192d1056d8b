"""Which sandbox, and which of its ports, if any, a request's Host names.

``oc-{uuid}.{base}`` is the sandbox's opencode; ``oc-{uuid}-p{port}.{base}`` is a preview of
``port`` inside it (one DNS label, so the one wildcard name and certificate serve both).
Standard library only: the relay workers import this through ``rules.py``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

_UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SANDBOX_LABEL = re.compile(rb"oc-(" + _UUID + rb")(?:-p([^.]*))?")

# The ports a preview may open (``backend.PREVIEW_PORTS``): unprivileged ones, but opencode's
# own inside a sandbox, which only the opencode address reaches (with its credential).
FIRST_PORT, LAST_PORT = 1024, 65535
OPENCODE_PORT = 4096
PORT_RULE = f"ports {FIRST_PORT}-{LAST_PORT}, not opencode's {OPENCODE_PORT}"


class Place(NamedTuple):
    """A sandbox's address: its opencode (``port`` None) or a preview of ``port``."""

    sandbox_id: str
    port: int | None = None


def port_refusal(text: str) -> str | None:
    """Why ``text`` (a decimal number, as a host label or a URL carries it) is no preview
    port, or None if it is one."""
    shown = text if len(text) <= 12 and text.isascii() and text.isprintable() else text[:0]
    if not text.isascii() or not text.isdigit():
        return f"'{shown}' is not a port: {PORT_RULE}" if shown else f"not a port: {PORT_RULE}"
    if text.startswith("0") and len(text) > 1:
        return f"port {shown} cannot be previewed: write it without leading zeros"
    if len(text) > 5 or not FIRST_PORT <= int(text) <= LAST_PORT or int(text) == OPENCODE_PORT:
        return f"port {shown} cannot be previewed: {PORT_RULE}"
    return None


def host_without_port(host: bytes) -> bytes:
    host = host.strip().lower()
    if host.startswith(b"["):  # [::1]:8080
        return host.split(b"]", 1)[0] + b"]"
    return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host


@lru_cache(maxsize=4096)  # (asked for every proxied request, by a handful of hosts)
def place_for_host(host: bytes | None, base_host: bytes) -> Place | str | None:
    """The sandbox address ``host`` names (any port and any case); None if it is no sandbox
    host; else why not, a sentence (a preview's bad port) or "" (a ``*.<base host>`` label
    that is none of ours): refused, never served as the main site."""
    if not host:
        return None
    name = host_without_port(host).rstrip(b".")
    suffix = b"." + base_host
    if not name.endswith(suffix):
        return None
    match = _SANDBOX_LABEL.fullmatch(name[: -len(suffix)])
    if match is None:
        return ""  # (no sandbox's name: the plain not-found page)
    sandbox_id, port = match.group(1).decode(), match.group(2)
    if port is None:
        return Place(sandbox_id)
    why = port_refusal(port.decode("latin-1"))
    return Place(sandbox_id, int(port)) if why is None else why[:1].upper() + why[1:] + "."


def sandbox_for_host(host: bytes | None, base_host: bytes) -> tuple[bool, str | None]:
    """(is a sandbox host, sandbox id or None if the label is malformed)."""
    place = place_for_host(host, base_host)
    if place is None:
        return False, None
    return True, place.sandbox_id if isinstance(place, Place) else None
