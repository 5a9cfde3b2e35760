"""Loads the compiled cffi module and gives every wrapper one way to issue an ioctl.

Who holds the GIL. A cffi call releases it; that is what lets a vCPU thread sit in KVM_RUN
while the others go on (docs/host-findings.md#finding-1), and what lets the first memory slot
of a VM, a wait of milliseconds in the kernel, overlap with other traces. For the many ioctls
that take microseconds, releasing costs more than it gives: with a dozen threads per process
every release and re-acquire is a futex handoff (about 200 per host-driven trace). So the
ioctls in WAITS go through cffi, the others through libc's ioctl by ctypes.PyDLL, which keeps
the GIL. A vCPU ioctl waits for that vCPU's mutex while a thread is in KVM_RUN on it: Vcpu
passes may_wait then, and the GIL is released (the harness kicks the thread out first anyway,
kvmtest.exec.workers). KVM_RUN itself is never here.
"""

import ctypes

from .errors import BindingUnavailable, KvmError

# libc's ioctl through ctypes.PyDLL: a foreign call that keeps the GIL (see above).
_libc = ctypes.PyDLL(None, use_errno=True)
_ioctl_holding_gil = _libc.ioctl
_ioctl_holding_gil.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl_holding_gil.restype = ctypes.c_int

try:
    from ._kvm_cffi import ffi, lib
except ImportError as exc:  # built without <linux/kvm.h>, or not built at all
    ffi = lib = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None


def require() -> None:
    """Raise BindingUnavailable with the reason when the compiled module is missing."""
    if lib is None:
        raise BindingUnavailable(
            "the /dev/kvm binding was not compiled into this installation "
            f"({_IMPORT_ERROR}); reinstall on Linux with the kernel headers "
            "(Debian: apt-get install linux-libc-dev gcc) or use --backend reference"
        )


class _Requests(dict):
    """ioctl name -> request number, looked up in the compiled module once."""

    def __missing__(self, name: str) -> int:
        self[name] = number = getattr(lib, name)
        return number


_REQUESTS = _Requests()


# The ioctls that can wait in the kernel (SRCU synchronisation, allocation of a whole VM):
# issued with the GIL released. Every other ioctl here keeps it.
WAITS = frozenset({"KVM_CREATE_VM", "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_IRQCHIP"})


def _issue(fd: int, name: str, arg, integer, may_wait: bool = False) -> int:
    """The ioctl's result, or -errno."""
    if may_wait or name in WAITS:
        if integer is not None:
            ret = lib.kvmtest_ioctl_int(fd, _REQUESTS[name], integer)
        else:
            ret = lib.kvmtest_ioctl_ptr(fd, _REQUESTS[name], ffi.NULL if arg is None else arg)
        return ret if ret >= 0 else -ffi.errno
    if integer is not None:
        value = integer
    else:
        value = None if arg is None else int(ffi.cast("uintptr_t", arg))
    ret = _ioctl_holding_gil(fd, _REQUESTS[name], value)
    return ret if ret >= 0 else -ctypes.get_errno()


def ioctl_raw(
    fd: int, name: str, arg=None, *, integer: int | None = None, may_wait: bool = False
) -> int:
    """Issue ioctl `name`; return its result or -errno; never raises (selftests' `__` layer).
    `may_wait`: the caller knows it may block (a vCPU ioctl while that vCPU runs)."""
    return _issue(fd, name, arg, integer, may_wait)


def ioctl(
    fd: int, name: str, arg=None, *, integer: int | None = None, may_wait: bool = False
) -> int:
    """Issue ioctl `name`; raise KvmError on failure (the checked layer)."""
    ret = _issue(fd, name, arg, integer, may_wait)
    if ret < 0:
        raise KvmError(name, -ret)
    return ret
