"""The small HTML pages a sandbox's subdomain shows instead of raw errors: escaped text,
the reload and Resume targets, the headers they go with, and the landing page."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from cli_server.proxy.pages import (
    OPENCODE_SILENT,
    PAGE_HEADERS,
    STATUS_TEXT,
    WORKSPACE_DIRECTORY,
    landing_html,
    not_listening,
    page_html,
)


class Parsed(HTMLParser):
    """The tags and text of a page, as a browser's parser sees them."""

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html.decode("utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attrs_of(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def test_title_and_text_are_escaped() -> None:
    """Text that looks like markup is shown, never run (a sandbox names its own ports)."""
    page = page_html("<script>x</script>", 'a "b" & <c>', dashboard="/")
    assert b"<script>x</script>" not in page
    parsed = Parsed(page)
    assert "<script>x</script>" in parsed.text
    assert 'a "b" & <c>' in parsed.text
    assert parsed.attrs_of("script") == []


def test_plain_page_has_no_refresh_and_no_resume() -> None:
    """Without options: only the way back to the dashboard."""
    parsed = Parsed(page_html("T", "x", dashboard="https://cli.test/w/1"))
    assert [m for m in parsed.attrs_of("meta") if m.get("http-equiv") == "refresh"] == []
    assert parsed.attrs_of("form") == []
    assert parsed.attrs_of("a") == [{"href": "https://cli.test/w/1", "style": "background:#666"}]


def test_refresh_reloads_this_page_or_then() -> None:
    """A refresh reloads the page itself, or goes to ``then``."""
    [meta] = [
        m
        for m in Parsed(page_html("T", "x", dashboard="/", refresh=3)).attrs_of("meta")
        if m.get("http-equiv") == "refresh"
    ]
    assert meta["content"] == "3"
    page = page_html("T", "x", dashboard="/", refresh=2, then="/app?a=1&b=2")
    [meta] = [m for m in Parsed(page).attrs_of("meta") if m.get("http-equiv") == "refresh"]
    assert meta["content"] == "2;url=/app?a=1&b=2"


def test_resume_posts_and_carries_where_to_go_next() -> None:
    """Resume is a POST form (no resume by a prefetch or a link), with ``next`` quoted."""
    parsed = Parsed(page_html("T", "x", dashboard="/", resume=True))
    assert parsed.attrs_of("form") == [{"method": "post", "action": "/_cli/resume"}]
    parsed = Parsed(page_html("T", "x", dashboard="/", resume=True, then='/a b?c="d"'))
    assert parsed.attrs_of("form") == [
        {"method": "post", "action": "/_cli/resume?next=/a%20b%3Fc%3D%22d%22"}
    ]


def test_page_headers_forbid_caching_framing_and_referrers() -> None:
    """Status pages are never cached (the status changes), framed or leak the URL onward."""
    headers = dict(PAGE_HEADERS)
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"referrer-policy"] == b"no-referrer"


def test_status_texts_and_fixed_pages() -> None:
    """Every status a browser can meet has a title and a sentence; the port page names it."""
    for status in ("creating", "resuming", "pausing", "paused", "offline", "failed", "starting"):
        title, text = STATUS_TEXT[status]
        assert title and text.endswith(".")
    title, text = not_listening(5173)
    assert "5173" in title and "5173" in text
    assert OPENCODE_SILENT[0] == "opencode is not answering"


def test_landing_page_opens_the_workspace_directory() -> None:
    """The landing script gets the directory as a JS string and the guest flag as a JS
    boolean; the heading names the directory, escaped."""
    page = landing_html().decode()
    assert f"var dir = {json.dumps(WORKSPACE_DIRECTORY)}," in page
    assert "if (!false) return location.replace(home);" in page
    guest = landing_html('/data/"x"<y>', read_only=True).decode()
    assert 'var dir = "/data/\\"x\\"<y>",' in guest
    assert "if (!true) return" in guest
    assert "<h1>Opening /data/&quot;x&quot;&lt;y&gt;…</h1>" in guest
