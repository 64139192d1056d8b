"""`twistd cli-server`: command-line options and the service tree."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from cli_server.config import (
    ServerConfig,
    default_data_dir,
    parse_base_domain,
    parse_base_scheme,
    parse_db_url,
    parse_duration,
)

# option name -> (environment variable, parser, default); the command line wins over the
# environment, which wins over the default.
_SETTINGS: dict[str, tuple[str | None, Callable[[str], Any], str | None]] = {
    "data-dir": ("CLI_SERVER_DATA", lambda v: Path(v).expanduser().absolute(), None),
    "db-url": ("DATABASE_URL", parse_db_url, None),
    "base-domain": ("BASE_DOMAIN", parse_base_domain, "localhost:8080"),
    "base-scheme": ("BASE_SCHEME", parse_base_scheme, "http"),
    "session-lifetime": ("SESSION_LIFETIME", parse_duration, "7d"),
}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the cli-server web UI, REST API, sandbox subdomain proxy and agent tunnel. "
        "With no --db-url an embedded PostgreSQL is started under --data-dir."
    )
    optParameters = [
        ["data-dir", None, None, "State directory [env CLI_SERVER_DATA; default per user]."],
        ["db-url", None, None, "PostgreSQL URL [env DATABASE_URL; default: embedded]."],
        [
            "base-domain",
            None,
            None,
            "Public host[:port]; sandboxes get oc-ID.<this> "
            "[env BASE_DOMAIN; default localhost:8080].",
        ],
        ["base-scheme", None, None, "http or https [env BASE_SCHEME; default http]."],
        [
            "session-lifetime",
            None,
            None,
            "How long a login lasts, e.g. 12h, 7d [env SESSION_LIFETIME; default 7d].",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve HTTP on, e.g. tcp:8080 or unix:/run/cli.sock; repeatable
        [default tcp:8080]."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        for name, (env, parse, default) in _SETTINGS.items():
            raw, source = self[name], f"--{name}"
            if raw is None and env is not None and self._environ.get(env):
                raw, source = self._environ[env], env
            if raw is None:
                raw = default
            if raw is None:
                continue
            try:
                self[name] = parse(raw)
            except ValueError as e:
                raise usage.UsageError(f"{source}: {e}") from None
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        self._checkListen()

    def _checkListen(self) -> None:
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        for description in self["listen"]:
            try:
                serverFromString(MemoryReactor(), description)
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"--listen {description!r}: {e}") from None

    def config(self) -> ServerConfig:
        return ServerConfig(
            listen=tuple(self["listen"]),
            data_dir=self["data-dir"],
            db_url=self["db-url"],
            base_domain=self["base-domain"],
            base_scheme=self["base-scheme"],
            session_lifetime=self["session-lifetime"],
        )


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    from cli_server.server import buildServer

    return buildServer(options.config(), reactor)
