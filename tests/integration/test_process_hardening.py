"""Attacks on the process backend's isolation, from where an adversary stands: a local
unprivileged user reading /proc, and code inside a real sandbox probing the network and the
kernel. Real bubblewrap, slirp4netns, nftables and opencode; FAKE Anthropic upstream only."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent

from cli_server.sandboxes.egress import host_addresses
from cli_server.sandboxes.opencode import basic_auth
from cli_server.sandboxes.seccomp import highest_known_syscall

from .conftest import Real, _reactor, real_server
from .helpers import needs_isolation, wait_until
from .sandbox_shell import can_connect, run_inside


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_no_secret_on_any_command_line(real: Real) -> None:
    """With sandboxes running, no process's arguments hold an opencode password or an
    Anthropic proxy token, and a local unprivileged user finds neither anywhere in /proc."""
    secrets = []
    for name in ("s1", "s2"):
        sid, _ = await real.create("a", name)
        _, password = await real.endpoint(sid)
        token = _environ(real.pid(sid))["ANTHROPIC_API_KEY"]
        assert len(password) >= 16 and len(token) >= 16
        secrets += [password.encode(), token.encode()]
        descriptors = Path(f"/proc/{real.pid(sid)}/fd")
        leaked = [os.readlink(d) for d in descriptors.iterdir()]
        assert not [t for t in leaked if t.startswith("/memfd:")], leaked  # no args left open

    scanned = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            scanned += 1
            for secret in secrets:
                assert secret not in cmdline, (proc.name, cmdline[:200])
    assert scanned > 10

    # Everything an unprivileged local user can read of every process.
    seen = subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "/bin/sh",
            "-c",
            "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ $p/comm; done 2>/dev/null; "
            f"cat /proc/{real.pid(sid)}/environ",
        ],
        capture_output=True,
        timeout=60,
    )
    assert seen.returncode != 0  # the last read: another user's environment is refused
    assert b"opencode" in seen.stdout  # it did read the command lines
    for secret in secrets:
        assert secret not in seen.stdout


@contextmanager
def _networks_to_attack() -> Iterator[tuple[int, str, str]]:
    """A listener on every host address (port P); a veth whose host end adds a private and
    the metadata address to this host and puts it on a public network (203.0.113.0/24, not a
    private range); on that network a neighbour (203.0.113.2:P, in a network namespace of its
    own), which is also the router to a "public" machine (198.51.100.2:P, reached through
    it, as the internet is). Yields (P, the public machine, the neighbour); all removed
    afterwards."""
    tag = str(os.getpid() % 100000)
    ns, veth = f"cli-pub-{tag}", f"clv{tag}"
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    public: subprocess.Popen[bytes] | None = None

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    try:
        ip("netns", "add", ns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth9", "netns", ns)
        ip("addr", "add", "203.0.113.1/24", "dev", veth)
        ip("addr", "add", "10.213.7.1/32", "dev", veth)
        ip("addr", "add", "169.254.169.254/32", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", ns, "addr", "add", "203.0.113.2/24", "dev", "eth9")
        ip("-n", ns, "addr", "add", "198.51.100.2/32", "dev", "eth9")
        ip("-n", ns, "link", "set", "eth9", "up")
        ip("route", "add", "198.51.100.2/32", "via", "203.0.113.2", "dev", veth)
        public = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "python3",
                "-c",
                "import socket, time\n"
                f"s = socket.socket(); s.bind(('0.0.0.0', {port})); s.listen(64)\n"
                "print('up', flush=True); time.sleep(300)",
            ],
            stdout=subprocess.PIPE,
        )
        assert public.stdout is not None and public.stdout.readline() == b"up\n"
        yield port, "198.51.100.2", "203.0.113.2"
    finally:
        if public is not None:
            public.kill()
            public.wait(10)
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        listener.close()


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_sandbox_reaches_the_internet_but_not_the_host(real: Real) -> None:
    """From inside a sandbox: every address of this host, slirp's gateway, private and
    metadata addresses, and a neighbour on a public network this host is attached to are
    refused; a public address beyond a router answers; the Anthropic door answers."""
    with _networks_to_attack() as (port, public, neighbour):
        sid, _ = await real.create("a", "egress")
        inside = real.pid(sid)
        mine = [
            str(a)
            for a in host_addresses()
            if a.version == 4 and not a.is_loopback and str(a) not in ("10.213.7.1",)
        ]
        assert mine, "this host has an address besides loopback"
        for host in [*mine, "10.213.7.1", "169.254.169.254", "10.0.2.2", neighbour]:
            assert not can_connect(inside, host, port), host
        assert can_connect(inside, public, port)
        # (the host itself reaches the neighbour: it is the sandbox's rules that refuse it)
        with socket.create_connection((neighbour, port), timeout=5):
            pass
        assert can_connect(inside, "127.0.0.1", 4096)  # its own opencode

        door = _environ(inside)["ANTHROPIC_BASE_URL"].split(":")[2].split("/")[0]
        reactor = _reactor()  # the door is served by this reactor: do not block it
        answer = await deferToThreadPool(
            reactor,
            reactor.getThreadPool(),
            run_inside,
            inside,
            f"exec 3<>/dev/tcp/127.0.0.1/{door}; "
            "printf 'GET /proxy/anthropic/v1/models HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; "
            "head -c 9 <&3",
        )
        assert answer.stdout.startswith("HTTP/1."), answer


@pytest_twisted.async_yield_fixture
async def allowing(db_url: str) -> AsyncIterator[Real]:
    """A real server started with --egress-allow 10.213.7.0/24."""
    allow = (ipaddress.ip_network("10.213.7.0/24"),)
    async with real_server(db_url, egress_allow=allow) as world:
        yield world


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_an_allowed_range_is_reachable(allowing: Real) -> None:
    """A private range the server allows (--egress-allow) is reachable from a sandbox; the
    metadata address still is not."""
    with _networks_to_attack() as (port, _, _):
        allowed, _ = await allowing.create("a", "allowed")
        inside_allowed = allowing.pid(allowed)
        assert can_connect(inside_allowed, "10.213.7.1", port)
        assert not can_connect(inside_allowed, "169.254.169.254", port)


PROBE = r"""
import ctypes, errno, fcntl, json, sys, termios
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
found = {
    "keyctl": call(250, 0, -3, 0),
    "add_key": call(248, 0, 0, 0, 0, 0),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "userfaultfd": call(323, 1),
    "io_uring_setup": call(425, 1, 0),
    "mount": call(165, 0, 0, 0, 0, 0),
    "unshare_user": call(272, 0x10000000),
    "unshare_net": call(272, 0x40000000),
    "unshare_mount": call(272, 0x20000),
    "setns": call(308, 0, 0),
    "acct": call(163, 0),
    "clone3": call(435, 0, 0),
    "personality_read_implies_exec": call(135, 0x0400000),
    "socket_vsock": call(41, 40, 1, 0),
    "newer_than_the_filter": call(int(sys.argv[2]) + 1, 0, 0, 0, 0),
}
try:
    fcntl.ioctl(0, termios.TIOCSTI, b" ")
    found["tiocsti"] = "ok"
except OSError as e:
    found["tiocsti"] = errno.errorcode.get(e.errno, "?")
open(sys.argv[1], "w").write(json.dumps(found))
"""

# keyctl through the 32-bit entry (int 0x80, i386 number 288): the classic way around a
# filter written for x86-64 numbers only. Ours kills such a call (SIGSYS: 128 + 31).
INT80 = r"""
#include <stdio.h>
int main(void) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(288L), "b"(0L), "c"(-3L), "d"(0L) : "memory");
    printf("int80-keyctl=%ld\n", r);
    return 0;
}
"""

WORK = r"""
cd /tmp && mkdir w && cd w
git init -q && git -c user.email=t@e -c user.name=t commit -q --allow-empty -m one \
  && echo "git-committed"
printf '#include <stdio.h>\nint main(void){puts("hello-from-cc");return 0;}\n' > h.c
cc h.c -o h && ./h
python3 -m venv /tmp/v && /tmp/v/bin/pip --version
cc /data/disk0/int80.c -o /tmp/int80 && { /tmp/int80; echo "int80-rc=$?"; }
echo "npm-$(npm --version)"
unshare -U true || echo "no-nested-userns"
"""


async def _pty(real: Real, sid: str, command: str, args: list[str]) -> None:
    """Start a command in opencode's terminal: a descendant of opencode, under its filter."""
    endpoint, password = await real.endpoint(sid)
    http = HTTPClient(Agent(_reactor()))
    headers: dict[bytes | str, bytes | str] = {"authorization": basic_auth(password)}
    d = http.post(
        f"http://{endpoint.host}:{endpoint.port}/pty",
        json={"command": command, "args": args, "cwd": "/data/disk0"},
        headers=headers,
    )
    d.addTimeout(10, _reactor())
    response = await d
    assert response.code == 200, response.code
    await response.content()


async def _read_when_there(path: Path, timeout: float) -> str:
    await wait_until(_reactor(), path.exists, timeout=timeout, step=0.2)
    return path.read_text()


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_kernel_surface(real: Real) -> None:
    """Inside a sandbox, under opencode: keyrings, BPF, perf, userfaultfd, io_uring, mounts,
    namespaces, accounting, odd personalities and TIOCSTI fail with EPERM, and no user
    namespace can be made; git, a C compiler, a Python venv with pip and npm still work.
    The same probe run beside the sandbox but outside its filter shows the calls themselves
    work on this kernel."""
    sid, _ = await real.create("a", "kernel")
    disk = real.data_dir / "workspaces" / real.workspaces["a"] / "disk"
    (disk / "probe.py").write_text(PROBE)
    (disk / "work.sh").write_text(WORK)
    (disk / "int80.c").write_text(INT80)

    highest = str(highest_known_syscall())
    await _pty(
        real, sid, "/usr/bin/python3", ["/data/disk0/probe.py", "/data/disk0/p.json", highest]
    )
    filtered: dict[str, Any] = json.loads(await _read_when_there(disk / "p.json", 30))
    for name, outcome in filtered.items():
        expected = "ENOSYS" if name in ("clone3", "newer_than_the_filter") else "EPERM"
        assert outcome == expected, (name, outcome, filtered)

    # Control: the same namespaces and user, without the filter (nsenter is not its child).
    control = run_inside(
        real.pid(sid), f"python3 /data/disk0/probe.py /data/disk0/c.json {highest}"
    )
    assert control.returncode == 0, control
    unfiltered = json.loads((disk / "c.json").read_text())
    assert unfiltered["keyctl"] != "EPERM", unfiltered
    assert unfiltered["personality_read_implies_exec"] == "ok", unfiltered
    assert unfiltered["clone3"] != "ENOSYS", unfiltered
    assert unfiltered["socket_vsock"] != "EPERM", unfiltered  # a vsock, or no transport

    # No nested user namespace even outside the filter: bubblewrap's --disable-userns.
    nested = run_inside(real.pid(sid), "unshare -U true")
    assert nested.returncode != 0, nested

    await _pty(
        real,
        sid,
        "/usr/bin/bash",
        ["-c", "bash /data/disk0/work.sh > /data/disk0/w.out 2>&1; echo done > /data/disk0/w.done"],
    )
    await _read_when_there(disk / "w.done", 180)
    out = (disk / "w.out").read_text()
    for expected in (r"^git-committed$", r"^hello-from-cc$", r"^pip \d", r"^npm-\d"):
        assert re.search(expected, out, re.MULTILINE), (expected, out)
    assert "no-nested-userns" in out, out
    assert "int80-rc=159" in out and "int80-keyctl=" not in out, out
    outside = run_inside(
        real.pid(sid), "cc /data/disk0/int80.c -o /data/disk0/int80 && /data/disk0/int80"
    )
    assert outside.stdout.startswith("int80-keyctl="), outside
    endpoint, password = await real.endpoint(sid)
    from cli_server.sandboxes.opencode import OpencodeClient

    health = await OpencodeClient(_reactor()).get_json(endpoint, password, "/global/health")
    assert health[0] == 200


@pytest_twisted.async_yield_fixture
async def bounded(db_url: str) -> AsyncIterator[Real]:
    """A real server whose sandboxes may use 1 GiB."""
    async with real_server(db_url, sandbox_memory=1024**3, sandbox_pids=512) as world:
        yield world


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_memory_it_can_fill_is_bounded(bounded: Real) -> None:
    """Inside a sandbox: writing past /tmp's size (a quarter of its memory) or /dev/shm's
    (an eighth) fails with ENOSPC; the root and /dev are read-only. Its slirp4netns runs
    under a seccomp filter of its own. Its cgroups go when it goes."""
    sid, _ = await bounded.create("a", "bounded")
    inside = bounded.pid(sid)
    mib = 1024**2
    fill = run_inside(
        inside,
        f"head -c {257 * mib} /dev/zero > /tmp/fill; echo tmp=$?; "
        f"head -c {129 * mib} /dev/zero > /dev/shm/fill; echo shm=$?; "
        "stat -f -c %b:%S /tmp /dev/shm; rm -f /tmp/fill /dev/shm/fill; "
        "touch /fill; echo root=$?; touch /dev/fill; echo dev=$?; "
        "touch /home/opencode/ok && echo home-writable",
        timeout=60,
    )
    out = fill.stdout + fill.stderr
    assert "tmp=1" in out and "shm=1" in out, out
    assert out.count("No space left on device") == 2, out
    tmp_size, shm_size = (
        int(blocks) * int(size)
        for blocks, size in (line.split(":") for line in fill.stdout.split()[2:4])
    )
    assert (tmp_size, shm_size) == (256 * mib, 128 * mib), out
    assert "root=1" in out and "dev=1" in out and "home-writable" in out, out
    assert out.count("Read-only file system") == 2, out

    slirp = bounded.backend.live(sid).slirp.pid
    status = Path(f"/proc/{slirp}/status").read_text()
    assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE), status
    assert not Path(f"/proc/{slirp}/root{bounded.data_dir}").exists()  # an empty root of its own

    groups = bounded.backend.cgroups.paths(sid)
    bwrap = bounded.backend.live(sid).sandbox.pid
    joined = [g for g in groups if str(bwrap) in (g / "cgroup.procs").read_text().split()]
    assert joined == groups and groups, groups
    done = await bounded.owner.call("DELETE", f"/api/sandboxes/{sid}")
    assert done.code == 204, done
    await wait_until(_reactor(), lambda: not any(g.exists() for g in groups), timeout=30)
