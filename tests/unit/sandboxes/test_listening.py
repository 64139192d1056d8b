"""Reading a namespace's listening TCP ports from its /proc net tables."""

from __future__ import annotations

from pathlib import Path

from cli_server.sandboxes.backend import PREVIEW_PORTS
from cli_server.sandboxes.listening import listening_in, listening_ports

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)
TCP = HEADER + (
    # 0.0.0.0:4096 LISTEN (opencode), 127.0.0.1:8000 LISTEN, 127.0.0.1:4097 LISTEN (the door)
    "   0: 00000000:1000 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1 1\n"
    "   1: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 2 1\n"
    "   2: 0100007F:1001 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 3 1\n"
    # 10.0.2.100:5173 ESTABLISHED to somewhere: a connection, not a listener
    "   3: 6402000A:1435 08080808:01BB 01 00000000:00000000 00:00000000 00000000  1000 0 4 1\n"
    # 0.0.0.0:80 LISTEN: privileged, never a preview
    "   4: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 5 1\n"
    # 127.0.0.11:37087 LISTEN: a container engine's resolver
    "   5: 0B00007F:90DF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 8 1\n"
)
TCP6 = HEADER + (
    # [::]:5173 LISTEN (Vite), [::]:8000 LISTEN again (dual stack)
    "   0: 00000000000000000000000000000000:1435 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000 0 6 1\n"
    "   1: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000 0 7 1\n"
    "   2: garbage\n"
)


def test_listening_rows_only() -> None:
    """LISTEN rows are read, connections are not; the header and bad lines are skipped."""
    assert listening_in(TCP) == {4096, 8000, 4097, 80, 37087}
    assert listening_in(TCP, hidden=["127.0.0.11"]) == {4096, 8000, 4097, 80}
    assert listening_in(TCP6) == {5173, 8000}
    assert listening_in("") == set()


def test_preview_ports_of_a_namespace(tmp_path: Path) -> None:
    """Both tables, sorted, once each, within the preview range, the excluded left out."""
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert listening_ports(tmp_path, PREVIEW_PORTS, (4096, 4097), ["127.0.0.11"]) == [5173, 8000]
    assert listening_ports(tmp_path, PREVIEW_PORTS, hidden=["127.0.0.11"]) == [
        4096,
        4097,
        5173,
        8000,
    ]
    assert 37087 in listening_ports(tmp_path, PREVIEW_PORTS)


def test_a_process_gone_lists_nothing(tmp_path: Path) -> None:
    """Tables that cannot be read (the process ended) give no ports, not an error."""
    assert listening_ports(tmp_path / "gone", PREVIEW_PORTS) == []
    (tmp_path / "tcp6").write_text(TCP6)  # one table is enough
    assert listening_ports(tmp_path, PREVIEW_PORTS) == [5173, 8000]


def test_a_huge_table_is_read_to_a_bound(tmp_path: Path) -> None:
    """A table beyond the byte bound is read up to it only: the rows past it are not seen."""
    listener = TCP.splitlines(keepends=True)[2]  # 127.0.0.1:8000 LISTEN
    late = listener.replace(":1F40", ":1435")  # 127.0.0.1:5173 LISTEN, after the bound
    (tmp_path / "tcp").write_text(HEADER + listener * 100 + late)
    assert listening_ports(tmp_path, PREVIEW_PORTS, limit=len(HEADER) + 50 * len(listener)) == [
        8000
    ]
    assert listening_ports(tmp_path, PREVIEW_PORTS) == [5173, 8000]
