"""``web.ids``: a path id is a UUID, and anything else is an unknown id (404), not a 400."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cli_server.domain.errors import NotFound
from cli_server.web.ids import parse_id


class ParseIdTests(SynchronousTestCase):
    def test_canonical(self) -> None:
        """A UUID in any accepted spelling comes back in its canonical lowercase form."""
        canonical = "11111111-1111-4111-8111-111111111111"
        for spelling in (canonical, canonical.upper(), canonical.replace("-", "")):
            self.assertEqual(parse_id(spelling, "workspace"), canonical)

    def test_anything_else_is_not_found(self) -> None:
        """Text that is no UUID cannot name anything: 404 with the thing's own code."""
        for text in ("", "x", "1234", "11111111-1111-4111-8111-11111111111g", "../etc"):
            with self.assertRaises(NotFound) as caught:
                parse_id(text, "sandbox")
            self.assertEqual(caught.exception.code, "sandbox_not_found")
            self.assertEqual(caught.exception.status, 404)
            self.assertEqual(str(caught.exception), "no such sandbox")
