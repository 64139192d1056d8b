"""Who may be added to a workspace without an invitation (--direct-members)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cli_server.domain.workspaces import Workspaces, email_domain

NO_DATABASE: Any = None


def direct(domains: tuple[str, ...], actor: str | None, invitee: str | None) -> bool:
    return Workspaces(NO_DATABASE, domains).adds_directly(actor, invitee)


class DirectMembersTests(SynchronousTestCase):
    def test_email_domain(self) -> None:
        """The part after the last @, lower-cased; nothing for missing or odd addresses."""
        self.assertEqual(email_domain("A.B@Corp.Example."), "corp.example")
        self.assertEqual(email_domain('"x@y"@corp.example'), "corp.example")
        for email in (None, "", "no-at-sign", "trailing@"):
            self.assertIsNone(email_domain(email))

    def test_default_invites_everyone(self) -> None:
        """With no domains configured, nobody is added directly."""
        self.assertFalse(direct((), "a@corp.example", "b@corp.example"))

    def test_same_listed_domain_only(self) -> None:
        """Both addresses must be in the same listed domain; subdomains are other domains."""
        domains = ("corp.example", "lab.example")
        self.assertTrue(direct(domains, "a@corp.example", "b@CORP.example"))
        for actor, invitee in [
            ("a@elsewhere.example", "b@corp.example"),  # an outsider adding an insider
            ("a@corp.example", "b@elsewhere.example"),  # an insider adding an outsider
            ("a@lab.example", "b@corp.example"),  # two listed domains, not the same one
            ("a@corp.example", "b@sub.corp.example"),
            (None, "b@corp.example"),
            ("a@corp.example", None),
        ]:
            self.assertFalse(direct(domains, actor, invitee), (actor, invitee))

    def test_star_is_everyone(self) -> None:
        """``*``: the old behaviour, for a server of one trusted team."""
        self.assertTrue(direct(("*",), None, None))
