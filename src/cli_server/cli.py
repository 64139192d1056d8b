"""The ``cli-server`` command, for people who know the original's spelling.

``cli-server serve [options]`` runs ``twistd -n cli-server [options]``;
``cli-server agent connect [options]`` runs ``twistd -n cli-agent [options]``;
``cli-server audit [options]`` prints the audit log (``audit_cli``);
``cli-server --version`` prints the version.
Both run in the foreground without a pid file, so a server and an agent can share a directory.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

from cli_server._version import __version__
from cli_server.extras import require_server

_USAGE = """usage: cli-server serve [server options]      (twistd -n cli-server --help)
       cli-server agent connect [agent options]  (twistd -n cli-agent --help)
       cli-server audit [filters] [--json]        (cli-server audit --help)
       cli-server --version"""


def twistd_argv(argv: list[str], posix: bool = os.name == "posix") -> list[str] | None:
    """The twistd command line for ours, or None if ours is not understood. (Windows' twistd
    has no --pidfile: it never writes one.)"""
    twistd = ["twistd", "--nodaemon", *(["--pidfile="] if posix else [])]
    if argv[:1] == ["serve"]:
        return [*twistd, "cli-server", *argv[1:]]
    if argv[:2] == ["agent", "connect"]:
        return [*twistd, "cli-agent", *argv[2:]]
    return None


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    if given in (["--version"], ["version"]):
        print(f"cli-server {__version__.public()}")
        return
    if given[:1] == ["audit"]:
        require_server()
        # (by name, as twistd finds the server: the agent-only install never imports it)
        import_module("cli_server.audit_cli").main(given[1:])
        return
    args = twistd_argv(given)
    if args is None:
        print(_USAGE, file=sys.stderr)
        raise SystemExit(2)
    if given[:1] == ["serve"]:
        require_server()
    from twisted.scripts.twistd import run

    sys.argv = args
    run()


if __name__ == "__main__":
    main()
