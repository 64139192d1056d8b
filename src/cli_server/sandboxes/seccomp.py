"""The seccomp filter every process-backend sandbox runs under, compiled with libseccomp.

Everything is allowed except what container runtimes' default profiles deny (Docker's is the
reference; its denials for a process without capabilities): those calls fail with EPERM. The
filter is compiled once to classic BPF, the form ``bwrap --seccomp FD`` loads.

Decisions that differ from a plain deny: ``clone3`` answers ENOSYS, as under Docker, so the C
library falls back to ``clone``, whose namespace flags can be inspected (clone3 passes them in
memory a filter cannot read); ``ptrace`` stays allowed (debuggers, strace), as Docker allows
it: a sandbox's processes live in their own pid and user namespaces and can trace only each
other; ``socket(AF_VSOCK)`` fails, as under Docker: vsock belongs to no network namespace, so
it would reach the hypervisor and its other guests past the sandbox's firewall.

Calls newer than the filter (numbers above the highest one libseccomp knows on this
architecture, so no rule could name them) answer ENOSYS, as container runtimes answer calls
their profile does not list: a kernel upgrade adds no surface, and the C library falls back
to older calls. A denied name that does not resolve is an error at start, never skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import struct
from collections.abc import Iterable, Sequence
from functools import cache

from attrs import frozen

# Fail with EPERM: kernel keyrings, BPF, perf, userfaultfd, modules, kexec, mounts and the
# new mount API, namespaces, handles that escape bind mounts, clock and system settings,
# swap, accounting, reboot, raw I/O ports, io_uring (a large, often-exploited surface that
# Docker also denies), NUMA calls that move other processes' pages.
DENIED_SYSCALLS: tuple[str, ...] = (
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "setns",
    "open_by_handle_at",
    "lookup_dcookie",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_adjtime",
    "sethostname",
    "setdomainname",
    "syslog",
    "uselib",
    "_sysctl",
    "nfsservctl",
    "quotactl",
    "quotactl_fd",
    "iopl",
    "ioperm",
    "modify_ldt",
    "vm86",
    "vm86old",
    "vhangup",
    "kcmp",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "move_pages",
    "migrate_pages",
    "mbind",
    "set_mempolicy",
    "get_mempolicy",
)

# Names in DENIED_SYSCALLS that x86-64 does not have (32-bit x86 only): skipped there. Any
# other name that libseccomp cannot resolve is an error.
NOT_ON_X86_64 = frozenset({"stime", "umount", "vm86", "vm86old"})

# Socket families refused to socket(): vsock reaches the hypervisor whatever the network
# namespace (others are per namespace, or need capabilities a sandbox has not).
AF_VSOCK = 40
DENIED_SOCKET_FAMILIES = (AF_VSOCK,)

# Namespace flags refused to clone and unshare (a new user namespace is also stopped by
# ``bwrap --disable-userns``; this covers the others too).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080  # unshare only: in clone's flags these bits are the exit signal
NAMESPACE_FLAGS = (
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
)

TIOCSTI = 0x5412  # push characters into a terminal's input: types commands into its owner
TIOCLINUX = 0x541C  # the same on virtual consoles, and more
# personality(2): only what Docker allows (Linux, 32-bit uname, uname26, and the query).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_ACT_ALLOW = 0x7FFF0000
_CMP_MASKED_EQ = 7
_X32_SYSCALL_BIT = 0x40000000  # x32 calls; libseccomp's program kills them
_HIGHEST_PROBED = 4095  # numbers checked for names when finding the highest known one


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@frozen
class _Rule:
    syscall: str
    errno: int
    # (argument index, comparison, a, b); all must hold
    compare: tuple[tuple[int, int, int, int], ...] = ()


def rules() -> list[_Rule]:
    """The filter's rules, in a form tests can read."""
    out = [_Rule(name, errno.EPERM) for name in DENIED_SYSCALLS]
    out.append(_Rule("clone3", errno.ENOSYS))
    for flag in NAMESPACE_FLAGS:
        out.append(_Rule("clone", errno.EPERM, ((0, _CMP_MASKED_EQ, flag, flag),)))
    for flag in (*NAMESPACE_FLAGS, CLONE_NEWTIME):
        out.append(_Rule("unshare", errno.EPERM, ((0, _CMP_MASKED_EQ, flag, flag),)))
    for family in DENIED_SOCKET_FAMILIES:
        # an int: the kernel reads 32 bits
        out.append(_Rule("socket", errno.EPERM, ((0, _CMP_MASKED_EQ, 0xFFFFFFFF, family),)))
    for request in (TIOCSTI, TIOCLINUX):
        # the kernel reads the request as 32 bits: compare only those, whatever is above
        out.append(_Rule("ioctl", errno.EPERM, ((1, _CMP_MASKED_EQ, 0xFFFFFFFF, request),)))
    # A rule compares an argument once, so "none of PERSONALITIES" is written as the blocks
    # of 32-bit values between them, each one masked comparison (the kernel reads 32 bits).
    for mask, value in _blocks_outside(PERSONALITIES):
        out.append(_Rule("personality", errno.EPERM, ((0, _CMP_MASKED_EQ, mask, value),)))
    return out


def _blocks_outside(allowed: Iterable[int]) -> list[tuple[int, int]]:
    """(mask, value) pairs whose matches are exactly the 32-bit numbers not in ``allowed``."""
    blocks = []
    start = 0
    for point in [*sorted(set(allowed)), 1 << 32]:
        if point > start:
            for net in ipaddress.summarize_address_range(
                ipaddress.IPv4Address(start), ipaddress.IPv4Address(point - 1)
            ):
                blocks.append((int(net.netmask), int(net.network_address)))
        start = point + 1
    return blocks


class SeccompError(Exception):
    pass


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompError(f"libseccomp not found ({e}); apt-get install libseccomp2") from e
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # a malloc'd name, or NULL
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def highest_known_syscall(lib: ctypes.CDLL | None = None) -> int:
    """The highest syscall number libseccomp has a name for on this architecture."""
    lib = lib or _library()
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    highest = -1
    for number in range(_HIGHEST_PROBED + 1):
        name = lib.seccomp_syscall_resolve_num_arch(0, number)  # 0: the native architecture
        if name:
            libc.free(name)
            highest = number
    if highest < 0:
        raise SeccompError("libseccomp knows no syscall of this architecture")
    return highest


def _newer_calls_enosys(arch: int, highest: int) -> bytes:
    """Classic BPF run before libseccomp's program: on this architecture, a call numbered
    above ``highest`` (and not an x32 call) returns ENOSYS; anything else falls through."""

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("<HBBI", code, jt, jf, k)

    ld_w_abs, jeq_k, jgt_k, jge_k, ret_k = 0x20, 0x15, 0x25, 0x35, 0x06
    return b"".join(
        (
            op(ld_w_abs, 0, 0, 4),  # seccomp_data.arch
            op(jeq_k, 0, 4, arch),  # another ABI: to libseccomp's program
            op(ld_w_abs, 0, 0, 0),  # seccomp_data.nr
            op(jgt_k, 0, 2, highest),  # known: to libseccomp's program
            op(jge_k, 1, 0, _X32_SYSCALL_BIT),  # x32: to libseccomp's program (kills it)
            op(ret_k, 0, 0, _act_errno(errno.ENOSYS)),
        )
    )


def compile_filter(rule_list: Iterable[_Rule]) -> bytes:
    """Classic BPF for this machine's architecture (other ABIs, e.g. 32-bit calls on x86-64,
    are killed by libseccomp's default). Calls newer than libseccomp's table answer ENOSYS;
    a rule whose call does not resolve raises SeccompError unless x86-64 lacks that call."""
    lib = _library()
    highest = highest_known_syscall(lib)
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompError("seccomp_init failed")
    try:
        for rule in rule_list:
            number = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
            if number < 0:
                if rule.syscall in NOT_ON_X86_64:
                    continue
                raise SeccompError(
                    f"libseccomp cannot resolve the syscall {rule.syscall!r} on this "
                    "architecture, so the sandbox filter cannot deny it"
                )
            compare: Sequence[tuple[int, int, int, int]] = rule.compare
            array = (_ArgCmp * max(len(compare), 1))(*(_ArgCmp(*c) for c in compare))
            result = lib.seccomp_rule_add_array(
                ctx, _act_errno(rule.errno), number, len(compare), array
            )
            if result < 0:
                raise SeccompError(f"seccomp rule for {rule.syscall}: {os.strerror(-result)}")
        memory = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        try:
            result = lib.seccomp_export_bpf(ctx, memory)
            if result < 0:
                raise SeccompError(f"seccomp export: {os.strerror(-result)}")
            os.lseek(memory, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(memory, 65536):
                chunks.append(chunk)
            return _newer_calls_enosys(lib.seccomp_arch_native(), highest) + b"".join(chunks)
        finally:
            os.close(memory)
    finally:
        lib.seccomp_release(ctx)


@cache
def sandbox_filter() -> bytes:
    """The compiled filter for sandboxes (compiled once per process)."""
    return compile_filter(rules())
