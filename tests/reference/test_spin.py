"""Rule 18: an event nothing consumes in wait-for-SIPI (an NMI) makes the vCPU thread spin
inside KVM_RUN: Machine.spins, which the sequential replay shows as thread "running"."""

import pytest

from reference import Machine, Phase, Step


def _ap_in_kvm_run(m: Machine, vcpu: int = 1) -> None:
    m.set_lapic(0)
    m.apply(Step("run_entry", (vcpu,)))
    m.settle()


@pytest.mark.parametrize("profile", ["linux-3.10", "linux-6.1", "mainline"])
def test_nmi_in_uninitialized_spins_instead_of_sleeping(profile):
    m = Machine(2, profile, "vmx")
    _ap_in_kvm_run(m)
    assert m.vcpus[1].phase == Phase.U_BLOCK and not m.spins(1)  # asleep
    m.signal_msi(0xFEE01000, 0, 0x400)  # NMI
    m.settle()  # must settle: the -EAGAIN loop changes nothing
    assert m.vcpus[1].phase == Phase.U_BLOCK and m.spins(1)


def test_nmi_in_init_received_spins_and_an_init_sipi_still_wakes():
    m = Machine(2, "mainline", "vmx")
    _ap_in_kvm_run(m)
    m.signal_msi(0xFEE01000, 0, 0x500)  # INIT
    m.settle()  # the UNINITIALIZED branch takes it and returns -EAGAIN; the VMM re-enters:
    m.apply(Step("run_entry", (1,)))
    m.settle()
    assert m.vcpus[1].mp_state == 2 and m.vcpus[1].phase == Phase.BLOCKED and not m.spins(1)
    m.signal_msi(0xFEE01000, 0, 0x400)  # NMI
    m.settle()
    assert m.spins(1)
    m.signal_msi(0xFEE01000, 0, 0x610)  # SIPI: consumed, the vCPU runs
    m.settle()
    assert m.vcpus[1].mp_state == 0 and not m.spins(1)
