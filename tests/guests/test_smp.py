"""The autonomous SMP boot: every vCPU on its own thread, the BSP alone wakes the APs."""

import pytest

from kvmtest.guest import GuestError, GuestVm, Report, StrayExecution


@pytest.mark.parametrize("nr_vcpus", [2, 4, 8])
@pytest.mark.parametrize("broadcast", [False, True], ids=["init-sipi-sipi", "broadcast"])
@pytest.mark.parametrize("x2apic", [False, True], ids=["xapic", "x2apic"])
def test_every_ap_checks_in_and_parks(kvm, nr_vcpus, broadcast, x2apic):
    with GuestVm(kvm, nr_vcpus, image="smp", x2apic=x2apic) as vm:
        result = vm.smp_boot(broadcast=broadcast)
    assert result.online == result.expected == result.counter == nr_vcpus - 1
    assert result.all_online, result


def test_split_irqchip_and_a_second_boot_is_refused(kvm):
    with GuestVm(kvm, 4, image="smp", x2apic=True, irqchip="split") as vm:
        assert vm.smp_boot(broadcast=True).all_online
        with pytest.raises(GuestError, match="once"):
            vm.smp_boot()


def test_smp_boot_to_a_vector_without_landing_code_fails_loudly(kvm):
    with GuestVm(kvm, 2, image="smp") as vm:
        vm.memory[0x10000:0x10010] = b"\xcc" * 16  # remove one landing page
        with pytest.raises(StrayExecution, match="stray execution at 0x10000"):
            vm.smp_boot(vector=0x10, wait_limit=2000)


def test_init_to_the_bsp_of_the_smp_image_lands_in_the_reset_rom(kvm):
    with GuestVm(kvm, 2, image="smp") as vm:
        vm.vm.signal_msi(0xFEE00000, 0, 0x4500)  # INIT to APIC ID 0 before the BSP runs
        assert vm.bsp.wait() == Report("reset", (0xF000, 0))
