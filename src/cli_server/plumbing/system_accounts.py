"""System accounts for the processes root must not run as root (PostgreSQL, sandboxes)."""

from __future__ import annotations

import os
import pwd
import subprocess

from attrs import frozen


@frozen
class SystemAccount:
    uid: int
    gid: int


def ensure_system_account(name: str) -> SystemAccount | None:
    """The account ``name`` (created on first use) when we are root; None otherwise, in which
    case helpers simply run as the current user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            timeout=30,
        )
        entry = pwd.getpwnam(name)
    return SystemAccount(entry.pw_uid, entry.pw_gid)
