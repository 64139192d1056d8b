"""The README stays short, and every relative link in it and in docs/ leads somewhere real.

Anchors are checked the way GitHub makes them from headings: lower case, punctuation dropped
(hyphens and underscores kept), spaces turned into hyphens, ``-1``, ``-2`` … on repeats.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
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


def test_readme_indexes_every_docs_page() -> None:
    linked = {t.partition("#")[0] for t in links(README)}
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in linked]
    assert not missing, f"README.md's Documentation index lacks {missing}"


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
