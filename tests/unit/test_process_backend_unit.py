"""Process backend pieces that need no processes: preflight, binaries, argv."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.backend import SandboxSpec
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import (
    ProcessBackend,
    check_isolation_tools,
    publish_binary,
)
from cli_server.system_accounts import SystemAccount
from cli_server.tap.server import Options


class PreflightTests(SynchronousTestCase):
    def test_missing_tools_named(self) -> None:
        """Each missing tool is named with the package that brings it."""

        def which(tool: str, path: str) -> str | None:
            return None if tool in ("bwrap", "slirp4netns") else f"/usr/bin/{tool}"

        why = check_isolation_tools(which, lambda: 0)
        self.assertEqual(
            why, "bwrap, slirp4netns not found (apt-get install bubblewrap slirp4netns iproute2)"
        )

    def test_needs_root(self) -> None:
        """An ordinary user cannot make network namespaces."""
        why = check_isolation_tools(lambda t, path: f"/usr/bin/{t}", lambda: 1000)
        self.assertIn("only root", str(why))
        self.assertIsNone(check_isolation_tools(lambda t, path: f"/usr/bin/{t}", lambda: 0))

    def test_refuses_without_opt_out(self) -> None:
        """Without isolation the server refuses to start unless --allow-unisolated is given."""
        binary = Path(tempfile.mkdtemp()) / "opencode"
        binary.write_text("#!/bin/sh\n")
        import cli_server.sandboxes.process_backend as pb

        original = pb.check_isolation_tools
        pb.check_isolation_tools = lambda: "bwrap not found"  # type: ignore[assignment]
        self.addCleanup(setattr, pb, "check_isolation_tools", original)
        options = Options(environ={})
        error = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--opencode-bin", str(binary)]
        )
        self.assertEqual(
            str(error),
            "--backend process: cannot isolate sandboxes: bwrap not "
            "found; pass --allow-unisolated to run them without isolation",
        )
        Options(environ={}).parseOptions(["--opencode-bin", str(binary), "--allow-unisolated"])


class PublishBinaryTests(SynchronousTestCase):
    def test_hidden_binary_is_linked_into_data_dir(self) -> None:
        """A binary under a 0700 directory is linked once into the data dir, world-runnable."""
        hidden = Path(tempfile.mkdtemp())
        hidden.chmod(0o700)
        binary = hidden / "opencode"
        binary.write_bytes(b"\x7fELF...")
        binary.chmod(0o755)
        data = Path(tempfile.mkdtemp())
        published = publish_binary(binary, data)
        self.assertTrue(published.is_relative_to(data))
        self.assertEqual(published.read_bytes(), b"\x7fELF...")
        self.assertTrue(published.stat().st_mode & stat.S_IXOTH)
        self.assertEqual(publish_binary(binary, data), published)

    def test_reachable_binary_is_used_in_place(self) -> None:
        """A binary anyone can reach is not copied."""
        public = Path(tempfile.mkdtemp())
        public.chmod(0o755)
        binary = public / "opencode"
        binary.write_bytes(b"x")
        binary.chmod(0o755)
        if all(p.stat().st_mode & stat.S_IXOTH for p in binary.resolve().parents):
            self.assertEqual(publish_binary(binary, Path(tempfile.mkdtemp())), binary)


class ArgvTests(SynchronousTestCase):
    def test_sandbox_command_line(self) -> None:
        """bwrap drops everything, binds only what the sandbox needs, and gets only its own
        secrets; the server's environment is not inherited."""
        data = Path(tempfile.mkdtemp())
        reactor = MemoryReactorClock()
        backend = ProcessBackend(
            reactor,
            data,
            Path("/bin/true"),
            OpencodeClient(reactor),
            account=SystemAccount(999, 999),
        )
        spec = SandboxSpec("s-1", "w-1", "the-password", "the-token")
        os.environ["SECRET_OF_THE_SERVER"] = "x"
        self.addCleanup(os.environ.pop, "SECRET_OF_THE_SERVER")
        argv = backend._sandbox_argv(
            spec,
            data / "sandboxes" / "s-1",
            data / "netns",
            Path("/bin/true"),
            "http://127.0.0.1:4097/p/v1",
        )
        joined = " ".join(argv)
        for flag in (
            "--unshare-user",
            "--unshare-pid",
            "--die-with-parent",
            "--cap-drop ALL",
            "--clearenv",
            "--new-session",
            "-S 999 -G 999",
        ):
            self.assertIn(flag, joined)
        self.assertIn(f"--bind {data}/workspaces/w-1/disk /data/disk0", joined)
        self.assertIn("--setenv OPENCODE_SERVER_PASSWORD the-password", joined)
        self.assertIn("--setenv ANTHROPIC_API_KEY the-token", joined)
        self.assertIn("--setenv ANTHROPIC_BASE_URL http://127.0.0.1:4097/p/v1", joined)
        self.assertNotIn("SECRET_OF_THE_SERVER", joined)
        self.assertIn("--ro-bind /usr /usr", joined)
        self.assertNotIn("--share-net", joined)
        self.assertNotIn(f"--bind {data} ", joined)
        self.assertEqual(repr(spec), "SandboxSpec(id='s-1', workspace_id='w-1')")
