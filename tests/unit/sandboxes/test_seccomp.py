"""The sandboxes' seccomp filter: what it denies, and that libseccomp compiles it."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.seccomp import (
    AF_VSOCK,
    CLONE_NEWNET,
    CLONE_NEWTIME,
    CLONE_NEWUSER,
    DENIED_SYSCALLS,
    NOT_ON_X86_64,
    PERSONALITIES,
    TIOCSTI,
    SeccompError,
    _blocks_outside,
    _Rule,
    compile_filter,
    highest_known_syscall,
    rules,
    sandbox_filter,
)


def _matches(blocks: list[tuple[int, int]], value: int) -> bool:
    return any(value & mask == expected for mask, expected in blocks)


class RulesTests(SynchronousTestCase):
    def test_docker_defaults_denied_with_eperm(self) -> None:
        """The calls container runtimes refuse to an unprivileged process fail with EPERM."""
        unconditional = {r.syscall: r.errno for r in rules() if not r.compare}
        for name in (
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "mount",
            "umount2",
            "pivot_root",
            "setns",
            "open_by_handle_at",
            "acct",
            "swapon",
            "reboot",
            "settimeofday",
            "clock_settime",
            "io_uring_setup",
        ):
            self.assertEqual(unconditional[name], errno.EPERM, name)
        self.assertEqual(unconditional["clone3"], errno.ENOSYS)  # the C library falls back
        self.assertNotIn("ptrace", unconditional)  # allowed, as Docker allows it
        self.assertEqual(len(set(DENIED_SYSCALLS)), len(DENIED_SYSCALLS))

    def test_namespace_flags_and_tiocsti(self) -> None:
        """clone and unshare with a namespace flag, and TIOCSTI, are refused."""
        conditional = [r for r in rules() if r.compare]
        clone = {r.compare[0][2] for r in conditional if r.syscall == "clone"}
        unshare = {r.compare[0][2] for r in conditional if r.syscall == "unshare"}
        self.assertIn(CLONE_NEWUSER, clone)
        self.assertIn(CLONE_NEWNET, clone)
        self.assertNotIn(CLONE_NEWTIME, clone)  # the exit signal's bits in clone
        self.assertEqual(unshare, clone | {CLONE_NEWTIME})
        ioctl = [r.compare[0] for r in conditional if r.syscall == "ioctl"]
        self.assertIn((1, 7, 0xFFFFFFFF, TIOCSTI), ioctl)
        sockets = [(r.compare, r.errno) for r in conditional if r.syscall == "socket"]
        self.assertEqual(sockets, [(((0, 7, 0xFFFFFFFF, AF_VSOCK),), errno.EPERM)])

    def test_personality_blocks_are_exactly_the_others(self) -> None:
        """personality's masked comparisons match every 32-bit value but the allowed ones."""
        blocks = _blocks_outside(PERSONALITIES)
        for value in PERSONALITIES:
            self.assertFalse(_matches(blocks, value), hex(value))
        for value in (1, 7, 9, 0x400000, 0x20009, 0x40000, 0x80000000, 0xFFFFFFFE, 0x1FFFF):
            self.assertTrue(_matches(blocks, value), hex(value))
        for mask, expected in blocks:
            self.assertEqual(expected & ~mask, 0)
        personality = [r for r in rules() if r.syscall == "personality"]
        self.assertEqual(len(personality), len(blocks))


class CompileTests(SynchronousTestCase):
    def test_compiles_to_bpf(self) -> None:
        """libseccomp turns the rules into classic BPF (8-byte instructions, under the
        kernel's 4096-instruction limit); the result is computed once."""
        program = sandbox_filter()
        self.assertEqual(len(program) % 8, 0)
        self.assertLess(len(program) // 8, 4096)
        self.assertIs(sandbox_filter(), program)

    def test_calls_x86_64_lacks_are_skipped(self) -> None:
        """A listed name x86-64 does not have (vm86 exists only on i386) adds nothing."""
        self.assertLessEqual({"vm86", "stime"}, NOT_ON_X86_64 & set(DENIED_SYSCALLS))
        self.assertEqual(
            compile_filter([_Rule("keyctl", errno.EPERM), _Rule("vm86", errno.EPERM)]),
            compile_filter([_Rule("keyctl", errno.EPERM)]),
        )

    def test_unresolvable_denied_call_fails_loudly(self) -> None:
        """A denied name libseccomp cannot resolve is an error, never silently allowed."""
        error = self.assertRaises(
            SeccompError,
            compile_filter,
            [_Rule("keyctl", errno.EPERM), _Rule("open_tree_attr_v9", errno.EPERM)],
        )
        self.assertIn("'open_tree_attr_v9'", str(error))

    def test_filter_begins_with_the_newer_calls_cut(self) -> None:
        """Before libseccomp's program: on x86-64, numbers above the highest one libseccomp
        knows (and not x32) return ENOSYS."""
        highest = highest_known_syscall()
        self.assertGreaterEqual(highest, 450)  # futex_waitv's 449 and older are known
        program = sandbox_filter()
        first = [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, 48, 8)]
        self.assertEqual(
            first,
            [
                (0x20, 0, 0, 4),
                (0x15, 0, 4, 0xC000003E),
                (0x20, 0, 0, 0),
                (0x25, 0, 2, highest),
                (0x35, 1, 0, 0x40000000),
                (0x06, 0, 0, 0x00050000 | errno.ENOSYS),
            ],
        )


def _under_filter(number: int, *args: int) -> str:
    """Make a raw syscall in a forked child that has loaded the sandbox filter."""
    program = sandbox_filter()
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: load the filter, call, report, exit at once
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            buffer = ctypes.create_string_buffer(program, len(program))
            fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buffer))
            prog = ctypes.create_string_buffer(fprog, len(fprog))
            assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
            assert libc.prctl(22, 2, prog, 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            ctypes.set_errno(0)
            result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
            os.write(
                writing, (errno.errorcode[ctypes.get_errno()] if result < 0 else "ok").encode()
            )
        finally:
            os._exit(0)
    os.close(writing)
    try:
        return os.read(reading, 100).decode()
    finally:
        os.close(reading)
        os.waitpid(pid, 0)


class LoadedFilterTests(SynchronousTestCase):
    def test_newer_calls_enosys_vsock_eperm(self) -> None:
        """Loaded into a real process: a call numbered above the filter's knowledge answers
        ENOSYS (the kernel here may well have it), socket(AF_VSOCK) EPERM, other sockets
        and known calls go on."""
        self.assertEqual(_under_filter(highest_known_syscall() + 1, 0, 0, 0, 0), "ENOSYS")
        self.assertEqual(_under_filter(highest_known_syscall() + 11, 0, 0, 0, 0), "ENOSYS")
        self.assertEqual(_under_filter(41, AF_VSOCK, socket.SOCK_STREAM, 0), "EPERM")
        self.assertEqual(_under_filter(41, socket.AF_UNIX, socket.SOCK_STREAM, 0), "ok")
        self.assertEqual(_under_filter(250, 0, -3, 0), "EPERM")  # keyctl
        self.assertEqual(_under_filter(39), "ok")  # getpid
