"""Process backend pieces that need no processes: preflight, binaries, argv."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.plumbing.system_accounts import SystemAccount
from cli_server.sandboxes.backend import SandboxSpec
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import (
    ARGS_FD,
    SECCOMP_FD,
    Limits,
    ProcessBackend,
    bwrap_args,
    check_isolation_tools,
    publish_binary,
    sandbox_argv,
)
from cli_server.sandboxes.seccomp import SeccompError, sandbox_filter
from cli_server.tap.server import Options


class PreflightTests(SynchronousTestCase):
    def test_missing_tools_named(self) -> None:
        """Each missing tool is named with the package that brings it."""

        def which(tool: str, path: str) -> str | None:
            return None if tool in ("bwrap", "slirp4netns") else f"/usr/bin/{tool}"

        why = check_isolation_tools(which, lambda: 0)
        self.assertEqual(
            why,
            "bwrap, slirp4netns not found "
            "(apt-get install bubblewrap slirp4netns iproute2 nftables)",
        )
        why = check_isolation_tools(
            lambda t, path: None if t == "nft" else f"/usr/bin/{t}", lambda: 0
        )
        self.assertEqual(
            why, "nft not found (apt-get install bubblewrap slirp4netns iproute2 nftables)"
        )

    def test_seccomp_needed(self) -> None:
        """Without libseccomp there is no filter, and so no isolation."""

        def no_library() -> bytes:
            raise SeccompError("libseccomp not found (x); apt-get install libseccomp2")

        why = check_isolation_tools(lambda t, path: f"/usr/bin/{t}", lambda: 0, no_library)
        self.assertEqual(why, "libseccomp not found (x); apt-get install libseccomp2")

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
        pb.check_isolation_tools = lambda: "bwrap not found"  # type: ignore[assignment,misc]
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
            limits=Limits(memory_bytes=1024**3),
            cgroup_root=Path(tempfile.mkdtemp()),
        )
        spec = SandboxSpec("s-1", "w-1", "the-password", "the-token")
        os.environ["SECRET_OF_THE_SERVER"] = "x"
        self.addCleanup(os.environ.pop, "SECRET_OF_THE_SERVER")
        argv = sandbox_argv(
            box=data / "sandboxes" / "s-1",
            disk=data / "workspaces" / "w-1" / "disk",
            netns=data / "netns",
            opencode=Path("/bin/true"),
            limits=Limits(memory_bytes=1024**3),
            account=SystemAccount(999, 999),
            cgroups=backend.cgroups.make("s-1"),
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
        self.assertIn("--unshare-user --disable-userns", joined)
        self.assertIn(f"--seccomp {SECCOMP_FD} --clearenv --args {ARGS_FD} /opt/", joined)
        # The environment, secrets included, goes through a descriptor, never the argv.
        self.assertNotIn("the-password", joined)
        self.assertNotIn("the-token", joined)
        self.assertNotIn("--setenv", joined)
        words = bwrap_args(backend.environment(spec, "http://127.0.0.1:4097/p/v1")).split(b"\0")
        self.assertEqual(words[-1], b"")
        triples = [tuple(words[i : i + 3]) for i in range(0, len(words) - 1, 3)]
        self.assertEqual({t[0] for t in triples}, {b"--setenv"})
        env = {t[1]: t[2] for t in triples}
        self.assertEqual(env[b"OPENCODE_SERVER_PASSWORD"], b"the-password")
        self.assertEqual(env[b"ANTHROPIC_API_KEY"], b"the-token")
        self.assertEqual(env[b"ANTHROPIC_BASE_URL"], b"http://127.0.0.1:4097/p/v1")
        self.assertNotIn(b"SECRET_OF_THE_SERVER", env)
        self.assertNotIn("SECRET_OF_THE_SERVER", joined)
        self.assertIn("--ro-bind /usr /usr", joined)
        self.assertNotIn("--share-net", joined)
        self.assertNotIn(f"--bind {data} ", joined)
        # Memory the sandbox can fill is bounded; the rest of its root and /dev is read-only.
        self.assertIn(f"--size {256 * 1024**2} --tmpfs /tmp", joined)
        self.assertIn(f"--size {128 * 1024**2} --tmpfs /dev/shm", joined)
        self.assertEqual(joined.count("--tmpfs"), joined.count("--size"))
        self.assertIn("--remount-ro /dev --remount-ro / --chdir", joined)
        self.assertEqual(repr(spec), "SandboxSpec(id='s-1', workspace_id='w-1')")


def _backend(cgroups: Path, reactor: Any = None) -> ProcessBackend:
    reactor = reactor or MemoryReactorClock()
    return ProcessBackend(
        reactor,
        Path(tempfile.mkdtemp()),
        Path("/bin/true"),
        OpencodeClient(reactor),
        account=None,
        limits=Limits(memory_bytes=512 * 1024**2, pids=77),
        cgroup_root=cgroups,
    )


class CgroupTests(SynchronousTestCase):
    def test_v2_one_group_with_both_limits(self) -> None:
        """cgroup v2: one group per sandbox under cli-server, both controllers handed down to
        it, memory (no swap) and pids limits written; removed at teardown, parent kept."""
        root = Path(tempfile.mkdtemp())
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
        backend = _backend(root)
        (group,) = backend.cgroups.make("s-1")
        self.assertEqual(group, root / "cli-server" / "s-1")
        self.assertEqual((root / "cgroup.subtree_control").read_text(), "+memory +pids")
        self.assertEqual(
            (root / "cli-server" / "cgroup.subtree_control").read_text(), "+memory +pids"
        )
        self.assertEqual((group / "memory.max").read_text(), str(512 * 1024**2))
        self.assertEqual((group / "pids.max").read_text(), "77")
        self.assertFalse((group / "memory.swap.max").exists())  # no swap accounting here
        (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        self.assertTrue(backend.cgroups.oom_killed("s-1"))
        for name in ("memory.max", "pids.max", "memory.events"):
            (group / name).unlink()  # (a real cgroup's files go with it)
        self.successResultOf(backend.stop("s-1"))  # (its teardown removes the group)
        self.assertFalse(group.exists())
        self.assertTrue((root / "cli-server").exists())
        with capturedLogs() as events:
            backend.check_limits()  # writable: nothing to say
        self.assertEqual(events, [])

    def test_v1_memory_and_pids(self) -> None:
        """cgroup v1: a group in each of the memory and pids hierarchies."""
        root = Path(tempfile.mkdtemp())
        for controller in ("memory", "pids"):
            (root / controller).mkdir()
        backend = _backend(root)
        groups = backend.cgroups.make("s-1")
        self.assertEqual(groups, [root / "memory/cli-server/s-1", root / "pids/cli-server/s-1"])
        self.assertEqual((groups[0] / "memory.limit_in_bytes").read_text(), str(512 * 1024**2))
        self.assertEqual((groups[1] / "pids.max").read_text(), "77")
        self.assertFalse(backend.cgroups.oom_killed("s-1"))

    def test_no_cgroups_said_once(self) -> None:
        """Where no group can be made, the sandbox runs without one, nothing is left behind
        and the server says so once, loudly."""
        root = Path(tempfile.mkdtemp())
        (root / "cgroup.controllers").write_text("")
        (root / "cgroup.subtree_control").mkdir()  # writing it fails, as a busy one would
        backend = _backend(root)
        with capturedLogs() as events:
            backend.check_limits()  # at server start
            self.assertEqual(backend.cgroups.make("s-1"), [])
            self.assertEqual(backend.cgroups.make("s-2"), [])
        (event,) = events
        self.assertIn("WITHOUT memory and pids limits", formatEvent(event))
        self.assertEqual(os.listdir(root / "cli-server"), [])
        argv = sandbox_argv(
            box=root,
            disk=root / "disk",
            netns=root / "netns",
            opencode=Path("/bin/true"),
            limits=Limits(),
            account=None,
            cgroups=backend.cgroups.make("s-3"),
        )
        self.assertTrue(argv[0].endswith("nsenter"), argv[:3])  # no cgroup join


class _SpawnRecorder(MemoryReactorClock):
    """Records spawns, with what each descriptor given to the child held at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[list[str], dict[int, object], dict[int, bytes]]] = []

    def spawnProcess(self, proto: object, executable: str, args: list[str], **kw: Any) -> Any:
        fds = kw["childFDs"]
        held = {n: os.pread(fd, 1 << 20, 0) for n, fd in fds.items() if isinstance(fd, int)}
        self.spawned.append((args, fds, held))
        return _FakeTransport()


class _FakeTransport:
    pid = 424242


class SpawnTests(SynchronousTestCase):
    def test_secrets_and_filter_through_descriptors(self) -> None:
        """bubblewrap gets the environment and the seccomp filter on its descriptors, which
        the server closes once the child has them."""
        data = Path(tempfile.mkdtemp())
        reactor = _SpawnRecorder()
        backend = ProcessBackend(
            reactor, data, Path("/bin/true"), OpencodeClient(reactor), account=None
        )
        box = data / "sandboxes" / "s-1"
        box.mkdir(parents=True)
        spec = SandboxSpec("s-1", "w-1", "the-password", "the-token")
        before = set(os.listdir("/proc/self/fd"))
        backend.spawn_sandbox(spec, box, data / "netns", Path("/bin/true"), "http://x/v1")
        self.assertEqual(set(os.listdir("/proc/self/fd")), before)
        ((argv, fds, held),) = reactor.spawned
        self.assertEqual(set(fds), {0, 1, 2, ARGS_FD, SECCOMP_FD})
        self.assertIn(b"the-password", held[ARGS_FD])
        self.assertIn(b"the-token", held[ARGS_FD])
        self.assertEqual(held[SECCOMP_FD], sandbox_filter())
        self.assertNotIn("the-password", " ".join(argv))
        self.assertEqual((box / "pid").read_text(), "424242")

    def test_slirp_in_its_own_sandbox(self) -> None:
        """slirp4netns (root) is started with its own mount sandbox and seccomp filter."""
        reactor = _SpawnRecorder()
        backend = _backend(Path(tempfile.mkdtemp()), reactor)
        box = Path(tempfile.mkdtemp())
        backend.spawn_slirp(box, box / "netns")
        ((argv, _, _),) = reactor.spawned
        self.assertIn("--enable-sandbox", argv)
        self.assertIn("--enable-seccomp", argv)
        self.assertIn("--disable-host-loopback", argv)
