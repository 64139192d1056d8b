"""The TCP ports something listens on in a network namespace, read from ``/proc/<pid>/net``.

The kernel's ``tcp`` and ``tcp6`` tables describe the namespace of the process they are read
through: two files, no subprocess. Used to list a sandbox's preview ports. A namespace may hold
many thousands of connections, so a table is read line by line and never beyond
``MAX_TABLE_BYTES`` (the kernel writes every listener before the first other socket, so
what a bound leaves out is connections unless thousands listen). Callers run this on a
thread pool: a read of /proc still blocks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

_LISTEN = "0A"  # the kernel's TCP_LISTEN, as the tables write states
MAX_TABLE_BYTES = 1024 * 1024  # per table: some 7000 listeners' rows


def _kernel_form(ipv4: str) -> str:
    """An IPv4 address as the tables write it (hex, in the host's byte order: x86's)."""
    return socket.inet_aton(ipv4)[::-1].hex().upper()


def _listeners(rows: Iterable[str], hidden: Iterable[str]) -> set[int]:
    """The local ports of the LISTEN rows among ``rows`` (the header left out), except those
    bound to a ``hidden`` IPv4 address."""
    skipped = {_kernel_form(a) for a in hidden}
    ports = set()
    for line in rows:
        fields = line.split()
        if len(fields) <= 3 or fields[3] != _LISTEN:
            continue
        address, _, port = fields[1].rpartition(":")
        if address in skipped:
            continue
        try:
            ports.add(int(port, 16))
        except ValueError:
            continue
    return ports


def listening_in(table: str, hidden: Iterable[str] = ()) -> set[int]:
    """The local ports of LISTEN rows in one ``/proc/net/tcp``-style table, except those
    bound to a ``hidden`` IPv4 address."""
    return _listeners(table.splitlines()[1:], hidden)  # the first line names the columns


def _rows(path: Path, limit: int) -> Iterator[str]:
    """The lines of a table after its header, as long as ``limit`` bytes last."""
    with path.open("rb") as table:
        left = limit - len(table.readline(limit))
        while left > 0:
            line = table.readline(left)
            if not line:
                return
            left -= len(line)
            yield line.decode("ascii", "replace")


def listening_ports(
    proc_net: Path,
    wanted: range,
    excluded: Iterable[int] = (),
    hidden: Iterable[str] = (),
    limit: int = MAX_TABLE_BYTES,
) -> list[int]:
    """Sorted ports in ``wanted`` that a socket listens on in the namespace whose ``net``
    directory is ``proc_net``, ``excluded`` ports and those on ``hidden`` addresses left out;
    empty if the tables cannot be read (the process has gone). Blocking."""
    found: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            found |= _listeners(_rows(proc_net / name, limit), hidden)
        except OSError:
            continue
    return sorted(p for p in found - set(excluded) if p in wanted)
