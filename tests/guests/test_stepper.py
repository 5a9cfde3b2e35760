"""The stepper on this host's KVM: INIT/SIPI sent by the guest BSP, reset, tripwire, kicks."""

import threading
import time

import pytest

from kvmtest.guest import CMD_HLT, GuestVm, Report, StrayExecution

INIT = 0x4500  # INIT, level assert, physical destination
SIPI = 0x4600
MP_HALTED = 3


def dest(apic_id: int, x2apic: bool) -> int:
    """The ICR destination field: bits 63:56 in xAPIC mode, 63:32 in x2APIC mode."""
    return apic_id << (32 if x2apic else 56)


@pytest.fixture
def guest_vm(kvm, request):
    x2apic = getattr(request, "param", False)
    with GuestVm(kvm, 2, x2apic=x2apic) as vm:
        assert vm.start() == Report("ready", (0,))
        yield vm


@pytest.mark.parametrize("guest_vm", [False, True], ids=["xapic", "x2apic"], indirect=True)
@pytest.mark.parametrize("vector", [0x08, 0x10, 0x9F])
def test_bsp_brings_up_ap_on_the_right_vector_page(guest_vm, vector):
    bsp, ap = guest_vm.bsp, guest_vm.stepper(1)
    assert bsp.icr_write(dest(1, guest_vm.x2apic) | INIT).kind == "icr"
    assert bsp.icr_write(dest(1, guest_vm.x2apic) | SIPI | vector).kind == "icr"
    assert ap.wait() == Report("sipi", (vector, 1))
    # the AP joined the stepper loop and takes commands
    assert ap.report_cs_ip().cs == 0
    assert ap.spin(10).kind == "spin"


def test_ap_in_xapic_mode_sends_init_that_resets_the_bsp(guest_vm):
    """The AP reaches the xAPIC page through its own unreal-mode FS; INIT puts the BSP at the
    reset vector, whose ROM hands over to the stepper loop."""
    bsp, ap = guest_vm.bsp, guest_vm.stepper(1)
    bsp.icr_write(dest(1, False) | INIT)
    bsp.icr_write(dest(1, False) | SIPI | 0x20)
    assert ap.wait().kind == "sipi"
    assert ap.icr_write(dest(0, False) | INIT).kind == "icr"
    assert bsp.wait() == Report("reset", (0xF000, 0))
    assert bsp.report_cs_ip().kind == "cs_ip"


def test_init_by_msi_lands_the_bsp_in_the_reset_rom(guest_vm):
    guest_vm.vm.signal_msi(0xFEE00000, 0, INIT)
    assert guest_vm.bsp.wait() == Report("reset", (0xF000, 0))


def test_x2apic_switch_then_broadcast_init_sipi(guest_vm):
    bsp, ap = guest_vm.bsp, guest_vm.stepper(1)
    assert bsp.enable_x2apic().apic_base & 0xC00 == 0xC00
    bsp.icr_write(0xC0000 | INIT)  # all-but-self
    bsp.icr_write(0xC0000 | SIPI | 0x42)
    assert ap.wait() == Report("sipi", (0x42, 1))


def test_split_irqchip_init_sipi(kvm):
    with GuestVm(kvm, 2, irqchip="split") as vm:
        vm.start()
        vm.bsp.icr_write(dest(1, False) | INIT)
        vm.bsp.icr_write(dest(1, False) | SIPI | 0x33)
        assert vm.stepper(1).wait() == Report("sipi", (0x33, 1))


def test_jump_into_unused_memory_is_stray_execution(guest_vm):
    with pytest.raises(StrayExecution) as caught:
        guest_vm.bsp.jump(0x50800)  # middle of a vector page, past the landing code
    assert caught.value.address == 0x50800
    assert "stray execution at 0x50800" in str(caught.value)


def test_sipi_to_a_page_without_landing_code_is_stray_execution(guest_vm):
    bsp, ap = guest_vm.bsp, guest_vm.stepper(1)
    bsp.icr_write(dest(1, False) | INIT)
    bsp.icr_write(dest(1, False) | SIPI | 0xA0)
    with pytest.raises(StrayExecution) as caught:
        ap.wait()
    assert caught.value.address == 0xA0000


def test_guest_exception_is_reported_and_the_stepper_recovers(guest_vm):
    bsp = guest_vm.bsp
    bsp.enable_x2apic()
    fault = bsp.icr_write(dest(1, True) | (1 << 13) | INIT)  # reserved bit 13: WRMSR #GP
    assert (fault.kind, fault.vector) == ("exception", 13)
    assert bsp.report_cs_ip().kind == "cs_ip"


def test_halted_vcpu_is_kicked_out_resumed_and_woken_by_nmi(guest_vm):
    bsp = guest_vm.bsp
    bsp.post(CMD_HLT)
    results = []

    def drive():
        results.append(bsp.run())

    for _ in range(2):  # kick, resume, kick again: it stays halted inside KVM
        thread = threading.Thread(target=drive)
        thread.start()
        time.sleep(0.02)
        bsp.kick()
        thread.join(2)
        assert not thread.is_alive()
        assert guest_vm.vcpus[0].get_mp_state() == MP_HALTED
    assert results == [None, None]
    guest_vm.vcpus[0].nmi()  # IVT vector 2 returns at once: HLT completes
    assert bsp.wait().kind == "hlt"


def test_report_cut_off_by_an_init_is_set_aside(kvm):
    """Values of a report that an INIT interrupted do not spoil the landing report after it."""
    from kvmtest import guest as g

    with g.GuestVm(kvm, 2) as vm:
        ap = vm.stepper(1)
        ap._values = [0x21, 1, 0x20, 1]  # 0x21 landing's values, cut off, then 0x20's
        report = ap._finish(g.REP_SIPI)
        assert (report.vector, report.apic_id) == (0x20, 1)
        assert ap.interrupted == [(0x21, 1)]
        ap._values = [1, 2, 3]
        with pytest.raises(g.GuestError):
            ap._finish(g.CMD_CS_IP)
