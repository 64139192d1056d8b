"""The TCP ports something listens on in a network namespace, read from ``/proc/<pid>/net``.

The kernel's ``tcp`` and ``tcp6`` tables describe the namespace of the process they are read
through: one read of two small files, no subprocess. Used to list a sandbox's preview ports.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

_LISTEN = "0A"  # the kernel's TCP_LISTEN, as the tables write states


def _kernel_form(ipv4: str) -> str:
    """An IPv4 address as the tables write it (hex, in the host's byte order: x86's)."""
    return socket.inet_aton(ipv4)[::-1].hex().upper()


def listening_in(table: str, hidden: Iterable[str] = ()) -> set[int]:
    """The local ports of LISTEN rows in one ``/proc/net/tcp``-style table, except those
    bound to a ``hidden`` IPv4 address."""
    skipped = {_kernel_form(a) for a in hidden}
    ports = set()
    for line in table.splitlines()[1:]:  # the first line names the columns
        fields = line.split()
        if len(fields) > 3 and fields[3] == _LISTEN:
            address, _, port = fields[1].rpartition(":")
            if address in skipped:
                continue
            try:
                ports.add(int(port, 16))
            except ValueError:
                continue
    return ports


def listening_ports(
    proc_net: Path, wanted: range, excluded: Iterable[int] = (), hidden: Iterable[str] = ()
) -> list[int]:
    """Sorted ports in ``wanted`` that a socket listens on in the namespace whose ``net``
    directory is ``proc_net``, ``excluded`` ports and those on ``hidden`` addresses left out;
    empty if the tables cannot be read (the process has gone)."""
    found: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            found |= listening_in((proc_net / name).read_text(), hidden)
        except OSError:
            continue
    return sorted(p for p in found - set(excluded) if p in wanted)
