"""The hub's bookkeeping that needs no database: revocation wins over a late attach."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.tunnel.frames import decode
from cli_server.tunnel.hub import TunnelHub


class RevokedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = TunnelHub(None, self.clock)  # type: ignore[arg-type]  # (no database use)
        self.sent: list[bytes] = []
        self.closes: list[tuple[int, str]] = []

    def session(self) -> Any:
        return self.hub.new_session(
            "sb", self.sent.append, lambda code, why: self.closes.append((code, why))
        )

    def test_a_connection_checked_before_the_delete_is_refused_at_attach(self) -> None:
        late = self.session()  # its token was verified just before the sandbox was deleted
        self.hub.revoke("sb", "this local sandbox was deleted from its workspace")
        self.hub.attach("sb", late)
        self.assertIsNone(self.hub.session("sb"))
        self.assertEqual(self.closes, [(4003, "revoked")])
        goaway = decode(self.sent[-1])
        self.assertEqual((goaway.type, goaway["code"]), ("goaway", "revoked"))
        self.assertIn("deleted", goaway["message"])

    def test_the_memory_of_a_revocation_fades(self) -> None:
        self.hub.revoke("sb")
        self.clock.advance(61)
        self.hub.revoke("other")  # (pruning happens on the next revocation)
        self.assertNotIn("sb", self.hub._revoked)
