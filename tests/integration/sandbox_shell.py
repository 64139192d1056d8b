"""Run a command inside a live sandbox, as its own user, in all its namespaces (root only).

We enter the namespaces of the sandbox's opencode process itself, so the command sees exactly
what opencode (and an agent it runs) sees: its network, its mounts, its user.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def opencode_pid(root_pid: int) -> int:
    """The opencode process under a sandbox's bubblewrap."""
    for pid in descendants(root_pid):
        if cmdline(pid).startswith("/opt/opencode/bin/opencode serve"):
            return pid
    raise AssertionError(f"no opencode process under {root_pid}")


def run_inside(pid: int, script: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(pid),
            "--user",
            "--net",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--root",
            "--wd",
            "-S",
            "1000",
            "-G",
            "1000",
            "/usr/bin/bash",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def can_connect(pid: int, host: str, port: int) -> bool:
    result = run_inside(pid, f"timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}'")
    return result.returncode == 0
