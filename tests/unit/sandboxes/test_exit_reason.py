"""How a sandbox's opencode ended, in the words its ``error`` shows."""

from __future__ import annotations

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.backend import exit_reason
from cli_server.sandboxes.docker_backend import _container_exit

OOM = "opencode ran out of memory (killed by the kernel's OOM killer)"


class ExitReasonTests(SynchronousTestCase):
    def test_process_endings(self) -> None:
        """A signal is named; under bubblewrap or docker-init 128 + N is signal N."""
        cases = [
            ((None, 9), False, False, "opencode was killed by signal 9 (SIGKILL)"),
            ((137, None), False, True, "opencode was killed by signal 9 (SIGKILL)"),
            ((137, None), True, True, OOM),
            ((None, 9), True, False, OOM),
            ((143, None), False, True, "opencode was killed by signal 15 (SIGTERM)"),
            ((137, None), False, False, "opencode exited with status 137"),  # no init between
            ((1, None), False, True, "opencode exited with status 1"),
            ((0, None), False, True, "opencode exited"),
            # The OOM killer took something else in the sandbox; opencode ended otherwise.
            ((0, None), True, True, "opencode exited"),
            ((1, None), True, True, "opencode exited with status 1"),
            ((143, None), True, True, "opencode was killed by signal 15 (SIGTERM)"),
            ((None, 64), False, False, "opencode was killed by signal 64 (SIGRTMAX)"),
        ]
        for (code, number), oom, via_init, expected in cases:
            self.assertEqual(exit_reason(code, number, oom=oom, via_init=via_init), expected)

    def test_from_twisted_process_reasons(self) -> None:
        """What ProcessProtocol.processEnded gets carries the fields exit_reason reads."""
        killed = ProcessTerminated(signal=9)
        self.assertEqual(
            exit_reason(killed.exitCode, killed.signal, oom=False, via_init=True),
            "opencode was killed by signal 9 (SIGKILL)",
        )
        done = ProcessDone(None)
        self.assertEqual(
            exit_reason(done.exitCode, done.signal, oom=False, via_init=True), "opencode exited"
        )

    def test_docker_container_state(self) -> None:
        """An exited container's State (ExitCode, OOMKilled); a never-started one says nothing."""
        self.assertEqual(
            _container_exit({"Status": "exited", "ExitCode": 137, "OOMKilled": True}), OOM
        )
        self.assertEqual(
            _container_exit({"Status": "exited", "ExitCode": 137, "OOMKilled": False}),
            "opencode was killed by signal 9 (SIGKILL)",
        )
        self.assertEqual(
            _container_exit({"Status": "exited", "ExitCode": 2, "OOMKilled": False}),
            "opencode exited with status 2",
        )
        self.assertIsNone(_container_exit({"Status": "created", "ExitCode": 0}))
