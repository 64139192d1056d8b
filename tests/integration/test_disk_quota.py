"""Disk quotas with real loop devices, ext4 and real sandboxes: a sandbox that fills its HOME or
its workspace disk gets ENOSPC; the server and the other workspaces keep working."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted

from cli_server.sandboxes.backend import SandboxSpec
from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes, check_disk_quota, parse_mountinfo
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import ProcessBackend

from .conftest import (
    Real,
    _reactor,
    real_server,
)
from .daemon import Daemon
from .helpers import needs_isolation, opencode_binary, remove_dir, scratch_dir, wait_until
from .sandbox_shell import opencode_pid, run_inside
from .test_crash import wait_status

MIB = 1024**2
SMALL = 64 * MIB

# Root and loop devices; in CI (CI=true) never skipped, so a missing setup fails loudly.
needs_loop = pytest.mark.skipif(
    check_disk_quota() is not None and not os.environ.get("CI"),
    reason=f"cannot loop-mount here: {check_disk_quota()}",
)


def our_mounts(root: Path) -> list[str]:
    """ext4 mount points below ``root``, one entry per mount (netns files are not ours)."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return [m.point for m in mounts if m.fstype == "ext4" and m.point.startswith(f"{root}/")]


def loops_of(root: Path) -> list[str]:
    """Loop devices whose backing file is below ``root``."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"({root}/" in line]


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = scratch_dir("cli-test-quota-")
    yield root
    remove_dir(root)
    assert not loops_of(root), "a loop device outlived its test"


# -- the mechanism alone -------------------------------------------------------------------------


@needs_loop
@pytest_twisted.ensureDeferred
async def test_attach_fill_grow_detach(scratch: Path) -> None:
    """A fresh image fills up at its size, grows online, and is adopted, not mounted twice."""
    quotas = DiskQuotas.on(_reactor())
    disk = scratch / "disk"
    await quotas.attach(disk, SMALL, (1000, 1000))
    assert our_mounts(scratch) == [str(disk)]
    assert (disk.stat().st_uid, os.listdir(disk)) == (1000, [])  # no lost+found for users
    image = scratch / "disk.img"
    assert image.stat().st_size == SMALL and oct(image.stat().st_mode)[-3:] == "600"

    fill = subprocess.run(
        ["dd", "if=/dev/zero", f"of={disk}/fill", "bs=1M", "count=200"],
        capture_output=True,
        text=True,
    )
    assert fill.returncode != 0 and "No space left on device" in fill.stderr
    assert allocated(image) <= SMALL  # the host holds no more than the quota
    (disk / "fill").unlink()
    subprocess.run(["sync", "-f", str(disk)], check=True)
    await wait_until(_reactor(), lambda: allocated(image) < SMALL // 4, timeout=20)  # given back

    await quotas.attach(disk, SMALL, (1000, 1000))  # adopted: still one mount, one loop
    assert our_mounts(scratch) == [str(disk)] and len(loops_of(scratch)) == 1

    (disk / "kept").write_text("kept")
    await quotas.attach(disk, 2 * SMALL, (1000, 1000))  # mounted: grows at the next mount
    assert image.stat().st_size == SMALL
    assert await quotas.detach(disk)
    assert our_mounts(scratch) == [] and not loops_of(scratch)
    await quotas.attach(disk, 2 * SMALL, (1000, 1000))
    total = os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize
    assert total > 1.5 * SMALL, total
    assert image.stat().st_size == 2 * SMALL
    assert await quotas.detach(disk)
    await quotas.attach(disk, SMALL, None)  # a smaller size is not applied to existing data
    assert (disk / "kept").read_text() == "kept" and image.stat().st_size == 2 * SMALL
    await quotas.detach_all(scratch)
    assert our_mounts(scratch) == []


@needs_loop
@pytest_twisted.ensureDeferred
async def test_plain_directory_is_moved_into_its_image(scratch: Path) -> None:
    """Files from before quotas (a plain directory) are moved in, owners and modes kept; a move
    that does not fit leaves them where they were; an interrupted move is cleaned up."""
    quotas = DiskQuotas.on(_reactor())
    disk = scratch / "disk"
    (disk / "src" / "deep").mkdir(parents=True)
    (disk / "src" / "deep" / "main.py").write_text("print('hi')\n")
    os.chown(disk / "src", 1000, 1000)
    (disk / "run.sh").write_text("#!/bin/sh\n")
    (disk / "run.sh").chmod(0o755)
    await quotas.attach(disk, SMALL, (1000, 1000))
    assert our_mounts(scratch) == [str(disk)]
    assert (disk / "src" / "deep" / "main.py").read_text() == "print('hi')\n"
    assert (disk / "src").stat().st_uid == 1000
    assert oct((disk / "run.sh").stat().st_mode)[-3:] == "755"
    assert sorted(p.name for p in scratch.iterdir()) == ["disk", "disk.img"]  # no leftovers
    await quotas.detach(disk)
    underneath = list(disk.iterdir())
    assert underneath == []  # the plain copy is gone; the files live in the image only

    big = scratch / "big"
    big.mkdir()
    with open(big / "blob", "wb") as f:
        f.write(os.urandom(80 * MIB))
    with pytest.raises(Exception, match="cannot move .* into a 64 MiB quota"):
        await quotas.attach(big, SMALL, None)
    assert (big / "blob").stat().st_size == 80 * MIB  # nothing lost
    assert not (scratch / "big.img").exists() and our_mounts(scratch) == []

    # A crash in the middle of a move: the staging image is mounted, nothing committed yet.
    (scratch / "mid").mkdir()
    (scratch / "mid" / "note").write_text("mine")
    (scratch / "mid.img.new").write_bytes(b"")
    subprocess.run(["truncate", "-s", "64M", str(scratch / "mid.img.new")], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(scratch / "mid.img.new")], check=True)
    (scratch / "mid.new").mkdir()
    subprocess.run(
        ["mount", "-o", "loop", str(scratch / "mid.img.new"), str(scratch / "mid.new")],
        check=True,
    )
    await quotas.attach(scratch / "mid", SMALL, None)
    assert (scratch / "mid" / "note").read_text() == "mine"
    assert our_mounts(scratch) == [str(scratch / "mid")]
    assert not (scratch / "mid.new").exists() and not (scratch / "mid.img.new").exists()
    await quotas.detach_all(scratch)
    assert our_mounts(scratch) == []


@needs_loop
@pytest_twisted.ensureDeferred
async def test_foreign_mount_is_left_alone(scratch: Path) -> None:
    """Something else mounted where a quota goes is an error, never mounted over or removed."""
    quotas = DiskQuotas.on(_reactor())
    disk = scratch / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    with pytest.raises(Exception, match="has a mount we did not make"):
        await quotas.attach(disk, SMALL, None)
    assert await quotas.detach(disk)  # no image of ours: not ours to unmount
    assert os.path.ismount(disk)
    (scratch / "disk.img").write_bytes(b"")
    with pytest.raises(Exception, match="has a mount we did not make"):
        await quotas.detach(disk)
    await quotas.detach_all(scratch)
    assert os.path.ismount(disk)
    subprocess.run(["umount", str(disk)], check=True)


# -- real sandboxes --------------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def small(db_url: str) -> AsyncIterator[Real]:
    """The `real` fixture with 64 MiB quotas for HOME and the workspace disk."""

    def unmounted(data_dir: Path) -> None:
        assert our_mounts(data_dir) == [], "shutdown left quota mounts"

    async with real_server(
        db_url,
        "cli-test-quota-sbx-",
        unmounted,
        workspace_disk_size=SMALL,
        sandbox_home_size=SMALL,
    ) as world:
        yield world
    root = world.data_dir.parent
    await wait_until(_reactor(), lambda: not loops_of(root), timeout=15)


def fill(pid: int, path: str) -> subprocess.CompletedProcess[str]:
    return run_inside(pid, f"dd if=/dev/zero of={path} bs=1M count=200 2>&1; sync", timeout=60)


@needs_isolation
@needs_loop
@pytest_twisted.ensureDeferred
async def test_sandbox_filling_its_quota_gets_enospc(small: Real) -> None:
    """A hostile sandbox fills HOME and /data/disk0: ENOSPC at the quota; the API answers and a
    sandbox of another workspace still writes; delete removes the images and the mounts."""
    a1, _ = await small.create("a", "a1")
    b1, _ = await small.create("b", "b1")
    inside_a1, inside_b1 = small.pid(a1), small.pid(b1)
    ws_a, ws_b = small.workspaces["a"], small.workspaces["b"]
    disk_a = small.data_dir / "workspaces" / ws_a / "disk.img"
    home_a = small.data_dir / "sandboxes" / a1 / "home.img"

    seen = run_inside(inside_a1, "df -k --output=size /data/disk0 /home/opencode | tail -2")
    assert all(int(kib) < 64 * 1024 for kib in seen.stdout.split()), seen.stdout

    for path in ("/data/disk0/fill", "/home/opencode/fill"):
        result = fill(inside_a1, path)
        assert "No space left on device" in result.stdout, (path, result.stdout)
    assert allocated(disk_a) <= SMALL and allocated(home_a) <= SMALL

    assert (await small.owner.call("GET", f"/api/sandboxes/{a1}")).code == 200
    assert (await small.owner.call("GET", "/api/workspaces")).code == 200
    for path in ("/data/disk0/ok", "/home/opencode/ok"):
        wrote = run_inside(inside_b1, f"dd if=/dev/zero of={path} bs=1M count=8 2>&1")
        assert wrote.returncode == 0, wrote.stdout
    endpoint, password = await small.endpoint(b1)
    client = OpencodeClient(_reactor())
    assert (await client.get_json(endpoint, password, "/global/health"))[0] == 200

    # Freed space is usable again: the quota is a limit, not a one-way door.
    assert run_inside(inside_a1, "rm /data/disk0/fill && echo x > /data/disk0/x").returncode == 0

    assert (await small.owner.call("DELETE", f"/api/sandboxes/{a1}")).code == 204
    assert not home_a.exists()
    assert str(small.data_dir / "sandboxes" / a1 / "home") not in our_mounts(small.data_dir)
    assert str(disk_a.with_suffix("")) not in our_mounts(small.data_dir)  # no one uses it now
    assert disk_a.exists()  # the workspace keeps its disk
    assert (await small.owner.call("DELETE", f"/api/workspaces/{ws_a}")).code == 204
    assert not disk_a.exists()
    assert sorted(our_mounts(small.data_dir)) == sorted(
        [
            str(small.data_dir / "sandboxes" / b1 / "home"),
            str(small.data_dir / "workspaces" / ws_b / "disk"),
        ]
    )


@needs_isolation
@needs_loop
@pytest_twisted.ensureDeferred
async def test_restart_adopts_mounts_and_moves_old_data(scratch: Path) -> None:
    """A server that died with mounted quotas: the next one adopts them (one mount, one loop
    device, files kept). Plain directories from before quotas are moved in on first start."""
    reactor = _reactor()
    data = scratch / "data"
    spec = SandboxSpec(
        "55555555-5555-4555-8555-555555555555", "66666666-6666-4666-8666-666666666666", "pw", "t"
    )
    home = data / "sandboxes" / spec.id / "home"
    disk = data / "workspaces" / spec.workspace_id / "disk"
    for plain in (home, disk):  # the layout before quotas, with a user's files
        plain.mkdir(parents=True)
        (plain / "old-file").write_text("from before")

    def backend() -> ProcessBackend:
        return ProcessBackend(
            reactor,
            data,
            opencode_binary(),
            OpencodeClient(reactor),
            disk_sizes=DiskSizes(SMALL, SMALL),
        )

    first, second = backend(), backend()
    try:
        await first.start(spec)
        pid = opencode_pid(first.live(spec.id).sandbox.pid)
        moved = run_inside(
            pid, "cat /data/disk0/old-file /home/opencode/old-file; echo new > /data/disk0/new"
        )
        assert moved.stdout == "from beforefrom before", moved
        assert sorted(our_mounts(data)) == sorted([str(home), str(disk)])
        assert not (home.parent / "home.old").exists() and not (disk.parent / "disk.old").exists()

        # The server dies (SIGKILL): bubblewrap dies with it; the mounts stay in the host.
        first.live(spec.id).sandbox.signalProcess(signal.SIGKILL)
        await wait_until(reactor, lambda: first.live(spec.id) is None, timeout=15)

        await second.start(spec)
        pid = opencode_pid(second.live(spec.id).sandbox.pid)
        assert run_inside(pid, "cat /data/disk0/new").stdout.strip() == "new"
        assert our_mounts(data).count(str(home)) == 1 and our_mounts(data).count(str(disk)) == 1
        assert len(loops_of(data)) == 2
        await second.stop(spec.id)
        assert our_mounts(data) == []  # its workspace's only sandbox stopped
    finally:
        await first.close()
        await second.close()
    # Loop devices clear themselves once the last sandbox process lets go of the file system.
    await wait_until(reactor, lambda: not loops_of(data), timeout=15)


@needs_isolation
@needs_loop
def test_killed_server_restarts_onto_its_mounts(data_dir: Path) -> None:
    """`twistd cli-server` with 64 MiB quotas, SIGKILLed while a sandbox runs: its mounts stay;
    the restarted server resumes the sandbox on them (files kept, one mount each, quota still
    enforced), and an orderly stop unmounts everything."""
    sizes = ("--workspace-disk-size", "64m", "--sandbox-home-size", "64m")
    server = Daemon(data_dir, *sizes)
    server.start()
    for path in ("/api/auth/register", "/api/auth/login"):
        server.request("POST", path, {"username": "quota", "password": "password123"})
    wid = server.request("POST", "/api/workspaces", {"name": "w"})[1]["id"]
    sid = server.request("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})[1]["id"]
    wait_status(server, sid, "running")
    assert server.proc is not None
    pid = opencode_pid(server.proc.pid)
    wrote = run_inside(pid, "echo kept > /data/disk0/f && echo kept > /home/opencode/f")
    assert wrote.returncode == 0, wrote.stderr
    assert len(our_mounts(data_dir)) == 2

    server.stop(signal.SIGKILL)
    assert len(our_mounts(data_dir)) == 2  # the mounts outlive the server

    try:
        server.start()
        assert server.request("POST", f"/api/sandboxes/{sid}/resume")[0] == 200
        wait_status(server, sid, "running")
        assert server.proc is not None
        pid = opencode_pid(server.proc.pid)
        assert run_inside(pid, "cat /data/disk0/f /home/opencode/f").stdout.split() == [
            "kept",
            "kept",
        ]
        mounts = our_mounts(data_dir)
        assert len(mounts) == 2 and len(set(mounts)) == 2, mounts  # adopted, not doubled
        assert "No space left on device" in fill(pid, "/data/disk0/big").stdout
    finally:
        server.stop(signal.SIGTERM)
    assert our_mounts(data_dir) == []
