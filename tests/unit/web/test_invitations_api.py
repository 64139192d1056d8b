"""``/api/invitations``: only the invitee sees and answers an invitation; anyone else's id is
an unknown one (404), and a refusal changes nothing."""

from __future__ import annotations

from typing import Any

from cli_server.web.invitations_api import InvitationsAPI
from tests.unit.web.fakes import PEOPLE, UNKNOWN, WHEN, WORKSPACE, RouteCase, World

COVERS = frozenset({"my_invitations", "accept", "decline", "revoke"})
INVITATION = "55555555-5555-4555-8555-555555555555"
INVITEE = PEOPLE["stranger"].id
INVITATION_ROW = {
    "id": INVITATION,
    "workspace_id": WORKSPACE,
    "workspace_name": "team",
    "role": "developer",
    "created_at": WHEN,
    "expires_at": WHEN,
    "username": "stranger",
    "invited_by": "owner",
}
WORKSPACE_ROW = {"id": WORKSPACE, "name": "team", "role": "developer", "created_at": WHEN}


def the_invitation(args: Any) -> list[dict[str, str]]:
    """``SELECT workspace_id FROM workspace_invitations WHERE id = %s [AND user_id = %s]``:
    one invitation, for the stranger."""
    found = args[0] == INVITATION and (len(args) == 1 or args[1] == INVITEE)
    return [{"workspace_id": WORKSPACE}] if found else []


class InvitationTests(RouteCase):
    api_class = InvitationsAPI

    def setUp(self) -> None:
        self.world = World(row=None)
        self.world.db.rows.update(
            {
                "AND i.user_id = %s": lambda args: [INVITATION_ROW] if args[0] == INVITEE else [],
                "DELETE FROM workspace_invitations WHERE id = %s AND user_id": the_invitation,
                "SELECT workspace_id FROM workspace_invitations": the_invitation,
            }
        )
        self.api = InvitationsAPI(self.world.workspaces(), self.world.cookies())

    def test_my_invitations(self) -> None:
        """GET /: the caller's own pending invitations, none of anyone else's."""
        self.assert_matrix("GET", "/", None, {None: (401, "unauthorized")})
        answer = self.answered("my_invitations", 200, "GET", "/", who="stranger")
        self.assertEqual([i["id"] for i in answer.body], [INVITATION])
        self.assertEqual(self.answered("my_invitations", 200, "GET", "/", who="owner").body, [])

    def test_accept(self) -> None:
        """POST /{id}/accept: the invitee joins and gets the workspace; anyone else, or an
        unknown or malformed id, is 404 and nothing is written."""
        path = f"/{INVITATION}/accept"
        self.assert_foreign_origin_refused("POST", path)
        self.assert_matrix(
            "POST",
            path,
            None,
            {
                None: (401, "unauthorized"),
                "owner": (404, "invitation_not_found"),
                "developer": (404, "invitation_not_found"),
            },
        )
        for other in (f"/{UNKNOWN}/accept", "/not-an-id/accept"):
            self.assert_matrix("POST", other, None, {"stranger": (404, "invitation_not_found")})
        self.world.db.row = WORKSPACE_ROW
        answer = self.answered("accept", 200, "POST", path, who="stranger")
        self.assertEqual((answer.body["id"], answer.body["role"]), (WORKSPACE, "developer"))
        self.assertEqual(self.world.db.writes, ["transaction"])

    def test_accept_used_up_meanwhile(self) -> None:
        """An invitation gone between the look-up and the transaction is not found."""
        answer = self.call("POST", f"/{INVITATION}/accept", who="stranger")
        self.assertEqual((answer.status, answer.code), (404, "invitation_not_found"))

    def test_decline(self) -> None:
        """POST /{id}/decline: the invitee's invitation is gone (204); nobody else's."""
        path = f"/{INVITATION}/decline"
        self.assert_foreign_origin_refused("POST", path)
        self.assert_matrix("POST", "/x/decline", None, {"stranger": (404, "invitation_not_found")})
        self.assert_matrix("POST", path, None, {None: (401, "unauthorized")})
        answer = self.call("POST", path, who="owner")  # (not the invitee: the DELETE finds none)
        self.assertEqual((answer.status, answer.code), (404, "invitation_not_found"))
        self.answered("decline", 204, "POST", path, who="stranger")

    def test_revoke(self) -> None:
        """DELETE /{id}: checked in one transaction (the inviter, an owner or the invitee);
        an unknown or malformed id is 404 before anything is written."""
        path = f"/{INVITATION}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix(
            "DELETE",
            f"/{UNKNOWN}",
            None,
            {None: (401, "unauthorized"), "owner": (404, "invitation_not_found")},
        )
        self.assert_matrix("DELETE", "/x", None, {"owner": (404, "invitation_not_found")})
        self.answered("revoke", 204, "DELETE", path, who="owner")
        self.assertEqual(self.world.db.writes, ["transaction"])
