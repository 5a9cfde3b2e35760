"""Lowest-priority delivery (rules 35, 39): a logical one with no software-enabled candidate
leaves the count at -1; a physical broadcast becomes a fixed interrupt first.

Both found against real KVM (kvm_irq_delivery_to_apic: `r = -1`, a lowest-priority candidate
is only ever taken when its APIC is software-enabled, and "phys broadcast and lowest prio"
turns the delivery mode into fixed: corpus msi-lowest-prio-phys-broadcast-is-fixed).
"""

import pytest

from reference import Machine

BROADCAST = 0xFEE00000 | 0xFF << 12
LOGICAL, REDIRECTION_HINT = 1 << 2, 1 << 3
INIT, LOWEST_FIXED = 0x500, 0x130


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12", "mainline"])
def test_logical_lowest_priority_to_software_disabled_apics_is_eperm(profile):
    m = Machine(3, profile, "pvm")
    m.set_lapic(0)
    assert m.signal_msi(BROADCAST | LOGICAL | REDIRECTION_HINT, 0, INIT) == -1
    assert m.signal_msi(BROADCAST | LOGICAL, 0, LOWEST_FIXED) == -1


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12", "mainline"])
def test_physical_broadcast_lowest_priority_is_fixed(profile):
    m = Machine(3, profile, "pvm")
    m.set_lapic(0)
    # Fixed to every APIC: each software-disabled one takes it with count 0 (not -1).
    assert m.signal_msi(BROADCAST, 0, LOWEST_FIXED) == 0
    # The redirection hint keeps the one-target arbitration, and nobody is enabled: -1.
    assert m.signal_msi(BROADCAST | REDIRECTION_HINT, 0, INIT) == -1


def test_hinted_physical_broadcast_init_is_delivered_as_fixed():
    m = Machine(3, "mainline", "pvm")
    m.set_lapic(0)
    m.set_lapic(2, spiv=0x1FF)
    assert m.signal_msi(BROADCAST | REDIRECTION_HINT, 0, INIT) == 1
    assert m.get_mp_state(2) == 1 and m.get_mp_state(1) == 1  # no INIT: both UNINITIALIZED


def test_hinted_logical_broadcast_init_reaches_one_enabled_apic():
    m = Machine(3, "mainline", "pvm")
    m.set_lapic(0)
    m.set_lapic(2, spiv=0x1FF)
    assert m.signal_msi(BROADCAST | LOGICAL | REDIRECTION_HINT, 0, INIT) == 1
    assert m.get_mp_state(2) == 2 and m.get_mp_state(1) == 1
