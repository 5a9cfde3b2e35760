"""Every wrapper called on a closed handle raises KvmError with EBADF (runs without KVM)."""

import errno
import threading

import pytest

kvm_module = pytest.importorskip("kvmtest.kvm._kvm_cffi")

from kvmtest.kvm import Kvm, KvmError, Vcpu, Vm  # noqa: E402
from kvmtest.kvm.fd import OwnedFd  # noqa: E402


class _ClosedKvm(Kvm):
    def __init__(self):
        OwnedFd.__init__(self, -1)


def closed_handles():
    kvm = _ClosedKvm()
    vm = Vm(kvm, -1)
    vcpu = Vcpu.__new__(Vcpu)
    OwnedFd.__init__(vcpu, -1)
    vcpu.vm, vcpu.vcpu_id, vcpu._thread = vm, 0, None
    vcpu._kick_lock, vcpu._kick_pending = threading.Lock(), False
    vcpu._release = lambda: None
    # A closed vCPU runs against a harmless page, as after Vcpu.close().
    from kvmtest.kvm import ffi

    vcpu._dead_page = ffi.new("char[]", 4096)
    vcpu._run = ffi.cast("struct kvm_run *", vcpu._dead_page)
    vcpu._exit = ffi.new("struct kvmtest_exit *")
    return kvm, vm, vcpu


def calls():
    kvm, vm, vcpu = closed_handles()
    from kvmtest.kvm import Cpuid

    cpuid = Cpuid(4)
    return {
        "Kvm.get_api_version": kvm.get_api_version,
        "Kvm.check_extension": lambda: kvm.check_extension(1),
        "Kvm.get_vcpu_mmap_size": lambda: Kvm.get_vcpu_mmap_size(_ClosedKvm.__new__(_ClosedKvm)),
        "Kvm.get_supported_cpuid": kvm.get_supported_cpuid,
        "Kvm.create_vm": kvm.create_vm,
        "Vm.set_user_memory_region": lambda: vm.set_user_memory_region(0, 0, 4096),
        "Vm.create_irqchip": vm.create_irqchip,
        "Vm.enable_split_irqchip": vm.enable_split_irqchip,
        "Vm.enable_x2apic_api": lambda: vm.enable_x2apic_api(1),
        "Vm.set_boot_cpu_id": lambda: vm.set_boot_cpu_id(0),
        "Vm.signal_msi": lambda: vm.signal_msi(0xFEE00000, 0, 0x500),
        "Vm.create_vcpu": lambda: vm.create_vcpu(0),
        "Vcpu.run": vcpu.run,
        "Vcpu.get_regs": vcpu.get_regs,
        "Vcpu.set_regs": lambda: vcpu.set_regs(ffi_new("struct kvm_regs *")),
        "Vcpu.get_sregs": vcpu.get_sregs,
        "Vcpu.set_sregs": lambda: vcpu.set_sregs(ffi_new("struct kvm_sregs *")),
        "Vcpu.get_mp_state": vcpu.get_mp_state,
        "Vcpu.set_mp_state": lambda: vcpu.set_mp_state(0),
        "Vcpu.get_lapic": vcpu.get_lapic,
        "Vcpu.set_lapic": lambda: vcpu.set_lapic(bytes(1024)),
        "Vcpu.get_vcpu_events": vcpu.get_vcpu_events,
        "Vcpu.set_vcpu_events": lambda: vcpu.set_vcpu_events(ffi_new("struct kvm_vcpu_events *")),
        "Vcpu.get_msrs": lambda: vcpu.get_msrs([0x1B]),
        "Vcpu.set_msrs": lambda: vcpu.set_msrs({0x1B: 0}),
        "Vcpu.set_cpuid2": lambda: vcpu.set_cpuid2(cpuid),
        "Vcpu.nmi": vcpu.nmi,
        "Vcpu.smi": vcpu.smi,
    }


def ffi_new(ctype):
    from kvmtest.kvm import ffi

    return ffi.new(ctype)


@pytest.mark.parametrize("name", sorted(calls()))
def test_wrapper_on_closed_fd_raises_ebadf(name):
    with pytest.raises(KvmError) as err:
        calls()[name]()
    assert err.value.errno == errno.EBADF, str(err.value)


def test_raw_calls_return_minus_ebadf():
    _, vm, vcpu = closed_handles()
    assert vm.signal_msi_raw(0xFEE00000, 0, 0x500) == -errno.EBADF
    assert vcpu.set_mp_state_raw(0) == -errno.EBADF
    assert vcpu.run_raw() == -errno.EBADF
    assert vcpu.nmi_raw() == -errno.EBADF and vcpu.smi_raw() == -errno.EBADF
