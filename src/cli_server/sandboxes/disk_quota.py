"""Disk quotas for sandbox directories: each one is its own ext4 file system in a sparse image.

A directory ``X`` under quota is backed by the image file ``X.img`` beside it, loop-mounted on
``X`` while it is in use. A sandbox that fills it gets ENOSPC from its own file system; the host
file system (and PostgreSQL on it) only ever holds the image, which never grows past its size.

Mounts live in the host's mount namespace, so they outlive a crashed server: ``attach`` adopts
a mount of ``X.img`` it finds on ``X`` instead of mounting it again. Mounting one image twice
through ``mount -o loop`` reuses its loop device (util-linux refuses a second, overlapping one),
so a sandbox still holding a file system that was unmounted on the host shares it with the next
mount instead of corrupting it.

A plain directory from before quotas existed is copied into a new image (``X.img.new``, mounted
on ``X.new``); renaming that image to ``X.img`` commits the move, and only then is the plain
directory (renamed ``X.old``) removed. An interrupted move is undone or finished by the next
``attach``; nothing is lost either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from attrs import define, field, frozen
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from cli_server.plumbing.process import ProcessReactor, ProcessResult, ProcessTimedOut, run_process
from cli_server.sandboxes.backend import BackendError

TOOLS = ("mkfs.ext4", "e2fsck", "resize2fs", "losetup", "mount", "umount")
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# discard: space freed inside an image is given back to the host (the loop device punches
# holes in the sparse file), so the host holds what is in use, never more than the quota.
MOUNT_OPTIONS = "loop,nosuid,nodev,noinit_itable,discard"

Run = Callable[[Sequence[str], float], Awaitable[ProcessResult]]


@frozen
class DiskSizes:
    """Quota sizes in bytes; 0 leaves that kind of directory a plain one on the host."""

    workspace: int = 0
    home: int = 0


@frozen
class Mount:
    """One line of /proc/self/mountinfo, the parts we use."""

    point: str
    fstype: str
    source: str


def _unescape(field_: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as ``\040``-style octal escapes."""
    out, i = [], 0
    while i < len(field_):
        octal = field_[i + 1 : i + 4]
        if field_[i] == "\\" and len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts in the order the kernel lists them (a later one on a path covers an earlier)."""
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def image_of(directory: Path) -> Path:
    return directory.with_name(directory.name + ".img")


def _read_mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _loop_backing_file(device: str) -> str | None:
    """The file behind ``/dev/loopN`` (the kernel appends `` (deleted)`` once it is removed)."""
    if not device.startswith("/dev/loop"):
        return None
    try:
        return Path(f"/sys/block/{device[5:]}/loop/backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def check_disk_quota(
    which: Callable[..., str | None] = shutil.which,
    euid: Callable[[], int] = os.geteuid,
    exists: Callable[[str], bool] = os.path.exists,
) -> str | None:
    """Why this machine cannot give sandboxes disk quotas, or None if it can."""
    missing = [t for t in TOOLS if not which(t, path=_PATH)]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install e2fsprogs mount)"
    if euid() != 0:
        return "loop-mounting a file system per workspace and per sandbox HOME needs root"
    if not exists("/dev/loop-control"):
        return "there is no /dev/loop-control (a container needs the loop devices passed in)"
    return None


def mkfs_argv(image: Path, owner: tuple[int, int] | None) -> list[str]:
    """ext4 with no blocks reserved for root (nobody in a sandbox is root), and lazy init:
    the image is a new sparse file, so its inode tables and journal already read as zeros."""
    extended = "nodiscard,lazy_itable_init=1,lazy_journal_init=1"
    if owner is not None:
        extended += f",root_owner={owner[0]}:{owner[1]}"
    return ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", extended, str(image)]


@define(eq=False)
class DiskQuotas:
    """Attaches and detaches quota'd directories; one operation per directory at a time."""

    _run: Run
    _read_mounts: Callable[[], str] = _read_mountinfo
    _backing_file: Callable[[str], str | None] = _loop_backing_file
    _locks: dict[Path, DeferredLock] = field(factory=dict, init=False)
    _log = Logger()

    @classmethod
    def on(cls, reactor: ProcessReactor) -> DiskQuotas:
        """Run the tools as child processes of ``reactor``, each with a deadline."""

        async def run(argv: Sequence[str], timeout: float) -> ProcessResult:
            found = shutil.which(argv[0], path=_PATH)
            if found is None:
                raise BackendError(f"{argv[0]} is not installed")
            try:
                return await run_process(
                    reactor, [found, *argv[1:]], timeout=timeout, env={"PATH": _PATH}
                )
            except ProcessTimedOut as e:
                raise BackendError(str(e)) from None

        return cls(run)

    # -- what is mounted ----------------------------------------------------------------------

    def mounted(self, directory: Path) -> str | None:
        """The loop device of ``X.img`` mounted on ``directory``, or None if nothing is.

        Something else mounted there is an error: we never mount over it or unmount it.
        """
        # The kernel names mount points and loop files by their paths with symlinks resolved.
        real = os.path.realpath(directory)
        on_it = [m for m in parse_mountinfo(self._read_mounts()) if m.point == real]
        if not on_it:
            return None
        top = on_it[-1]
        if top.fstype == "ext4" and self._backing_file(top.source) == real + ".img":
            return top.source
        raise BackendError(f"{directory} has a mount we did not make ({top.source})")

    def ours_under(self, root: Path) -> list[Path]:
        """Every mount of one of our images below ``root``, deepest first."""
        found, root = [], Path(os.path.realpath(root))
        for m in parse_mountinfo(self._read_mounts()):
            point = Path(m.point)
            if m.fstype != "ext4" or root not in point.parents:
                continue
            images = {str(image_of(point))}
            if point.name.endswith(".new"):  # an interrupted move's staging mount
                images.add(str(_staging_image(point.with_name(point.name[: -len(".new")]))))
            if self._backing_file(m.source) in images:
                found.append(point)
        return sorted(set(found), key=lambda p: -len(p.parts))

    # -- attach, detach -----------------------------------------------------------------------

    def _lock(self, directory: Path) -> DeferredLock:
        return self._locks.setdefault(directory, DeferredLock())

    async def attach(self, directory: Path, size: int, owner: tuple[int, int] | None) -> None:
        """Make ``directory`` a mounted file system of ``size`` bytes (grown if it was smaller).

        ``owner`` (uid, gid) owns its root; the caller sets the root's mode.
        """
        lock = self._lock(directory)
        await lock.acquire()
        try:
            await self._attach(directory, size, owner)
        finally:
            lock.release()

    async def _attach(self, directory: Path, size: int, owner: tuple[int, int] | None) -> None:
        image = image_of(directory)
        await self._finish_interrupted(directory)
        device = self.mounted(directory)
        if device is None:
            if not image.exists():
                await self._create(directory, size, owner)
            directory.mkdir(mode=0o700, exist_ok=True)
            if any(directory.iterdir()):
                # Only after a crash between the commit and the clean-up of a move: the image
                # holds these files already. Kept (hidden under the mount), never deleted.
                self._log.warn(
                    "{directory} holds files under its quota mount; they stay there hidden",
                    directory=str(directory),
                )
            await self._grow(image, size)
            await self._mount(image, directory)
            if self.mounted(directory) is None:
                raise BackendError(f"{directory} is not mounted after mount succeeded")
        elif image.stat().st_size < size:
            self._log.info(
                "{image} grows to {size} MiB when it is next mounted",
                image=str(image),
                size=size // 1024**2,
            )

    async def detach(self, directory: Path, *, lazy: bool = False) -> bool:
        """Unmount ``directory`` if our image is mounted there. True when nothing stays mounted.

        A busy mount stays (the next ``attach`` adopts it) unless ``lazy``: then it is detached
        now and released when its last user goes, for a directory about to be removed.
        Without an image nothing of ours can be mounted there; an operator's mount is left be.
        """
        if not image_of(directory).exists():
            return True
        lock = self._lock(directory)
        await lock.acquire()
        try:
            if self.mounted(directory) is None:
                return True
            return await self._unmount(directory, lazy=lazy)
        finally:
            lock.release()

    async def detach_all(self, root: Path) -> None:
        """Unmount every image of ours below ``root`` (server shutdown)."""
        for point in self.ours_under(root):
            await self._unmount(point, lazy=False)

    # -- steps --------------------------------------------------------------------------------

    async def _must(self, argv: list[str], timeout: float = 60) -> str:
        result = await self._run(argv, timeout)
        if result.code != 0:
            raise BackendError(f"{argv[0]} failed: {result.output.strip()[-300:]}")
        return result.output

    async def _mount(self, image: Path, directory: Path) -> None:
        await self._must(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(directory)])

    async def _unmount(self, directory: Path, *, lazy: bool) -> bool:
        result = await self._run(["umount", str(directory)], 60)
        if result.code == 0:
            return True
        if lazy:
            await self._must(["umount", "-l", str(directory)])
            return True
        self._log.warn(
            "{directory} stays mounted: {output}",
            directory=str(directory),
            output=result.output.strip()[-300:],
        )
        return False

    async def _create(self, directory: Path, size: int, owner: tuple[int, int] | None) -> None:
        """A new image for ``directory``, holding a copy of what the directory already has."""
        image, staging = image_of(directory), _staging_image(directory)
        mountpoint = _staging(directory)
        old_files = directory.is_dir() and any(directory.iterdir())
        with open(staging, "wb") as f:  # sparse: takes no room until written
            os.fchmod(f.fileno(), 0o600)
            f.truncate(size)
        await self._must(mkfs_argv(staging, owner))
        mountpoint.mkdir(mode=0o700, exist_ok=True)
        await self._mount(staging, mountpoint)
        try:
            with contextlib.suppress(FileNotFoundError):
                (mountpoint / "lost+found").rmdir()  # e2fsck makes it again when it needs one
            if old_files:
                copied = await self._run(
                    ["cp", "-a", "--", f"{directory}/.", f"{mountpoint}/"], 3600
                )
                if copied.code != 0:
                    raise BackendError(
                        f"cannot move {directory} into a {size // 1024**2} MiB quota (raise "
                        f"the size option; the files stay where they were): "
                        f"{copied.output.strip()[-200:]}"
                    )
        except BaseException:
            await self._unmount(mountpoint, lazy=True)
            mountpoint.rmdir()
            staging.unlink()
            raise
        await self._must(["umount", str(mountpoint)])
        mountpoint.rmdir()
        await self._must(["sync", str(staging)])
        staging.rename(image)  # the commit: from here on the image holds the files
        if old_files:
            await self._retire(directory)

    async def _retire(self, directory: Path) -> None:
        """Remove a plain directory whose files the image now holds."""
        old = directory.with_name(directory.name + ".old")
        if directory.exists() and not old.exists():
            directory.rename(old)
        directory.mkdir(mode=0o700, exist_ok=True)
        await self._must(["rm", "-rf", "--one-file-system", "--", str(old)], 3600)

    async def _finish_interrupted(self, directory: Path) -> None:
        """Undo a move that did not commit; finish the clean-up of one that did."""
        staging, mountpoint = _staging_image(directory), _staging(directory)
        if mountpoint.exists():
            real = os.path.realpath(mountpoint)
            if any(m.point == real for m in parse_mountinfo(self._read_mounts())):
                await self._unmount(mountpoint, lazy=True)
            mountpoint.rmdir()
        staging.unlink(missing_ok=True)
        if image_of(directory).exists() and directory.with_name(directory.name + ".old").exists():
            await self._retire(directory)

    async def _grow(self, image: Path, size: int) -> None:
        """A larger size is applied before mounting; a smaller one never (it holds files).

        Offline, because growing a mounted ext4 needs CAP_SYS_RESOURCE, which containers and
        these hosts often lack. Never while a loop device still holds the image: a sandbox that
        is still going away may use it, and checking or resizing it then would corrupt it.
        """
        current = image.stat().st_size
        if current >= size:
            return
        attached = await self._must(["losetup", "-j", str(image)])
        if attached.strip():
            self._log.info("{image} is still in use; grown later", image=str(image))
            return
        checked = await self._run(["e2fsck", "-f", "-p", str(image)], 600)
        if checked.code not in (0, 1):  # 1: errors were corrected
            raise BackendError(f"e2fsck {image} failed: {checked.output.strip()[-300:]}")
        os.truncate(image, size)
        try:
            await self._must(["resize2fs", str(image)], 600)
        except BaseException:
            os.truncate(image, current)  # the file system did not grow; the file shrinks back
            raise
        self._log.info(
            "{image} grown from {old} to {new} MiB",
            image=str(image),
            old=current // 1024**2,
            new=size // 1024**2,
        )


def _staging(directory: Path) -> Path:
    return directory.with_name(directory.name + ".new")


def _staging_image(directory: Path) -> Path:
    return directory.with_name(directory.name + ".img.new")
