"""Small HTML pages the subdomain shows instead of raw errors."""

from __future__ import annotations

import json
from html import escape
from urllib.parse import quote

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;"
    "min-height:100vh;background:#f6f7f9;color:#1d2330}"
    "@media(prefers-color-scheme:dark){body{background:#14161b;color:#e6e8ee}"
    "main{background:#1d2027!important}}"
    "main{max-width:28rem;padding:2rem;border-radius:12px;background:#fff;"
    "box-shadow:0 2px 12px #0002}h1{font-size:1.3rem;margin:0 0 .5rem}"
    "a,button{font:inherit;color:#fff;background:#3056d3;border:0;border-radius:8px;"
    "padding:.5rem 1rem;text-decoration:none;cursor:pointer;display:inline-block;margin-top:1rem}"
)

STATUS_TEXT = {
    "creating": ("Starting your sandbox", "opencode is starting; this page reloads by itself."),
    "resuming": (
        "Resuming your sandbox",
        "opencode is starting again; this page reloads by itself.",
    ),
    "pausing": ("Pausing", "The sandbox is being paused."),
    "paused": ("This sandbox is paused", "Its files and sessions are kept. Resume it to continue."),
    "offline": ("The agent is offline", "The laptop running this sandbox is not connected."),
    "failed": (
        "This sandbox crashed",
        "Its files are kept. Resume starts it again; the dashboard's Logs show its output.",
    ),
    "starting": ("Starting your sandbox", "opencode is not answering yet; this page reloads."),
}


def not_listening(port: int) -> tuple[str, str]:
    """The title and text of a preview's page when nothing answers on its port (with a
    refresh: the dev server may start any moment)."""
    return (
        f"Nothing is listening on {port} yet",
        f"Nothing is listening on {port} in this sandbox yet. Start the app there"
        " (on any address of the sandbox); this page reloads by itself.",
    )


# A local sandbox whose agent is connected but whose opencode did not answer (with a refresh).
OPENCODE_SILENT = (
    "opencode is not answering",
    "The agent is connected, but opencode on its machine did not answer. "
    "Is 'opencode serve' running there?",
)

PAGE_HEADERS = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def page_html(
    title: str,
    text: str,
    *,
    dashboard: str,
    refresh: int | None = None,
    resume: bool = False,
    then: str | None = None,
) -> bytes:
    """``then``: where the reload and Resume lead (a path of this origin; default this page)."""
    target = f";url={escape(then)}" if then else ""
    head = f'<meta http-equiv="refresh" content="{refresh}{target}">' if refresh else ""
    after = escape("/_cli/resume" + (f"?next={quote(then, safe='/')}" if then else ""))
    action = (
        f'<form method="post" action="{after}"><button type="submit">Resume</button></form>'
        if resume
        else ""
    )
    body = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{head}'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{escape(title)}</h1><p>{escape(text)}</p>{action}"
        f'<a href="{escape(dashboard)}" style="background:#666">Back to the dashboard</a>'
        f"</main></body></html>"
    )
    return body.encode("utf-8")


# Where every cloud sandbox's workspace disk is, and opencode's working directory.
WORKSPACE_DIRECTORY = "/data/disk0"

# opencode's web app keeps its list of open projects in the browser (localStorage, the store
# "opencode.global.dat:server", scope "local" for the server that serves the app), not on the
# server, so a fresh browser opens on an empty home page whatever opencode's directory is.
# Landing adds the workspace disk to that list (keeping what is there) and opens a new
# session in it: the address ``/<base64url(directory)>/session``. Should a later opencode
# keep its list elsewhere, this still lands on its home page.
_LANDING_SCRIPT = """
(function () {
  var dir = %(directory)s, key = "opencode.global.dat:server";
  try {
    var v = JSON.parse(localStorage.getItem(key) || "{}");
    if (!v || typeof v !== "object") v = {};
    v.projects = v.projects && typeof v.projects === "object" ? v.projects : {};
    v.lastProject = v.lastProject && typeof v.lastProject === "object" ? v.lastProject : {};
    var mine = Array.isArray(v.projects.local) ? v.projects.local : [];
    if (!mine.some(function (p) { return p && p.worktree === dir; })) {
      v.projects.local = [{ worktree: dir, expanded: true }].concat(mine);
    }
    if (typeof v.lastProject.local !== "string") v.lastProject.local = dir;
    if (!Array.isArray(v.list)) v.list = [];
    localStorage.setItem(key, JSON.stringify(v));
    var b64 = btoa(dir).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
    var home = "/" + b64 + "/session";
    if (!%(read_only)s) return location.replace(home);
    // A guest cannot prompt: the project's latest session to read, if it has one.
    fetch("/session", { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (list) {
        var top = (Array.isArray(list) ? list : []).filter(function (s) {
          return s && typeof s.id === "string" && !s.parentID;
        }).sort(function (a, b) {
          return ((b.time || {}).updated || 0) - ((a.time || {}).updated || 0);
        })[0];
        location.replace(top ? home + "/" + encodeURIComponent(top.id) : home);
      }, function () { location.replace(home); });
  } catch (e) {
    location.replace("/");
  }
})();
"""


def landing_html(directory: str = WORKSPACE_DIRECTORY, *, read_only: bool = False) -> bytes:
    """The page a sandbox link lands on: opens opencode on ``directory`` (see above); for a
    guest (``read_only``) on the project's latest session rather than a new one's prompt."""
    script = _LANDING_SCRIPT % {
        "directory": json.dumps(directory),
        "read_only": json.dumps(read_only),
    }
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Opening…</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>Opening {escape(directory)}…</h1>"
        '<p><a href="/">Continue</a></p></main>'
        f"<script>{script}</script></body></html>"
    ).encode()
