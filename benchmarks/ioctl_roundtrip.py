"""Cost of one ioctl round trip through kvmtest's bindings, next to the same call in C.

Usage: python benchmarks/ioctl_roundtrip.py [N]
Prints nanoseconds per KVM_GET_MP_STATE and KVM_GET_REGS: in C, through kvmtest's wrapper,
through the bare cffi call, and through fcntl.ioctl (which holds the GIL). The bare calls show
the floor any Python process pays for a syscall on this host; the wrapper's cost above it is
kvmtest's own.
"""

import fcntl
import os
import subprocess
import sys
import tempfile
import time

from kvmtest.kvm import Kvm, ffi, lib

HERE = os.path.dirname(os.path.abspath(__file__))


def build_c_baseline(directory: str) -> str:
    """Compile benchmarks/c/kvm_bench.c with -O2; returns the binary's path."""
    binary = os.path.join(directory, "kvm_bench")
    source = os.path.join(HERE, "c", "kvm_bench.c")
    subprocess.run(["gcc", "-O2", "-o", binary, source], check=True)
    return binary


def per_call_ns(function, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        function()
    return (time.perf_counter() - start) / n * 1e9


def python_ns_per_call(n: int) -> dict:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        results = {}
        for name, ctype, wrapper in (
            ("KVM_GET_MP_STATE", "struct kvm_mp_state *", vcpu.get_mp_state),
            ("KVM_GET_REGS", "struct kvm_regs *", vcpu.get_regs),
        ):
            request, arg = getattr(lib, name), ffi.new(ctype)
            buffer = bytearray(ffi.sizeof(ctype[:-2]))
            bare = lib.kvmtest_ioctl_ptr
            results[name] = (
                per_call_ns(wrapper, n),
                per_call_ns(lambda r=request, a=arg, f=bare: f(vcpu.fd, r, a), n),
                per_call_ns(lambda r=request, b=buffer: fcntl.ioctl(vcpu.fd, r, b, True), n),
            )
        return results


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_c_baseline(tmp)
        c_out = subprocess.run([binary, "ioctl", str(n)], check=True, capture_output=True)
        c_mp, c_regs = map(float, c_out.stdout.split())
    python = python_ns_per_call(n)
    header = ("ioctl", "C ns", "kvmtest ns", "ratio", "bare cffi ns", "fcntl ns")
    print(f"{header[0]:<18}" + "".join(f"{h:>14}" for h in header[1:]))
    for name, c_ns in (("KVM_GET_MP_STATE", c_mp), ("KVM_GET_REGS", c_regs)):
        wrapped, bare, fcntl_ns = python[name]
        cells = (c_ns, wrapped, wrapped / c_ns, bare, fcntl_ns)
        print(f"{name:<18}" + "".join(f"{c:>14.2f}" if c < 10 else f"{c:>14.0f}" for c in cells))


if __name__ == "__main__":
    main()
