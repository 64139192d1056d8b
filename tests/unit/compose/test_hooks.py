"""The hook object: each hook calls its subscribers in order, and a failure reaches the caller."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cli_server.compose.hooks import Hook, ServerHooks


class HookTests(SynchronousTestCase):
    def test_subscribers_in_order(self) -> None:
        """Calling a hook calls every subscriber with its arguments, in subscription order."""
        heard: list[tuple[str, str, int]] = []
        hook: Hook[[str, int]] = Hook("relayed")
        hook.subscribe(lambda sandbox_id, count: heard.append(("first", sandbox_id, count)))
        hook.subscribe(lambda sandbox_id, count: heard.append(("second", sandbox_id, count)))
        hook("sb1", 3)
        self.assertEqual(heard, [("first", "sb1", 3), ("second", "sb1", 3)])
        self.assertEqual(hook.subscribers, 2)

    def test_keywords_pass_through(self) -> None:
        """A hook of keyword arguments (the streams cut by a revocation) passes them as given."""
        heard: list[dict[str, str]] = []
        hook: Hook[...] = Hook("streams_cut")
        hook.subscribe(lambda **match: heard.append(match))
        hook(user_id="u1", sandbox_id="sb1")
        self.assertEqual(heard, [{"user_id": "u1", "sandbox_id": "sb1"}])

    def test_nobody_subscribed(self) -> None:
        """A hook nobody subscribed to does nothing (a backend built for a test, alone)."""
        hook: Hook[[str, str]] = Hook("sandbox_exited")
        hook("sb1", "killed")
        self.assertEqual(hook.subscribers, 0)

    def test_failure_reaches_the_caller(self) -> None:
        """A subscriber that raises stops the call there, as a single callback would."""
        heard: list[str] = []

        def broken(sandbox_id: str) -> None:
            raise ValueError(sandbox_id)

        hook: Hook[[str]] = Hook("tunnel_changed")
        hook.subscribe(broken)
        hook.subscribe(heard.append)
        with self.assertRaises(ValueError):
            hook("sb1")
        self.assertEqual(heard, [])

    def test_server_hooks_are_separate(self) -> None:
        """Each of the server's hooks has its own subscribers, and two objects share none."""
        one, two = ServerHooks(), ServerHooks()
        one.relayed.subscribe(lambda sandbox_id, count: None)
        self.assertEqual([h.subscribers for h in one.all()], [0, 0, 0, 1])
        self.assertEqual([h.subscribers for h in two.all()], [0, 0, 0, 0])
        self.assertEqual(
            [h.name for h in one.all()],
            ["sandbox_exited", "tunnel_changed", "streams_cut", "relayed"],
        )
