"""The API-tokens journey (webui/e2e/tokens.mjs) in headless Chromium against a real
`twistd cli-server`: a token made on the account page works for a script (curl-like calls
with ``Authorization: Bearer``, from a foreign Origin too), its last use shows in the list,
and revoking it there ends it (401)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .daemon import Daemon
from .journeys import converse, origin, require_web_ui, running_daemon


def _call(server: Daemon, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """What a script does: no cookies, the token as a Bearer credential."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    headers["Origin"] = "https://ci.example"  # (no cookie involved: the Origin rule does not apply)
    request = urllib.request.Request(server.base + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_api_token_journey(data_dir: Path) -> None:
    require_web_ui()
    seen: dict[str, Any] = {}

    with running_daemon(data_dir) as server:

        def drive(line: str) -> str | None:
            if line.startswith("TOKEN "):
                token = seen["token"] = line.split()[1]
                seen["me"] = _call(server, token, "GET", "/api/auth/me")
                seen["made"] = _call(server, token, "POST", "/api/workspaces", {"name": "ci"})
                return "used"
            if line.startswith("REVOKED"):
                seen["after"] = _call(server, seen["token"], "GET", "/api/auth/me")
                return "refused" if seen["after"][0] == 401 else "still works"
            return None

        code, said, errors = converse("tokens.mjs", origin(server), data_dir.parent, drive)
    assert code == 0, "".join(said)[-3000:] + errors[-3000:]
    assert seen["me"][0] == 200 and seen["me"][1]["username"] == "tess", seen
    assert seen["made"][0] == 201, seen
    assert seen["after"][0] == 401 and seen["after"][1]["error"]["code"] == "invalid_token"
    assert seen["token"] not in server.log.read_text()
