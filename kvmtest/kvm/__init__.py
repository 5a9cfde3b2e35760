"""cffi bindings to /dev/kvm: Kvm (system fd) -> Vm -> Vcpu, each owning one fd.

Methods are named after the ioctls. Checked methods raise KvmError; `*_raw` methods return the
result or -errno, for traces that expect a call to fail. Calls go through cffi, which releases
the GIL, so one thread per vCPU works (fcntl.ioctl would hold the GIL while KVM_RUN blocks).
"""

from . import exits
from ._lib import ffi, lib, require
from .cpuid import Cpuid
from .errors import BindingUnavailable, KvmError
from .system import DEVICE, Kvm
from .vcpu import KICK_SIGNAL, Vcpu
from .vm import Vm


def available() -> bool:
    """True when the compiled binding is importable (says nothing about /dev/kvm itself)."""
    return lib is not None


__all__ = [
    "DEVICE",
    "KICK_SIGNAL",
    "BindingUnavailable",
    "Cpuid",
    "Kvm",
    "KvmError",
    "Vcpu",
    "Vm",
    "available",
    "exits",
    "ffi",
    "lib",
    "require",
]
