"""The README stays short, and every relative link in it and in docs/ leads somewhere real.

Anchors are checked the way GitHub makes them from headings: lower case, punctuation dropped
(hyphens and underscores kept), spaces turned into hyphens, ``-1``, ``-2`` … on repeats.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
DOCS_INDEX = ROOT / "docs" / "README.md"
README_LIMIT = 10_000  # bytes, as `wc -c` counts them

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\S\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# The section the web UI's Claude banner and the usage route send owners to.
HELP_SECTION = re.compile(r'^HELP_SECTION = "([^"]+)"$', re.M)


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code blanked: links there are not links."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor GitHub gives the page's headings."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(text):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(page: Path) -> list[str]:
    """The page's relative link targets (web addresses and mail links left out)."""
    targets = LINK.findall(_without_code(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def broken(page: Path, target: str) -> str | None:
    """Why the target does not resolve from the page, or None when it does."""
    path, _, anchor = target.partition("#")
    dest = (page.parent / unquote(path)).resolve() if path else page
    if not dest.is_file():
        return f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
        return f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


def quick_start(text: str) -> str:
    """The Quick start section, as .ci/run and the quick-start replay find it."""
    found = re.search(r"^##\s+Quick start\s*$(.*?)(?=^##\s|\Z)", text, re.M | re.S | re.I)
    assert found, "README.md has no '## Quick start' section"
    return found.group(1)


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail to docs/"


def test_quick_start_has_exactly_two_sh_blocks() -> None:
    blocks = re.findall(r"```sh\s*\n(.*?)```", quick_start(README.read_text("utf-8")), re.S)
    assert len(blocks) == 2, f"Quick start must have exactly two sh blocks, found {len(blocks)}"


def test_docs_index_lists_every_page() -> None:
    """README.md sends readers to docs/README.md, which links every page of docs/."""
    assert "docs/README.md" in {t.partition("#")[0] for t in links(README)}, (
        "README.md does not link docs/README.md, the documentation index"
    )
    linked = {t.partition("#")[0] for t in links(DOCS_INDEX)}
    missing = [p.name for p in DOCS if p != DOCS_INDEX and p.name not in linked]
    assert not missing, f"docs/README.md (the index) lacks a line for {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    problems = [why for target in links(page) if (why := broken(page, target))]
    assert not problems, "\n".join(problems)


def test_claude_help_section_resolves() -> None:
    """The ``help`` the usage route gives (and the banner names) is a real page and heading."""
    source = ROOT / "src" / "cli_server" / "anthropic" / "setup.py"
    found = HELP_SECTION.search(source.read_text(encoding="utf-8"))
    assert found, "HELP_SECTION not found in cli_server/anthropic/setup.py"
    assert broken(README, found.group(1)) is None, found.group(1)


def test_slug_follows_github() -> None:
    assert slug("Claude in sandboxes: the Anthropic proxy") == (
        "claude-in-sandboxes-the-anthropic-proxy"
    )
    assert slug("Isolation (the `process` backend, as root)") == (
        "isolation-the-process-backend-as-root"
    )
    assert slug("Claude's setup") == "claudes-setup"
    assert slug("Accounts: password, sessions, registration, admin users") == (
        "accounts-password-sessions-registration-admin-users"
    )


# --- The configuration reference (docs/configuration.md) against the code ---------------------

CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
SRC = ROOT / "src"
SERVER_TABLE = "Server options"  # the headings of configuration.md's tables, as they begin
AGENT_TABLE = "Agent options"
COMMAND_TABLE = "The cli-server command"
ENVIRONMENT_TABLE = "Environment only"
# Variables read through a name the code computes (so the scan below cannot see them), and
# the file that reads each: the page must document them while that file still names them.
COMPUTED_VARIABLES = {
    "GITHUB_CLIENT_SECRET_FILE": "cli_server/config.py",  # read_secret: NAME or NAME_FILE
    "OIDC_CLIENT_SECRET_FILE": "cli_server/config.py",
    "GITHUB_URL": "cli_server/tap/server.py",
    "GITHUB_API_URL": "cli_server/tap/server.py",
    "HTTPS_PROXY": "cli_server/agent/http_proxy.py",
    "HTTP_PROXY": "cli_server/agent/http_proxy.py",
    "SYSTEMROOT": "cli_server/agent/machine.py",
}
# Read, but not settings of ours: where programs are found, as for any program.
NOT_SETTINGS = {"PATH"}
CELL_SPLIT = re.compile(r"(?<!\\)\|")
CODE_NAME = re.compile(r"`([^`]+)`")


def section(text: str, heading: str, page: Path = CONFIGURATION) -> str:
    """The body of the ``##`` section whose heading begins with ``heading`` (backticks aside)."""
    for match in re.finditer(r"^##\s+(.+?)\s*$(.*?)(?=^##\s|\Z)", text, re.M | re.S):
        if match.group(1).replace("`", "").startswith(heading):
            return match.group(2)
    raise AssertionError(f"{page.relative_to(ROOT)} has no '## {heading}...' section")


def rows(text: str) -> list[list[str]]:
    """The cells of a section's table rows, header and rule lines left out."""
    found = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]
        if all(re.fullmatch(r":?-+:?", c) for c in cells) or cells[0].lower() in (
            "option",
            "variable",
            "command",
        ):
            continue
        found.append(cells)
    return found


def documented_options(heading: str) -> dict[str, list[str]]:
    """``--option`` -> its row, for the options a section's table lists in its first column."""
    table = rows(section(CONFIGURATION.read_text("utf-8"), heading))
    return {name: row for row in table for name in re.findall(r"`(--[a-z0-9-]+)", row[0])}


def long_options(options: Any) -> set[str]:
    """Every ``--option`` a twistd plugin's Options class understands, but --help/--version."""
    return {f"--{o.rstrip('=')}" for o in options.longOpt} - {"--help", "--version"}


def server_row(name: str) -> str:
    """The table row to add for a server option, from the options table in the code."""
    from cli_server.tap.server import SETTINGS

    setting = SETTINGS.get(name.removeprefix("--"))
    if setting is None:
        return f"| `{name}` | | | <what it does> |"
    env = f"`{setting.env}`" if setting.env else ""
    default = setting.default_help or setting.default or ""
    shown = f"`{default}`" if setting.default is not None else default
    return f"| `{name}` | {env} | {shown} | {setting.help} |"


def test_every_server_option_is_documented() -> None:
    from cli_server.tap.server import SETTINGS, Options

    code = long_options(Options(environ={}))
    documented = documented_options(SERVER_TABLE)
    missing = sorted(code - set(documented))
    assert not missing, (
        f"docs/configuration.md lacks {missing}: add to a table under '## {SERVER_TABLE}':\n"
        + "\n".join(server_row(name) for name in missing)
    )
    stale = sorted(set(documented) - code)
    assert not stale, f"docs/configuration.md lists {stale}, which twistd cli-server lacks"
    wrong = [
        f"--{name}: default cell should show `{s.default}`"
        for name, s in SETTINGS.items()
        if s.default is not None and f"`{s.default}`" not in documented[f"--{name}"][2]
    ]
    assert not wrong, "docs/configuration.md has stale defaults:\n" + "\n".join(wrong)


def test_every_agent_option_is_documented() -> None:
    from cli_server.tap.agent import Options

    options = Options()
    code = long_options(options)
    documented = documented_options(AGENT_TABLE)
    missing = sorted(code - set(documented))
    assert not missing, (
        f"docs/configuration.md lacks {missing}: add to the table under '## {AGENT_TABLE}':\n"
        + "\n".join(f"| `{n}` | {options.docs.get(n[2:], '')} |" for n in missing)
    )
    stale = sorted(set(documented) - code)
    assert not stale, f"docs/configuration.md lists {stale}, which twistd cli-agent lacks"


def test_every_cli_command_is_documented() -> None:
    from cli_server import cli

    commands = {
        re.split(r"\s+[\[(]", line.strip().removeprefix("usage:").strip())[0]
        for line in cli._USAGE.splitlines()
    }
    table = rows(section(CONFIGURATION.read_text("utf-8"), COMMAND_TABLE))
    documented = {name.split(" [")[0] for row in table for name in CODE_NAME.findall(row[0])}
    missing = sorted(commands - documented)
    assert not missing, (
        f"docs/configuration.md's '{COMMAND_TABLE}' table lacks {missing}; add a row "
        "| `COMMAND [options]` | what it runs |"
    )
    stale = sorted(documented - commands)
    assert not stale, f"docs/configuration.md lists commands cli.py lacks: {stale}"


def _environ_reads(tree: ast.AST) -> set[str]:
    """Names read with ``*environ.get("X")``, ``*environ["X"]``, ``os.getenv("X")`` and
    ``read_secret(env, "X")`` (which also reads ``X_FILE``)."""
    found = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            if func.endswith("environ.get") or func == "os.getenv":
                key = node.args[0]
            elif func.endswith("read_secret") and len(node.args) > 1:
                if isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                    found |= {node.args[1].value, f"{node.args[1].value}_FILE"}
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ"):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.add(key.value)
    return found


def code_variables() -> set[str]:
    """Every environment variable the server, the agent and the command read."""
    from cli_server.tap.server import SETTINGS

    found = {s.env for s in SETTINGS.values() if s.env}
    for path in SRC.rglob("*.py"):
        if "webui_dist" not in path.parts:
            found |= _environ_reads(ast.parse(path.read_text("utf-8")))
    for name, where in COMPUTED_VARIABLES.items():
        source = (SRC / where).read_text("utf-8")
        if re.search(rf'"{name.removesuffix("_FILE")}"', source, re.I):
            found.add(name)
    return {name.upper() for name in found} - NOT_SETTINGS


def documented_variables() -> set[str]:
    """Variables in the env column of the options tables and the first of the env table."""
    text = CONFIGURATION.read_text("utf-8")
    cells = [row[1] for h in (SERVER_TABLE, AGENT_TABLE) for row in rows(section(text, h))]
    cells += [row[0] for row in rows(section(text, ENVIRONMENT_TABLE))]
    return {
        name.upper()
        for cell in cells
        for name in CODE_NAME.findall(cell)
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)
    }


def test_every_environment_variable_is_documented() -> None:
    code, documented = code_variables(), documented_variables()
    missing = sorted(code - documented)
    assert not missing, (
        f"docs/configuration.md does not document {missing}: add a row to the option's "
        f"table (its env column), or to '## {ENVIRONMENT_TABLE}' as "
        "| `NAME` | who reads it | default | meaning |"
    )
    stale = sorted(documented - code)
    assert not stale, f"docs/configuration.md documents {stale}, which no code reads"


def test_every_metric_is_documented() -> None:
    from cli_server.plumbing.metrics import Metrics

    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    metrics = section(OPERATIONS.read_text("utf-8"), "Metrics", OPERATIONS)
    documented = set(re.findall(r"`(cli_[a-z_]+)", metrics))
    missing = sorted(exported - documented)
    assert not missing, f"docs/operations.md's metrics lack {missing} (see metrics.py)"
    stale = sorted(documented - exported)
    assert not stale, f"docs/operations.md names metrics /metrics does not export: {stale}"


# --- Module and file names the pages mention ---------------------------------------------------

FILE_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[a-z_][a-z0-9_]*\.(?:py|sql|mjs))\b")


@cache
def repository_files() -> frozenset[str]:
    """Every file's path in the checkout, relative to the root (build output left out)."""
    skip = {"node_modules", "webui_dist", ".git", ".venv", "__pycache__", "dist", "build"}
    return frozenset(
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
    )


def names_a_file(name: str) -> bool:
    """Whether a file the page names exists: a path from the root, from ``src/cli_server``,
    ``src`` or ``tests``, or as the tail of some file's path (``proxy/rules.py``)."""
    if "{" in name or "*" in name:
        return True
    return any(f == name or f.endswith(f"/{name}") for f in repository_files())


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_named_files_exist(page: Path) -> None:
    """A module, migration or test a page names is in the tree (pages stay true to the code)."""
    text = page.read_text("utf-8")
    unknown = sorted({n for n in FILE_NAME.findall(text) if not names_a_file(n)})
    assert not unknown, f"{page.relative_to(ROOT)} names files the tree lacks: {unknown}"
