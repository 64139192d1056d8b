"""The import layering docs/architecture.md describes, checked on the source: a package imports
only its own layer and the layers below it; the laptop's agent and the relay workers stay
free of what they must not load.

The graph is read from the source (every ``import`` and ``from ... import``, including those
inside functions and ``TYPE_CHECKING`` blocks), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "cli_server"

# Lowest first. A package may import packages of its own layer or of a lower one, never a
# higher one. Top-level modules are named like packages.
LAYERS: list[set[str]] = [
    {"_version", "extras", "plumbing", "config"},  # no domain knowledge
    {"db"},  # PostgreSQL: the pool, migrations, LISTEN
    {"auth"},  # password hashing, token hashing, rate limits
    {"domain", "sso"},  # accounts, workspaces, roles, audit, events; sign-in with a provider
    {"replicas"},  # what the replicas share: events, leader, registry, holders, the channel
    {"sandboxes"},  # the sandbox lifecycle and its backends
    {"tunnel"},  # local agents' tunnels: the wire, the hub, registrations
    {"proxy"},  # sandbox subdomains and the streaming reverse proxy
    {"anthropic"},  # the Anthropic proxy (reuses the proxy's relay)
    {"web"},  # the REST API, the web UI, the Site
    {
        "compose",
        "server",
        "listeners",
        "tap",
        "cli",
        "audit_cli",
        "testing",
    },  # wiring and entry points
]
# The laptop's side: `pip install cli-server` without the server extra runs it.
AGENT = {"agent"}
# What the agent may use of the rest: the tunnel's wire and a little plumbing.
AGENT_MAY_IMPORT = {
    "cli_server._version",
    "cli_server.extras",
    "cli_server.plumbing.nodelay",
    "cli_server.plumbing.threads",
    "cli_server.tunnel.frames",
    "cli_server.tunnel.mux",
    "cli_server.tunnel.carrier",
    "cli_server.tunnel.shared_ports",
    "cli_server.tunnel.versions",
}
RELAY_WORKER = "cli_server.proxy.relay.worker"


def modules() -> Iterator[str]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _path(module: str) -> Path:
    base = SRC / module.replace(".", "/")
    # (db/migrations.py sits beside db/migrations/, which holds SQL)
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"


def _is_module(name: str) -> bool:
    base = SRC / name.replace(".", "/")
    return (base / "__init__.py").exists() or base.with_suffix(".py").exists()


@cache
def imports(module: str) -> frozenset[str]:
    """The cli_server modules ``module`` imports (a name imported from a package counts as
    the submodule when there is one)."""
    found: set[str] = set()
    tree = ast.parse(_path(module).read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cli_server")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "cli_server":
                continue
            found.add(node.module)
            found.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if _is_module(f"{node.module}.{a.name}")
            )
    return frozenset(name for name in found if name != "cli_server")


def top(module: str) -> str:
    """The package (or top-level module) a module belongs to."""
    return module.split(".")[1]


def layer(package: str) -> int:
    for n, names in enumerate(LAYERS):
        if package in names:
            return n
    raise AssertionError(f"cli_server.{package} is in no layer: add it to LAYERS")


def edges() -> Iterator[tuple[str, str]]:
    for module in modules():
        if module == "cli_server":
            continue
        for name in imports(module):
            yield module, name


def test_every_package_has_a_layer() -> None:
    packages = {top(m) for m in modules() if m != "cli_server"} - AGENT
    for package in packages:
        layer(package)


def test_no_package_imports_a_higher_layer() -> None:
    upward = sorted(
        f"{module} imports {name}"
        for module, name in edges()
        if AGENT.isdisjoint({top(module), top(name)}) and layer(top(name)) > layer(top(module))
    )
    assert not upward, "\n".join(upward)


def test_the_proxy_never_imports_the_web_layer() -> None:
    """(The rule the issue names; the layers above imply it, this says it in words.)"""
    found = [f"{m} imports {n}" for m, n in edges() if top(m) == "proxy" and top(n) == "web"]
    assert not found, found


def test_the_agent_imports_only_the_tunnels_wire() -> None:
    found = sorted(
        f"{module} imports {name}"
        for module, name in edges()
        if top(module) in AGENT and top(name) not in AGENT and name not in AGENT_MAY_IMPORT
    )
    assert not found, "\n".join(found)


def test_the_tunnels_wire_imports_nothing_server_side() -> None:
    """The modules the agent shares with the server import only each other (and the
    version)."""
    shared = AGENT_MAY_IMPORT - {"cli_server._version", "cli_server.extras"}
    for module in sorted(shared):
        outside = imports(module) - shared - {"cli_server._version"}
        assert not outside, f"{module} imports {sorted(outside)}"


def test_nothing_server_side_imports_the_agent() -> None:
    found = sorted(
        f"{m} imports {n}"
        for m, n in edges()
        if top(n) in AGENT and top(m) not in AGENT and m not in {"cli_server.tap.agent"}
    )
    assert not found, "\n".join(found)


def _closure(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        # a package's __init__ runs before its modules
        todo.extend(
            ".".join(parts[:i]) for i in range(2, len(parts)) if _is_module(".".join(parts[:i]))
        )
        todo.extend(imports(module))
    return seen


def test_the_relay_worker_loads_no_twisted() -> None:
    """The relay workers are plain processes (no reactor): their modules, and everything they
    import of ours, import neither Twisted nor zope (each worker would pay for them in memory
    and start-up time)."""
    reached = _closure(RELAY_WORKER)
    for module in sorted(reached):
        source = ast.parse(_path(module).read_text("utf-8"))
        for node in ast.walk(source):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in ("twisted", "zope"), (
                    f"{module} (reached from the relay worker) imports {name}"
                )


@pytest.mark.parametrize(
    "start, forbidden",
    [(RELAY_WORKER, ("twisted", "zope")), ("cli_server.agent.service", ("txpostgres", "klein"))],
)
def test_a_fresh_interpreter_agrees(start: str, forbidden: tuple[str, ...]) -> None:
    """What the source says, checked once by importing for real."""
    code = (
        f"import sys; import {start}; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout
