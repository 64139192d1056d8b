"""The agent-only install: `pip install cli-server` brings the agent and none of the server.

Two checks: what importing the agent really loads (a fresh interpreter's ``sys.modules``), and
what the agent side's source could ever import (every import statement, lazy ones included,
of every cli_server module the agent reaches)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_server import cli
from cli_server._version import __version__
from cli_server.extras import SERVER_MODULES, missing_server_modules, require_server

SRC = Path(__file__).resolve().parents[3] / "src"
# What `pip install cli-server` installs (setup.cfg's install_requires), by top-level module,
# with what those bring (twisted[tls]'s TLS stack, treq's requests, ...).
AGENT_DEPENDENCIES = {"twisted", "autobahn", "treq", "attrs", "incremental", "zope"} | {
    "OpenSSL",  # twisted[tls]
    "service_identity",
    "idna",
    "cryptography",
    "certifi",  # the CA bundle of macOS installs (setup.cfg), imported only if present
}
# Where the agent starts: its tap, its CLI, and the twisted plugin twistd scans.
AGENT_ENTRIES = ("cli_server.tap.agent", "cli_server.cli", "twisted.plugins.cli_server_plugins")


def _source(module: str) -> Path:
    path = SRC / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """Every module ``module``'s source names in an import statement, at any depth."""
    tree = ast.parse(_source(module).read_text(encoding="utf-8"))
    package = module if _source(module).name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            # `from cli_server.tunnel import agent` imports a module, not a name
            found.update(f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}"))
    return found


def _is_module(name: str) -> bool:
    return name.startswith("cli_server") and _source(name).exists()


def _agent_side() -> dict[str, set[str]]:
    """The cli_server modules the agent's entry points reach, with what each imports."""
    seen: dict[str, set[str]] = {}
    todo = list(AGENT_ENTRIES)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen[module] = _imports(module)
        for name in seen[module]:
            parts = name.split(".")
            # a package's __init__ runs before its module
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if _is_module(prefix) and prefix not in seen:
                    todo.append(prefix)
    return seen


def test_agent_source_imports_nothing_server_side() -> None:
    """Layering: the agent side imports the standard library, the agent's dependencies and
    agent-side cli_server modules only, and none of the server's packages."""
    side = _agent_side()
    assert {"cli_server.agent.service", "cli_server.tunnel.mux", "cli_server.extras"} <= set(side)
    server_side = {"cli_server.tap.server", "cli_server.server", "cli_server.db", "cli_server.web"}
    for module, names in side.items():
        for name in names:
            top = name.split(".")[0]
            assert top not in SERVER_MODULES, f"{module} imports {name} (a server dependency)"
            assert not any(name == s or name.startswith(s + ".") for s in server_side), (
                f"{module} imports {name} (server side)"
            )
            allowed = top in sys.stdlib_module_names or top in AGENT_DEPENDENCIES
            assert allowed or top == "cli_server", f"{module} imports {name}"


def test_importing_the_agent_loads_no_server_module() -> None:
    """A fresh interpreter that imports the agent, its CLI and every twisted plugin (as twistd
    does) has loaded no server dependency and no server-side cli_server module."""
    code = f"""
import json, sys
for name in {list(AGENT_ENTRIES)!r}:
    __import__(name)
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = {{m.tapname: m for m in getPlugins(IServiceMaker)}}
makers["cli-agent"].options  # loads the agent's tap
print(json.dumps(sorted(sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "cli_server.tap.agent" in loaded and "cli_server.agent.service" in loaded
    # (autobahn imports argon2 if it happens to be installed: it is the server's, not ours)
    heavy = {m for m in loaded if m.split(".")[0] in set(SERVER_MODULES) - {"argon2"}}
    assert not heavy, heavy
    ours = {m for m in loaded if m.startswith("cli_server")}
    assert ours <= set(_agent_side()) | {
        "cli_server",
        "cli_server.tap",
        "cli_server.tunnel",
        "cli_server.agent",
        "cli_server.plumbing",
    }, ours - set(_agent_side())


def test_server_extra_missing_says_what_to_install() -> None:
    def only_twisted(name: str) -> object | None:
        return object() if name == "twisted" else None

    assert missing_server_modules(only_twisted) == list(SERVER_MODULES)
    with pytest.raises(SystemExit) as stopped:
        require_server(only_twisted)
    said = str(stopped.value.code)
    assert "pip install 'cli-server[server]'" in said and "\n" not in said
    assert "klein" in said and "psycopg2" in said

    def everything(name: str) -> object:
        return object()

    require_server(everything)  # no complaint


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["--version"])
    assert capsys.readouterr().out == f"cli-server {__version__.public()}\n"
