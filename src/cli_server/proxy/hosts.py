"""Which sandbox, if any, a request's Host names."""

from __future__ import annotations

import re
from functools import lru_cache

_SANDBOX_LABEL = re.compile(rb"^oc-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def host_without_port(host: bytes) -> bytes:
    host = host.strip().lower()
    if host.startswith(b"["):  # [::1]:8080
        return host.split(b"]", 1)[0] + b"]"
    return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host


@lru_cache(maxsize=4096)  # (asked for every proxied request, by a handful of hosts)
def sandbox_for_host(host: bytes | None, base_host: bytes) -> tuple[bool, str | None]:
    """(is a sandbox host, sandbox id or None if the label is malformed).

    ``oc-<uuid>.<base host>`` with any port and any case is a sandbox host; so is any other
    ``*.<base host>`` label, which is then rejected (None) rather than served as the main site.
    """
    if not host:
        return False, None
    name = host_without_port(host).rstrip(b".")
    suffix = b"." + base_host
    if not name.endswith(suffix):
        return False, None
    label = name[: -len(suffix)]
    match = _SANDBOX_LABEL.match(label)
    return True, match.group(1).decode() if match else None
