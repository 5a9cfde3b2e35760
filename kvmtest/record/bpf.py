"""The seccomp filter the recorder installs in the VMM before exec: the KVM ioctls it records
stop, nothing else does.

Classic BPF over `struct seccomp_data` (nr: u32 at 0, arch: u32 at 4, instruction_pointer at
8, args[6] u64 from 16; args[1], the ioctl request, has its low half at 24):

    arch != x86-64                        -> ALLOW
    nr != ioctl                           -> ALLOW
    all_ioctls:
      (request & 0xff00) == KVMIO << 8    -> TRACE (a PTRACE_EVENT_SECCOMP stop)
    otherwise:
      request in ioctls.RECORDED          -> TRACE
                                          -> ALLOW

Without --all-ioctls a QEMU run makes about five times as many KVM ioctls the recorder has no
use for (KVM_IRQ_LINE_STATUS, KVM_CHECK_EXTENSION, KVM_SET_USER_MEMORY_REGION, ...) as ones it
records; they run without a stop. Jump offsets are counted from the next instruction;
`program()` resolves them from labels, and tests/record/test_record.py runs the program on the
interpreter `run()`.
"""

from __future__ import annotations

import ctypes
import os
import struct

from .ioctls import KVMIO, RECORDED

AUDIT_ARCH_X86_64 = 0xC000003E
NR_IOCTL = 16
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_AND_K = 0x54
BPF_RET_K = 0x06

OFF_NR, OFF_ARCH, OFF_REQUEST = 0, 4, 24


def program(all_ioctls: bool = False) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions."""
    # ("jeq", k, label if equal, label if not); labels: "next", "allow", "trace"
    code = [
        ("ld", OFF_ARCH),
        ("jeq", AUDIT_ARCH_X86_64, "next", "allow"),
        ("ld", OFF_NR),
        ("jeq", NR_IOCTL, "next", "allow"),
        ("ld", OFF_REQUEST),
    ]
    if all_ioctls:
        code += [("and", 0xFF00), ("jeq", KVMIO << 8, "trace", "allow")]
    else:
        code += [("jeq", request, "trace", "next") for request in RECORDED[:-1]]
        code += [("jeq", RECORDED[-1], "trace", "allow")]
    code += [("ret", SECCOMP_RET_TRACE), ("ret", SECCOMP_RET_ALLOW)]
    where = {"trace": len(code) - 2, "allow": len(code) - 1}
    out = []
    for pc, ins in enumerate(code):
        if ins[0] == "ld":
            out.append((BPF_LD_W_ABS, 0, 0, ins[1]))
        elif ins[0] == "and":
            out.append((BPF_AND_K, 0, 0, ins[1]))
        elif ins[0] == "ret":
            out.append((BPF_RET_K, 0, 0, ins[1]))
        else:
            _, k, yes, no = ins

            def offset(label, pc=pc):
                return 0 if label == "next" else where[label] - pc - 1

            out.append((BPF_JEQ_K, offset(yes), offset(no), k))
    return out


def run(prog, nr: int, arch: int, request: int) -> int:
    """Interpret the filter on one system call (for the tests): the action it returns."""
    data = struct.pack("<IIQ6Q", nr, arch, 0, 0, request, 0, 0, 0, 0)
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == BPF_LD_W_ABS:
            a = struct.unpack_from("<I", data, k)[0]
        elif code == BPF_AND_K:
            a &= k
        elif code == BPF_JEQ_K:
            pc += jt if a == k else jf
        elif code == BPF_RET_K:
            return k
        pc += 1


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def install(prog) -> None:
    """Install the filter in this process (the forked child, before exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    filters = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), filters)
    # Without CAP_SYS_ADMIN a filter needs no_new_privs (which would also disarm set-uid
    # programs the VMM runs); root installs it without.
    if os.geteuid() != 0 and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
