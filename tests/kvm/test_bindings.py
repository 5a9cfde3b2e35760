"""The binding layer against the real /dev/kvm."""

import errno
import os
import threading
import time

import pytest

from kvmtest.kvm import Kvm, KvmError, exits, lib

MSI_ADDRESS = 0xFEE00000
MP_RUNNABLE, MP_UNINITIALIZED, MP_INIT_RECEIVED, MP_HALTED = 0, 1, 2, 3


def make_vm(kvm, nr_vcpus=2):
    vm = kvm.create_vm()
    vm.create_irqchip()
    memory = vm.set_user_memory_region(0, 0, 1 << 20)
    vcpus = [vm.create_vcpu(i) for i in range(nr_vcpus)]
    # The newest vCPU is missing from KVM's APIC map until a KVM_SET_LAPIC
    # (host-findings.md#finding-3).
    for vcpu in vcpus:
        vcpu.set_lapic(vcpu.get_lapic())
    return vm, memory, vcpus


def start_real_mode(vcpu, memory, code: bytes, rax: int = 0) -> None:
    """Put `code` at 0x1000 and point the vCPU at it in real mode (CS base 0)."""
    memory[0x1000 : 0x1000 + len(code)] = code
    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rax, regs.rflags = 0x1000, rax, 2
    vcpu.set_regs(regs)


def test_api_version_and_capabilities(kvm):
    assert kvm.get_api_version() == lib.KVM_API_VERSION
    assert kvm.check_extension(lib.KVM_CAP_IRQCHIP) > 0
    assert kvm.check_extension(lib.KVM_CAP_MP_STATE) > 0
    assert kvm.get_vcpu_mmap_size() >= 4096


def test_memory_slots_including_reset_rom(kvm):
    with kvm.create_vm() as vm:
        low = vm.set_user_memory_region(0, 0, 1 << 20)
        rom = vm.set_user_memory_region(1, 0xFFFF0000, 0x10000)
        high = vm.set_user_memory_region(2, 0x100000, 0x10000)
        low[0:2] = b"\xf4\xf4"
        assert bytes(low[0:2]) == b"\xf4\xf4" and len(rom) == 0x10000 and len(high) == 0x10000
        with pytest.raises(KvmError) as err:  # overlaps slot 0
            vm.set_user_memory_region(3, 0x8000, 0x1000)
        assert err.value.errno == errno.EEXIST and err.value.ioctl == "KVM_SET_USER_MEMORY_REGION"


def test_split_irqchip(kvm):
    if not kvm.check_extension(lib.KVM_CAP_SPLIT_IRQCHIP):
        pytest.skip("KVM_CAP_SPLIT_IRQCHIP absent")
    with kvm.create_vm() as vm:
        vm.enable_split_irqchip(24)
        vcpu = vm.create_vcpu(0)
        assert vcpu.get_mp_state() == MP_RUNNABLE


def test_initial_mp_states(kvm):
    vm, _, (bsp, ap) = make_vm(kvm)
    with vm:
        assert bsp.get_mp_state() == MP_RUNNABLE
        assert ap.get_mp_state() == MP_UNINITIALIZED


def test_msi_init_then_sipi(kvm):
    vm, _, (_, ap) = make_vm(kvm)
    with vm:
        assert vm.signal_msi(MSI_ADDRESS | 1 << 12, 0, 0x500) == 1
        assert ap.get_mp_state() == MP_INIT_RECEIVED
        sregs, regs = ap.get_sregs(), ap.get_regs()
        assert (sregs.cs.selector, sregs.cs.base, sregs.cs.limit) == (0xF000, 0xFFFF0000, 0xFFFF)
        assert regs.rip == 0xFFF0
        assert vm.signal_msi(MSI_ADDRESS | 1 << 12, 0, 0x600 | 0x10) == 1
        assert ap.get_mp_state() == MP_RUNNABLE
        sregs, regs = ap.get_sregs(), ap.get_regs()
        assert (sregs.cs.selector, sregs.cs.base, regs.rip) == (0x1000, 0x10000, 0)


def test_msi_to_fresh_ap_before_set_lapic_is_not_delivered(kvm):
    with kvm.create_vm() as vm:
        vm.create_irqchip()
        vm.set_user_memory_region(0, 0, 1 << 20)
        vm.create_vcpu(0)
        ap = vm.create_vcpu(1)
        assert vm.signal_msi(MSI_ADDRESS | 1 << 12, 0, 0x500) == 0
        assert ap.get_mp_state() == MP_UNINITIALIZED


def test_registers_round_trip(kvm):
    vm, _, (bsp, _) = make_vm(kvm)
    with vm:
        regs = bsp.get_regs()
        regs.rax, regs.rip = 0x1234, 0x100
        bsp.set_regs(regs)
        assert (bsp.get_regs().rax, bsp.get_regs().rip) == (0x1234, 0x100)
        sregs = bsp.get_sregs()
        sregs.ds.base = 0xFEE00000
        bsp.set_sregs(sregs)
        assert bsp.get_sregs().ds.base == 0xFEE00000
        apic_base = bsp.get_msrs([0x1B])[0x1B]
        assert apic_base & 0xFFFFF000 == 0xFEE00000 and apic_base & (1 << 8)
        events = bsp.get_vcpu_events()
        bsp.set_vcpu_events(events)


def test_set_mp_state_rejects_unknown_value(kvm):
    vm, _, (bsp, _) = make_vm(kvm)
    with vm:
        assert bsp.set_mp_state_raw(77) == -errno.EINVAL
        with pytest.raises(KvmError) as err:
            bsp.set_mp_state(77)
        assert err.value.errno == errno.EINVAL


def test_cpuid_offers_x2apic_and_can_be_set(kvm):
    cpuid = kvm.get_supported_cpuid()
    assert len(cpuid) > 0 and cpuid.find(0) is not None
    vm, _, (bsp, _) = make_vm(kvm)
    with vm:
        bsp.set_cpuid2(cpuid)
        if cpuid.has_x2apic():
            bsp.set_msrs({0x1B: 0xFEE00000 | 1 << 11 | 1 << 10 | 1 << 8})
            assert bsp.get_msrs([0x1B])[0x1B] & (1 << 10)


def test_nmi_and_smi(kvm):
    vm, _, (bsp, _) = make_vm(kvm)
    with vm:
        assert bsp.nmi_raw() == 0
        expected = 0 if kvm.check_extension(lib.KVM_CAP_X86_SMM) else -errno.ENOTTY
        assert bsp.smi_raw() in (expected, -errno.EINVAL)


def test_hlt_exit_without_irqchip(kvm):
    with kvm.create_vm() as vm:
        memory = vm.set_user_memory_region(0, 0, 0x10000)
        vcpu = vm.create_vcpu(0)
        start_real_mode(vcpu, memory, b"\xe6\xe9\xf4", rax=0x42)  # out %al, $0xe9 ; hlt
        exit_ = vcpu.run()
        assert isinstance(exit_, exits.Io) and (exit_.port, exit_.direction) == (0xE9, "out")
        assert exit_.value() == 0x42
        assert isinstance(vcpu.run(), exits.Hlt)


def test_vcpu_thread_blocked_in_hlt_is_kicked_and_observed(kvm):
    """A vCPU thread halts inside KVM_RUN; the main thread keeps working, then kicks it."""
    vm, memory, (bsp, _) = make_vm(kvm)
    with vm:
        start_real_mode(bsp, memory, b"\xfa\xf4\xeb\xfd")  # cli ; hlt ; jmp back to hlt
        result = []
        thread = threading.Thread(target=lambda: result.append(bsp.run()))
        thread.start()
        deadline = time.monotonic() + 5
        work = 0
        while time.monotonic() < deadline and work < 1000:
            work += 1  # the GIL is free: this loop runs while the vCPU sits in HLT
            time.sleep(0.001)
        assert thread.is_alive() and work == 1000
        bsp.kick()
        thread.join(5)
        assert not thread.is_alive()
        assert result == [exits.Intr()]
        assert bsp.get_mp_state() == MP_HALTED
        assert bsp.get_regs().rip in (0x1002, 0x1003)


def test_kick_before_run_returns_at_once(kvm):
    vm, _, (bsp, _) = make_vm(kvm)
    with vm:
        bsp.kick()
        assert isinstance(bsp.run(), exits.Intr)


def test_no_fd_left_open_after_vm_close(kvm):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        vm, memory, vcpus = make_vm(kvm, 4)
        del memory
        vm.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_close_is_idempotent(kvm):
    vm, _, (bsp, _) = make_vm(kvm)
    vm.close()
    vm.close()
    bsp.close()
    assert vm.closed and bsp.closed


def test_missing_device_is_reported_clearly(tmp_path):
    pytest.importorskip("kvmtest.kvm._kvm_cffi")
    with pytest.raises(KvmError) as err:
        Kvm(str(tmp_path / "no-kvm"))
    assert err.value.errno == errno.ENOENT and "no-kvm" in str(err.value)


def test_kick_after_an_exit_is_answered_by_the_next_run(kvm):
    """A kick never gets lost between two KVM_RUN calls, and is answered exactly once."""
    with kvm.create_vm() as vm:
        memory = vm.set_user_memory_region(0, 0, 0x10000)
        vcpu = vm.create_vcpu(0)
        # out al,0xe9 ; out al,0xe9 ; jmp $-4
        start_real_mode(vcpu, memory, b"\xe6\xe9\xe6\xe9\xeb\xfa")
        assert isinstance(vcpu.run(), exits.Io)
        vcpu.kick()  # the vCPU is outside KVM_RUN now
        assert isinstance(vcpu.run(), exits.Intr)
        assert isinstance(vcpu.run(), exits.Io)  # the kick was answered once, not twice
        assert vcpu.get_regs().rip == 0x1004


CLOSE_UNDER_A_RUNNING_VCPU = r"""
import errno, os, threading, time
from kvmtest.kvm import Kvm
from tests.kvm.test_bindings import start_real_mode

kvm = Kvm()
before = len(os.listdir("/proc/self/fd"))
for round_ in range(3):
    vm = kvm.create_vm()
    vm.create_irqchip()
    memory = vm.set_user_memory_region(0, 0, 1 << 20)
    vcpu = vm.create_vcpu(0)
    start_real_mode(vcpu, memory, b"\xeb\xfe")  # jmp $: spins in guest code for ever
    results = []

    def spin():
        while True:
            ret = vcpu.run_raw()
            if ret == -errno.EBADF:
                results.append(ret)
                return

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.1)
    assert vcpu.in_kvm_run
    vm.close()  # the VM goes while its vCPU thread is inside KVM_RUN
    thread.join(5)
    assert not thread.is_alive() and results == [-errno.EBADF], results
print("fds", before, len(os.listdir("/proc/self/fd")))
"""


def test_closing_a_vm_under_a_vcpu_running_guest_code_never_crashes(kvm):
    """The Reliability issue's segfault: the VM (and its kvm_run page) closed while another
    thread ran the vCPU. Close now kicks the thread out of KVM_RUN before unmapping; the thread
    then gets EBADF. Run in a child so a crash is a failed exit code, not a dead test run."""
    import subprocess
    import sys
    from pathlib import Path

    child = subprocess.run(
        [sys.executable, "-c", CLOSE_UNDER_A_RUNNING_VCPU],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    _, before, after = child.stdout.split()
    assert before == after  # every VM and vCPU fd closed
