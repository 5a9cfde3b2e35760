"""Vm: a VM fd, with its memory slots and vCPUs."""

import mmap

from . import _lib
from .errors import KvmError
from .fd import OwnedFd


class Vm(OwnedFd):
    """One KVM virtual machine. Closing it closes its vCPUs first, then the VM fd."""

    def __init__(self, kvm, fd: int):
        super().__init__(fd)
        self.kvm = kvm
        self.vcpus = []
        self._memory = []  # (mmap, cffi buffer) pairs kept alive while the slot exists

    def _release(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        for region, pointer in self._memory:
            _lib.ffi.release(pointer)
            try:
                region.close()
            except BufferError:  # a caller still holds a view; the GC frees it later
                pass
        self._memory.clear()

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, flags: int = 0, address_space: int = 0
    ) -> memoryview:
        """Back [guest_phys_addr, +size) with fresh anonymous memory; return a writable view."""
        region = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        pointer = _lib.ffi.from_buffer(region)
        arg = _lib.ffi.new(
            "struct kvm_userspace_memory_region *",
            {
                "slot": slot | (address_space << 16),
                "flags": flags,
                "guest_phys_addr": guest_phys_addr,
                "memory_size": size,
                "userspace_addr": int(_lib.ffi.cast("uintptr_t", pointer)),
            },
        )
        try:
            _lib.ioctl(self._fd, "KVM_SET_USER_MEMORY_REGION", arg)
        except KvmError:
            _lib.ffi.release(pointer)
            region.close()
            raise
        self._memory.append((region, pointer))
        return memoryview(region)

    def create_irqchip(self) -> None:
        """The in-kernel PIC, IOAPIC and local APICs."""
        _lib.ioctl(self._fd, "KVM_CREATE_IRQCHIP")

    def enable_cap(self, cap: int, *args: int) -> None:
        arg = _lib.ffi.new("struct kvm_enable_cap *", {"cap": cap, "args": list(args)})
        _lib.ioctl(self._fd, "KVM_ENABLE_CAP", arg)

    def enable_split_irqchip(self, nr_ioapic_pins: int = 24) -> None:
        """Local APICs in the kernel, PIC and IOAPIC left to userspace (KVM_CAP_SPLIT_IRQCHIP)."""
        self.enable_cap(_lib.lib.KVM_CAP_SPLIT_IRQCHIP, nr_ioapic_pins)

    def enable_x2apic_api(self, flags: int) -> None:
        self.enable_cap(_lib.lib.KVM_CAP_X2APIC_API, flags)

    def set_boot_cpu_id(self, vcpu_id: int) -> None:
        _lib.ioctl(self._fd, "KVM_SET_BOOT_CPU_ID", integer=vcpu_id)

    def signal_msi_raw(self, address_lo: int, address_hi: int, data: int, flags: int = 0) -> int:
        """KVM_SIGNAL_MSI: the number of APICs that accepted it, or -errno."""
        msi = _lib.ffi.new(
            "struct kvm_msi *",
            {"address_lo": address_lo, "address_hi": address_hi, "data": data, "flags": flags},
        )
        return _lib.ioctl_raw(self._fd, "KVM_SIGNAL_MSI", msi)

    def signal_msi(self, address_lo: int, address_hi: int, data: int, flags: int = 0) -> int:
        ret = self.signal_msi_raw(address_lo, address_hi, data, flags)
        if ret < 0:
            raise KvmError("KVM_SIGNAL_MSI", -ret)
        return ret

    def create_vcpu(self, vcpu_id: int):
        from .vcpu import Vcpu

        fd = _lib.ioctl(self._fd, "KVM_CREATE_VCPU", integer=vcpu_id)
        vcpu = Vcpu(self, fd, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu
