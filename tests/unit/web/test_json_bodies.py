"""Every route that takes a JSON body (``web.body``, through the routes' declarations) refuses
one sent as another content type (415; a form post from another site cannot be JSON) and one
that is not a JSON object (400 naming ``body``), having written nothing and fired nothing. The
caller is the owner of the workspace, so that no role refusal comes first."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from cli_server.web.openapi import operations
from cli_server.web.site import MOUNTS, Mount
from tests.unit.web.fakes import (
    SANDBOX,
    UNKNOWN,
    WORKSPACE,
    WRITES,
    Answer,
    World,
    areas,
    send,
)

ARGUMENTS = {"workspace_id": WORKSPACE, "sandbox_id": SANDBOX}


class JsonBodyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        # (the owner signed in a minute ago: a token may be made from this session)
        self.world.db.rows["FROM sessions WHERE token_hash = %s AND created_at"] = [{"?": 1}]
        self.apps = areas(self.world)

    def each(self) -> list[tuple[Mount, str, str]]:
        """(area, method, path with ids filled in) of every route with a declared body."""
        found = []
        for mounted, path, method, declaration in operations(MOUNTS):
            if declaration.body is None:
                continue
            assert isinstance(mounted, Mount)
            filled = re.sub(r"\{(\w+)\}", lambda m: ARGUMENTS.get(m.group(1), UNKNOWN), path)
            found.append((mounted, method.upper(), filled.removeprefix(mounted.prefix) or "/"))
        return found

    def refused(self, mounted: Mount, method: str, path: str, data: bytes, kind: str) -> Answer:
        before, heard = len(self.world.db.asked), len(self.world.heard.said)
        answer = send(
            self.apps[mounted.prefix],
            method,
            path,
            who="owner",
            data=data,
            headers={"Content-Type": kind},
            case=self,
        )
        self.assertEqual([a for a in self.world.db.asked[before:] if a in WRITES], [], path)
        self.assertEqual(self.world.heard.said[heard:], [], path)
        return answer

    def test_every_body_route_is_walked(self) -> None:
        """The walk reaches the routes with bodies (ten today: register, login, password,
        tokens; a workspace, a member, a role, the budget, a sandbox; opening a sandbox)."""
        walked = {(m.prefix, method, path) for m, method, path in self.each()}
        self.assertGreaterEqual(len(walked), 10)
        self.assertIn(("/api/auth", "POST", "/login"), walked)
        self.assertIn(("/api/sandboxes", "POST", f"/{SANDBOX}/open"), walked)

    def test_not_json(self) -> None:
        """A form-encoded or plain-text body: 415, whatever it says."""
        for kind in ("application/x-www-form-urlencoded", "text/plain"):
            for mounted, method, path in self.each():
                answer = self.refused(mounted, method, path, b'{"name": "x"}', kind)
                self.assertEqual(answer.status, 415, f"{method} {mounted.prefix}{path} {kind}")

    def test_not_an_object(self) -> None:
        """JSON that is no object, or no JSON at all, is 400 naming the body."""
        for data in (b"[1]", b'"text"', b"{", b'{"a": 1, "a": 2}'):
            for mounted, method, path in self.each():
                answer = self.refused(mounted, method, path, data, "application/json")
                where = f"{method} {mounted.prefix}{path} {data!r}"
                self.assertEqual(
                    (answer.status, answer.body["error"].get("field")), (400, "body"), where
                )
