"""API tokens on every route (``web.routes`` + ``web.bearer``): each operation of the mounted
areas, called with ``Authorization: Bearer``, refuses a token that is not valid (401), one
whose scope is too small or that no token may use (403), and one restricted to another
workspace (404 for what the path names, 403 where the path names no workspace); each refusal
writes nothing (but the token's own last-use mark) and fires no event."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from cli_server.auth.tokens import token_hash
from cli_server.domain.api_tokens import ApiTokens
from cli_server.web.bearer import TokenGuard
from cli_server.web.openapi import operations
from cli_server.web.routes import Declaration
from cli_server.web.site import MOUNTS, Mount
from tests.unit.web.fakes import (
    FOREIGN,
    PEOPLE,
    SANDBOX,
    UNKNOWN,
    WHEN,
    WORKSPACE,
    WRITES,
    Answer,
    World,
    areas,
    send,
)

SECRET = "cli_pat_" + "a" * 43
ELSEWHERE = "66666666-6666-4666-8666-666666666666"  # another workspace of the owner's
ARGUMENTS = {"workspace_id": WORKSPACE, "sandbox_id": SANDBOX}


class TokenRefusalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.scope = "admin"
        self.only: str | None = None
        owner = PEOPLE["owner"]
        self.world.db.rows.update(
            {
                "FROM api_tokens t JOIN users u": lambda args: (
                    [
                        {
                            "id": owner.id,
                            "username": owner.username,
                            "email": None,
                            "created_at": WHEN,
                            "is_admin": True,
                            "token_id": UNKNOWN,
                            "scope": self.scope,
                            "workspace_id": self.only,
                            "expires_at": WHEN.replace(year=2027),
                        }
                    ]
                    if args["hash"] == token_hash(SECRET)
                    else []
                ),
                "SELECT workspace_id FROM sandboxes WHERE id": [{"workspace_id": WORKSPACE}],
            }
        )
        world = self.world
        tokens = TokenGuard(ApiTokens(world.database, world.clock))
        self.apps = areas(world, tokens)

    def each(self) -> list[tuple[Mount, str, str, Declaration]]:
        """(area, method, path with ids filled in, declaration) of every token route."""
        found = []
        for mounted, path, method, declaration in operations(MOUNTS):
            if declaration.public:
                continue
            assert isinstance(mounted, Mount)
            filled = re.sub(
                r"\{(\w+)\}", lambda m: ARGUMENTS.get(m.group(1), UNKNOWN), path
            ).removeprefix(mounted.prefix)
            found.append((mounted, method.upper(), filled or "/", declaration))
        # (43 of today's 54: all but the main site's own, sign-on's and four public ones)
        self.assertGreaterEqual(len(found), 43)
        return found

    def refused(self, mounted: Mount, method: str, path: str, secret: str) -> Answer:
        """A token request refused, having written nothing but the token's use."""
        before, heard = len(self.world.db.asked), len(self.world.heard.said)
        answer = send(
            self.apps[mounted.prefix],
            method,
            path,
            {} if method in ("POST", "PUT") else None,
            origin=FOREIGN,  # (a token request: the Origin rule is moot)
            headers={"Authorization": f"Bearer {secret}", "Cookie": "cli_session=owner"},
            case=self,
        )
        writes = [a for a in self.world.db.asked[before:] if a in WRITES and a != "WITH"]
        self.assertEqual(writes, [], f"{method} {path}")
        self.assertEqual(self.world.heard.said[heard:], [], f"{method} {path}")
        return answer

    def test_invalid_token(self) -> None:
        """A token of the wrong shape, or one the database does not know: 401 everywhere,
        whatever cookie comes with it."""
        for secret in ("nonsense", "cli_pat_" + "b" * 43):
            for mounted, method, path, _ in self.each():
                answer = self.refused(mounted, method, path, secret)
                self.assertEqual((answer.status, answer.code), (401, "invalid_token"), path)
                self.assertIsNotNone(answer.header(b"www-authenticate"))

    def test_scope(self) -> None:
        """A read token reaches only read routes, a write token not admin ones, and no token
        a browser's-only (session) route."""
        for scope, allowed in [("read", {"read"}), ("write", {"read", "write"})]:
            self.scope = scope
            for mounted, method, path, declaration in self.each():
                if declaration.scope in allowed:
                    continue
                answer = self.refused(mounted, method, path, SECRET)
                expected = (
                    "session_only" if declaration.scope == "session" else "insufficient_scope"
                )
                self.assertEqual((answer.status, answer.code), (403, expected), path)

    def test_restricted_to_another_workspace(self) -> None:
        """A token of one workspace reaches nothing of another (404, as for an unknown id),
        and no route about no single workspace unless declared ``across_workspaces``."""
        self.only = ELSEWHERE
        for mounted, method, path, declaration in self.each():
            if declaration.scope == "session":
                continue
            names = [
                a for a in ("workspace_id", "sandbox_id", "invitation_id") if a in declaration.path
            ]
            if not names and declaration.across_workspaces:
                continue
            answer = self.refused(mounted, method, path, SECRET)
            if names:
                self.assertEqual(answer.status, 404, path)
            else:
                self.assertEqual((answer.status, answer.code), (403, "token_workspace"), path)
