"""The sandboxes' seccomp filter: what it denies, and that libseccomp compiles it."""

from __future__ import annotations

import errno

from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.seccomp import (
    CLONE_NEWNET,
    CLONE_NEWTIME,
    CLONE_NEWUSER,
    DENIED_SYSCALLS,
    PERSONALITIES,
    TIOCSTI,
    _blocks_outside,
    _Rule,
    compile_filter,
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

    def test_unknown_syscalls_are_skipped(self) -> None:
        """A name this architecture lacks (vm86 exists only on i386) adds nothing."""
        self.assertEqual(
            compile_filter([_Rule("keyctl", errno.EPERM), _Rule("no_such_call", errno.EPERM)]),
            compile_filter([_Rule("keyctl", errno.EPERM)]),
        )
