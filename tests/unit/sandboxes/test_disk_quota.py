"""Disk quotas without loop devices: mountinfo parsing, the host check, and the order of the
steps that attach, move, grow and detach, against a fake of the tools (FakeTools)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.config import parse_quota
from cli_server.plumbing.process import ProcessResult
from cli_server.plumbing.system_accounts import SystemAccount
from cli_server.sandboxes.backend import BackendError, SandboxSpec
from cli_server.sandboxes.disk_quota import (
    DiskQuotas,
    DiskSizes,
    Mount,
    check_disk_quota,
    mkfs_argv,
    parse_mountinfo,
)
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import ProcessBackend
from cli_server.tap.server import Options

MIB = 1024**2

MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "45 22 7:0 / /data/my\\040disk rw,nosuid,nodev - ext4 /dev/loop0 rw\n"
    "46 22 0:4 net:[4026532] /data/sb/netns rw shared:5 master:2 - nsfs nsfs rw\n"
    "garbage line\n"
)


def settle(coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


@define
class FakeTools:
    """A FAKE of mount, umount, mkfs.ext4 and friends: a mount table and loop devices in
    memory, file operations (rm, the image's size) on the real scratch directory."""

    mounts: list[Mount] = field(factory=list)
    backing: dict[str, str] = field(factory=dict)
    calls: list[list[str]] = field(factory=list)
    failing: dict[str, int] = field(factory=dict)  # tool -> exit code
    busy: set[str] = field(factory=set)  # mount points umount refuses
    attached: set[str] = field(factory=set)  # images a loop device holds (losetup -j)
    image_at_rm: list[bool] = field(factory=list)  # did X.img exist when X.old was removed?

    def mountinfo(self) -> str:
        return "".join(
            f"1 1 7:0 / {m.point.replace(' ', chr(92) + '040')} rw - {m.fstype} {m.source} rw\n"
            for m in self.mounts
        )

    def mount(self, image: str, point: str) -> None:
        device = f"/dev/loop{len(self.backing)}"
        self.backing[device] = os.path.realpath(image)  # as the kernel shows them
        self.mounts.append(Mount(os.path.realpath(point), "ext4", device))
        if image.endswith(".img.new"):
            (Path(point) / "lost+found").mkdir()  # as mkfs makes it

    def run(self, argv: Sequence[str], timeout: float) -> Deferred[ProcessResult]:
        argv = list(argv)
        self.calls.append(argv)
        tool, code, output = argv[0], self.failing.get(argv[0], 0), ""
        if code:
            return succeed(ProcessResult(tuple(argv), code, f"{tool} says no"))
        if tool == "mount":
            self.mount(argv[-2], argv[-1])
        elif tool == "umount":
            point = argv[-1]
            if point in self.busy and "-l" not in argv:
                return succeed(ProcessResult(tuple(argv), 32, "target is busy"))
            top = [m for m in self.mounts if m.point == os.path.realpath(point)][-1]
            self.mounts.remove(top)
        elif tool == "rm":
            old = Path(argv[-1])
            self.image_at_rm.append(old.with_name(old.name[: -len(".old")] + ".img").exists())
            shutil.rmtree(old)
        elif tool == "losetup" and argv[1] == "-j":
            output = "/dev/loop9: (x)\n" if argv[2] in self.attached else ""
        return succeed(ProcessResult(tuple(argv), 0, output))

    def quotas(self) -> DiskQuotas:
        return DiskQuotas(self.run, self.mountinfo, self.backing.get)

    def tools(self) -> list[str]:
        return [c[0] if c[0] != "umount" or "-l" not in c else "umount -l" for c in self.calls]


class MountinfoTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Mount points are unescaped; optional fields do not shift the file system type."""
        self.assertEqual(
            parse_mountinfo(MOUNTINFO),
            [
                Mount("/", "ext4", "/dev/vda"),
                Mount("/data/my disk", "ext4", "/dev/loop0"),
                Mount("/data/sb/netns", "nsfs", "nsfs"),
            ],
        )


class HostCheckTests(SynchronousTestCase):
    def test_reasons(self) -> None:
        """Missing tools (with the package), no root, no loop devices; None when all is there."""

        def which(tool: str, path: str) -> str | None:
            return None if tool == "resize2fs" else f"/sbin/{tool}"

        def every(tool: str, path: str) -> str:
            return f"/sbin/{tool}"

        self.assertEqual(
            check_disk_quota(which, lambda: 0, lambda p: True),
            "resize2fs not found (apt-get install e2fsprogs mount)",
        )
        self.assertIn("needs root", str(check_disk_quota(every, lambda: 1000, lambda p: True)))
        self.assertIn("/dev/loop-control", str(check_disk_quota(every, lambda: 0, lambda p: False)))
        self.assertIsNone(check_disk_quota(every, lambda: 0, lambda p: True))

    def test_mkfs(self) -> None:
        """No blocks reserved for root, lazy init of a sparse image, the sandbox owns the root."""
        self.assertEqual(
            mkfs_argv(Path("/d/x.img"), (999, 998)),
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1,root_owner=999:998",
                "/d/x.img",
            ],
        )


class AttachTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.root)
        self.disk = self.root / "disk"
        self.image = self.root / "disk.img"
        self.fake = FakeTools()
        self.quotas = self.fake.quotas()

    def attach(self, size: int = 64 * MIB) -> None:
        self.successResultOf(settle(self.quotas.attach(self.disk, size, (999, 999))))

    def test_fresh(self) -> None:
        """A sparse image of the size, made and checked on the side, then mounted in place."""
        self.attach()
        self.assertEqual(self.fake.tools(), ["mkfs.ext4", "mount", "umount", "sync", "mount"])
        self.assertEqual(self.fake.calls[0][-1], f"{self.root}/disk.img.new")
        self.assertEqual(self.fake.calls[-1][-2:], [str(self.image), str(self.disk)])
        self.assertIn("nosuid,nodev", self.fake.calls[-1][4])
        self.assertEqual(self.image.stat().st_size, 64 * MIB)
        self.assertEqual(self.image.stat().st_blocks, 0)  # sparse
        self.assertEqual(self.image.stat().st_mode & 0o777, 0o600)
        self.assertEqual(sorted(p.name for p in self.root.iterdir()), ["disk", "disk.img"])

    def test_adopted(self) -> None:
        """Our image already mounted there (a server that crashed): used as it is."""
        self.attach()
        self.fake.calls.clear()
        self.attach()
        self.assertEqual(self.fake.calls, [])

    def test_adopted_through_a_symlink(self) -> None:
        """A data dir reached through a symlink: the kernel's resolved paths still match."""
        link = Path(tempfile.mkdtemp()) / "link"
        self.addCleanup(shutil.rmtree, link.parent)
        link.symlink_to(self.root)
        self.successResultOf(settle(self.quotas.attach(link / "disk", 64 * MIB, None)))
        self.fake.calls.clear()
        self.successResultOf(settle(self.quotas.attach(link / "disk", 64 * MIB, None)))
        self.assertEqual(self.fake.calls, [])
        self.assertEqual(self.quotas.ours_under(link), [self.disk])
        self.assertTrue(self.successResultOf(settle(self.quotas.detach(link / "disk"))))
        self.assertEqual(self.fake.mounts, [])

    def test_foreign_mount(self) -> None:
        """Someone else's mount is neither covered nor unmounted."""
        self.disk.mkdir()
        self.fake.mounts.append(Mount(str(self.disk), "tmpfs", "tmpfs"))
        failure = self.failureResultOf(
            settle(self.quotas.attach(self.disk, 64 * MIB, None)), BackendError
        )
        self.assertIn("a mount we did not make", str(failure.value))
        self.assertTrue(self.successResultOf(settle(self.quotas.detach(self.disk))))  # no image
        self.image.write_bytes(b"")
        self.failureResultOf(settle(self.quotas.detach(self.disk)), BackendError)
        self.successResultOf(settle(self.quotas.detach_all(self.root)))
        self.assertEqual(self.fake.calls, [])

    def test_plain_directory_moved(self) -> None:
        """Old files are copied in, the image renamed (the commit), and only then the plain
        directory removed."""
        self.disk.mkdir()
        (self.disk / "work.py").write_text("x")
        self.attach()
        self.assertEqual(
            self.fake.tools(), ["mkfs.ext4", "mount", "cp", "umount", "sync", "rm", "mount"]
        )
        self.assertEqual(
            self.fake.calls[2], ["cp", "-a", "--", f"{self.disk}/.", f"{self.root}/disk.new/"]
        )
        self.assertEqual(self.fake.image_at_rm, [True])
        self.assertEqual(list(self.disk.iterdir()), [])
        self.assertFalse((self.root / "disk.old").exists())

    def test_move_that_does_not_fit(self) -> None:
        """A copy that fails leaves the old files in place and no image behind."""
        self.disk.mkdir()
        (self.disk / "big").write_text("x")
        self.fake.failing["cp"] = 1
        failure = self.failureResultOf(
            settle(self.quotas.attach(self.disk, 64 * MIB, None)), BackendError
        )
        self.assertIn("into a 64 MiB quota", str(failure.value))
        self.assertEqual((self.disk / "big").read_text(), "x")
        self.assertEqual(sorted(p.name for p in self.root.iterdir()), ["disk"])
        self.assertEqual(self.fake.mounts, [])

    def test_interrupted_before_the_commit(self) -> None:
        """A staging image (even still mounted) is thrown away and the move starts over."""
        self.disk.mkdir()
        (self.disk / "keep").write_text("x")
        (self.root / "disk.img.new").write_bytes(b"half")
        (self.root / "disk.new").mkdir()
        self.fake.mount(str(self.root / "disk.img.new"), str(self.root / "disk.new"))
        shutil.rmtree(self.root / "disk.new" / "lost+found")
        self.attach()
        self.assertEqual(self.fake.tools()[0], "umount")
        self.assertEqual(self.fake.calls[3][0], "cp")
        self.assertEqual(sorted(p.name for p in self.root.iterdir()), ["disk", "disk.img"])

    def test_interrupted_after_the_commit(self) -> None:
        """The image holds the files: the leftover plain directory is removed, then mounted."""
        self.image.write_bytes(b"")
        (self.root / "disk.old").mkdir()
        (self.root / "disk.old" / "copied").write_text("x")
        self.attach(0)
        self.assertEqual(self.fake.tools(), ["rm", "mount"])
        self.assertFalse((self.root / "disk.old").exists())

    def test_grown_offline(self) -> None:
        """A larger size: checked and resized before mounting; a smaller one is ignored."""
        self.attach()
        self.successResultOf(settle(self.quotas.detach(self.disk)))
        self.fake.calls.clear()
        self.attach(128 * MIB)
        self.assertEqual(self.fake.tools(), ["losetup", "e2fsck", "resize2fs", "mount"])
        self.assertEqual(self.fake.calls[2], ["resize2fs", str(self.image)])
        self.assertEqual(self.image.stat().st_size, 128 * MIB)
        self.successResultOf(settle(self.quotas.detach(self.disk)))
        self.fake.calls.clear()
        self.attach(64 * MIB)
        self.assertEqual(self.fake.tools(), ["mount"])
        self.assertEqual(self.image.stat().st_size, 128 * MIB)

    def test_not_grown_while_in_use(self) -> None:
        """Mounted, or held by a loop device (a sandbox still going away): not touched now."""
        self.attach()
        self.fake.calls.clear()
        self.attach(128 * MIB)
        self.assertEqual(self.fake.calls, [])
        self.successResultOf(settle(self.quotas.detach(self.disk)))
        self.fake.attached.add(str(self.image))
        self.fake.calls.clear()
        self.attach(128 * MIB)
        self.assertEqual(self.fake.tools(), ["losetup", "mount"])
        self.assertEqual(self.image.stat().st_size, 64 * MIB)

    def test_failed_grow_shrinks_the_file_back(self) -> None:
        """A resize that fails leaves the image file at the size of its file system."""
        self.attach()
        self.successResultOf(settle(self.quotas.detach(self.disk)))
        self.fake.failing["resize2fs"] = 1
        self.failureResultOf(settle(self.quotas.attach(self.disk, 128 * MIB, None)), BackendError)
        self.assertEqual(self.image.stat().st_size, 64 * MIB)

    def test_detach(self) -> None:
        """Busy: kept mounted (False), or detached lazily for a directory about to go."""
        self.attach()
        self.fake.busy.add(str(self.disk))
        self.assertFalse(self.successResultOf(settle(self.quotas.detach(self.disk))))
        self.assertEqual(len(self.fake.mounts), 1)
        self.assertTrue(self.successResultOf(settle(self.quotas.detach(self.disk, lazy=True))))
        self.assertEqual(self.fake.mounts, [])
        self.assertEqual(self.fake.tools()[-2:], ["umount", "umount -l"])
        self.assertTrue(self.successResultOf(settle(self.quotas.detach(self.disk))))

    def test_detach_all_takes_only_ours(self) -> None:
        """Shutdown unmounts our images below the data dir, nested ones first, nothing else."""
        home = self.root / "sandboxes" / "s" / "home"
        home.mkdir(parents=True)
        self.attach()
        self.successResultOf(settle(self.quotas.attach(home, 64 * MIB, None)))
        self.fake.mounts.append(Mount(str(self.root / "sandboxes" / "s" / "netns"), "nsfs", "nsfs"))
        self.fake.mounts.append(Mount("/elsewhere", "ext4", "/dev/loop0"))
        self.fake.calls.clear()
        self.successResultOf(settle(self.quotas.detach_all(self.root)))
        self.assertEqual(self.fake.calls, [["umount", str(home)], ["umount", str(self.disk)]])
        self.assertEqual(
            [m.point for m in self.fake.mounts][-2:],
            [str(self.root / "sandboxes" / "s" / "netns"), "/elsewhere"],
        )


@define
class RecordingQuotas:
    """Stands in for DiskQuotas in the backend: records what it is asked."""

    calls: list[tuple[str, str, Any]] = field(factory=list)

    async def attach(self, directory: Path, size: int, owner: Any) -> None:
        directory.mkdir(exist_ok=True)
        self.calls.append(("attach", directory.name, (size, owner)))

    async def detach(self, directory: Path, *, lazy: bool = False) -> bool:
        self.calls.append(("detach", directory.name, lazy))
        return True

    async def detach_all(self, root: Path) -> None:
        self.calls.append(("detach_all", root.name, None))


class BackendQuotaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.data)
        self.data.chmod(0o755)
        self.quotas = RecordingQuotas()
        self.backend = self.make(DiskSizes(10 * 1024**3, 2 * 1024**3))

    def make(self, sizes: DiskSizes) -> ProcessBackend:
        reactor = MemoryReactorClock()
        return ProcessBackend(
            reactor,
            self.data,
            Path("/bin/true"),
            OpencodeClient(reactor),
            account=SystemAccount(os.getuid(), os.getgid()),
            disk_sizes=sizes,
            quotas=self.quotas,  # type: ignore[arg-type]
            cgroup_root=self.data / "cgroup",  # (stop removes its cgroups: none here)
        )

    def test_mounted_before_start_and_released_by_the_last(self) -> None:
        """HOME and the workspace disk are attached, owned by the sandbox account; the disk is
        detached only when the last sandbox of its workspace stops; delete detaches lazily."""
        for sid in ("s1", "s2"):
            self.successResultOf(settle(self.backend.prepare(SandboxSpec(sid, "w", "p", "t"))))
        self.assertEqual(
            self.quotas.calls[:2],
            [
                ("attach", "disk", (10 * 1024**3, (os.getuid(), os.getgid()))),
                ("attach", "home", (2 * 1024**3, (os.getuid(), os.getgid()))),
            ],
        )
        home = self.data / "sandboxes" / "s1" / "home"
        self.assertEqual((home.stat().st_uid, home.stat().st_mode & 0o777), (os.getuid(), 0o700))
        self.quotas.calls.clear()
        self.successResultOf(self.backend.stop("s1"))
        self.assertEqual(self.quotas.calls, [("detach", "home", False)])
        self.quotas.calls.clear()
        self.successResultOf(self.backend.delete("s2"))
        self.assertEqual(self.quotas.calls, [("detach", "home", True), ("detach", "disk", False)])
        self.quotas.calls.clear()
        self.successResultOf(self.backend.delete_workspace("w"))
        self.assertEqual(self.quotas.calls, [("detach", "disk", True)])
        self.successResultOf(self.backend.close())
        self.assertEqual(self.quotas.calls[-1][0], "detach_all")

    def test_no_quota(self) -> None:
        """Sizes of 0: plain directories, nothing attached."""
        self.backend = self.make(DiskSizes(0, 0))
        self.successResultOf(settle(self.backend.prepare(SandboxSpec("s", "w", "p", "t"))))
        self.assertEqual([c for c in self.quotas.calls if c[0] == "attach"], [])


class OptionTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        """Sizes with suffixes, or off; below 64 MiB refused."""
        self.assertEqual(parse_quota("off"), 0)
        self.assertEqual(parse_quota("0"), 0)
        self.assertEqual(parse_quota("10g"), 10 * 1024**3)
        self.assertRaises(ValueError, parse_quota, "1m")
        self.assertRaises(ValueError, parse_quota, "lots")

    def parse(self, argv: list[str], environ: dict[str, str] | None = None) -> Options:
        options = Options(environ=environ or {}, preflight=False)
        options.parseOptions(argv)
        return options

    def test_defaults_and_environment(self) -> None:
        """10g per workspace disk, 2g per HOME; the environment and the command line set them."""
        config = self.parse([]).config()
        self.assertEqual(
            (config.workspace_disk_size, config.sandbox_home_size), (10 * 1024**3, 2 * 1024**3)
        )
        config = self.parse(["--sandbox-home-size", "off"], {"WORKSPACE_DISK_SIZE": "64m"}).config()
        self.assertEqual((config.workspace_disk_size, config.sandbox_home_size), (64 * MIB, 0))
        error = self.assertRaises(usage.UsageError, self.parse, [], {"SANDBOX_HOME_SIZE": "1k"})
        self.assertIn("SANDBOX_HOME_SIZE: '1k' is below the 64 MiB", str(error))

    def preflight(self, argv: list[str], why: str | None) -> Options:
        import cli_server.sandboxes.disk_quota as dq
        import cli_server.sandboxes.process_backend as pb

        binary = Path(tempfile.mkdtemp()) / "opencode"
        binary.write_text("#!/bin/sh\n")
        for module, name, value in [
            (pb, "check_isolation_tools", None),
            (dq, "check_disk_quota", why),
        ]:
            self.patch(module, name, lambda value=value: value)
        options = Options(environ={})
        options.parseOptions(["--opencode-bin", str(binary), *argv])
        return options

    def test_host_without_loop_devices(self) -> None:
        """Refused at start in one line naming the way out; off or --allow-unisolated pass."""
        error = self.assertRaises(usage.UsageError, self.preflight, [], "no /dev/loop-control")
        self.assertEqual(
            str(error),
            "--workspace-disk-size: cannot give sandboxes disk quotas: no /dev/loop-control; "
            "pass --workspace-disk-size=off --sandbox-home-size=off to run without them",
        )
        off = ["--workspace-disk-size=off", "--sandbox-home-size=off"]
        self.assertEqual(self.preflight(off, "no loop").config().sandbox_home_size, 0)
        unisolated = self.preflight(["--allow-unisolated"], "no loop").config()
        self.assertEqual((unisolated.workspace_disk_size, unisolated.sandbox_home_size), (0, 0))
        kept = self.preflight([], None).config()
        self.assertEqual(kept.workspace_disk_size, 10 * 1024**3)
