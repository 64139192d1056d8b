"""The docker backend reads a container's ports from /proc only when the process it finds
there is that container's (a server in a namespace of its own sees other processes)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cli_server.sandboxes.docker_backend import _container_ports


def test_a_process_of_another_container_is_not_read() -> None:
    """A process whose cgroup does not name the container: nothing is read (None)."""
    assert _container_ports(os.getpid(), "f" * 64) is None
    assert _container_ports(0, "f" * 64) is None  # the engine reports no process
    assert _container_ports(2**22 + 7, "f" * 64) is None  # no such process here


def test_the_containers_own_process_is_read() -> None:
    """A process whose cgroup names the container: its namespace's preview ports."""
    cgroup = Path(f"/proc/{os.getpid()}/cgroup").read_text()
    named = cgroup.splitlines()[0].rsplit(":", 1)[1]  # (this process's own cgroup path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        ports = _container_ports(os.getpid(), named)
    assert ports is not None and port in ports and 4096 not in ports
