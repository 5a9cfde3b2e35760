"""Kvm: the /dev/kvm system fd, which answers questions and creates VMs."""

import os

from . import _lib
from .cpuid import Cpuid
from .errors import KvmError
from .fd import OwnedFd

DEVICE = "/dev/kvm"


class Kvm(OwnedFd):
    """The open /dev/kvm device."""

    _vcpu_mmap_size: int | None = None

    def __init__(self, path: str = DEVICE):
        _lib.require()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(f"open({path})", exc.errno) from None
        super().__init__(fd)

    def get_api_version(self) -> int:
        return _lib.ioctl(self._fd, "KVM_GET_API_VERSION", integer=0)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value."""
        return _lib.ioctl(self._fd, "KVM_CHECK_EXTENSION", integer=cap)

    def get_vcpu_mmap_size(self) -> int:
        if self._vcpu_mmap_size is None:
            self._vcpu_mmap_size = _lib.ioctl(self._fd, "KVM_GET_VCPU_MMAP_SIZE", integer=0)
        return self._vcpu_mmap_size

    def get_supported_cpuid(self, max_entries: int = 256) -> Cpuid:
        cpuid = Cpuid(max_entries)
        _lib.ioctl(self._fd, "KVM_GET_SUPPORTED_CPUID", cpuid.pointer)
        return cpuid

    def create_vm(self, machine_type: int = 0):
        from .vm import Vm

        fd = _lib.ioctl(self._fd, "KVM_CREATE_VM", integer=machine_type)
        return Vm(self, fd)
