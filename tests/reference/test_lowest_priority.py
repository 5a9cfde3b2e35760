"""Rule 39 with lowest-priority delivery: no software-enabled candidate leaves the count at -1.

Found by the corpus against real KVM (kvm_irq_delivery_to_apic: `r = -1`, and a lowest-priority
candidate is only ever taken when its APIC is software-enabled).
"""

import pytest

from reference import Machine

BROADCAST = 0xFEE00000 | 0xFF << 12
LOGICAL, REDIRECTION_HINT = 1 << 2, 1 << 3
INIT, LOWEST_FIXED = 0x500, 0x130


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12", "mainline"])
@pytest.mark.parametrize("mode", [LOGICAL, 0])
def test_lowest_priority_to_software_disabled_apics_is_eperm(profile, mode):
    m = Machine(3, profile, "pvm")
    m.set_lapic(0)
    assert m.signal_msi(BROADCAST | mode | REDIRECTION_HINT, 0, INIT) == -1
    assert m.signal_msi(BROADCAST | mode, 0, LOWEST_FIXED) == -1


def test_lowest_priority_reaches_one_enabled_apic():
    m = Machine(3, "mainline", "pvm")
    m.set_lapic(0)
    m.set_lapic(2, spiv=0x1FF)
    assert m.signal_msi(BROADCAST | REDIRECTION_HINT, 0, INIT) == 1
    assert m.get_mp_state(2) == 2 and m.get_mp_state(1) == 1
