"""docs/operations.md's backup and restore of the embedded PostgreSQL, run as written there."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .daemon import Daemon

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_blocks() -> tuple[str, str]:
    """The dump and restore commands of the page's embedded PostgreSQL section."""
    text = OPERATIONS.read_text("utf-8")
    found = re.search(r"^### The embedded PostgreSQL$(.*?)(?=^##)", text, re.M | re.S)
    assert found, "docs/operations.md has no '### The embedded PostgreSQL' section"
    blocks = re.findall(r"```sh\n(.*?)```", found.group(1), re.S)
    assert len(blocks) == 2, f"expected a dump and a restore block, found {len(blocks)}"
    return blocks[0], blocks[1]


def run(block: str, data_dir: Path, backups: Path) -> None:
    """A block with the page's example paths replaced by this test's."""
    script = (
        block.replace("/opt/cli-server/.venv/bin/python", sys.executable)
        .replace("/var/lib/cli-server", str(data_dir))
        .replace("/var/backups", str(backups))
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"


def sign_in(server: Daemon, username: str) -> int:
    server.jar.clear()
    body = {"username": username, "password": "password123"}
    return server.request("POST", "/api/auth/login", body)[0]


def test_documented_backup_and_restore(data_dir: Path) -> None:
    """A dump taken while the server runs, restored into a fresh cluster as the page says,
    brings back what was there at the dump and nothing written after it."""
    dump, restore = documented_blocks()
    backups = data_dir.parent / "backups"
    backups.mkdir()
    server = Daemon(data_dir)
    server.start()
    try:
        body = {"username": "kept", "password": "password123"}
        assert server.request("POST", "/api/auth/register", body)[0] == 201
        assert sign_in(server, "kept") == 200
        code, workspace = server.request("POST", "/api/workspaces", {"name": "backed up"})
        assert code == 201

        run(dump, data_dir, backups)
        assert (backups / "cli-server.dump").stat().st_size > 0
        body = {"username": "later", "password": "password123"}
        assert server.request("POST", "/api/auth/register", body)[0] == 201

        server.stop(signal.SIGTERM)
        shutil.move(data_dir / "postgres", data_dir.parent / "postgres.before")
        server.start()  # a new, empty cluster
        assert sign_in(server, "kept") == 401
        run(dump.splitlines()[0] + "\n" + restore, data_dir, backups)
        server.stop(signal.SIGTERM)

        server.start()
        assert sign_in(server, "kept") == 200
        code, workspaces = server.request("GET", "/api/workspaces")
        assert code == 200 and [w["id"] for w in workspaces] == [workspace["id"]]
        assert sign_in(server, "later") == 401
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGTERM)
