"""Encodings: ICR and MSI decode to an interrupt request, and destination matching.

Rules 38 (MSI), 40 (ICR) and 41 (destination matching) of docs/semantics.md. The result
of a decode is an ``Irq``, the model's ``struct kvm_lapic_irq``. Pure functions, no state.
"""

from __future__ import annotations

from typing import NamedTuple

# Delivery modes as the kernel keeps them (pre-shifted, APIC_DM_*).
DM_FIXED = 0x000
DM_LOWEST = 0x100
DM_SMI = 0x200
DM_REMRD = 0x300
DM_NMI = 0x400
DM_INIT = 0x500
DM_STARTUP = 0x600
DM_EXTINT = 0x700

DELIVERY_MODE_NAMES = {
    DM_FIXED: "FIXED",
    DM_LOWEST: "LOWEST",
    DM_SMI: "SMI",
    DM_REMRD: "REMRD",
    DM_NMI: "NMI",
    DM_INIT: "INIT",
    DM_STARTUP: "STARTUP",
    DM_EXTINT: "EXTINT",
}

# Destination shorthands, ICR bits 19:18 (rule 40).
SH_NONE, SH_SELF, SH_ALL, SH_ALL_BUT_SELF = 0, 1, 2, 3

XAPIC_BROADCAST = 0xFF
X2APIC_BROADCAST = 0xFFFFFFFF
DFR_FLAT = 0xFFFFFFFF
DFR_CLUSTER = 0x0FFFFFFF

# rule 40: x2APIC ICR reserved bits 31:20, 17:16 and 13 (X2APIC_ICR_RESERVED_BITS).
X2APIC_ICR_RESERVED = (0xFFF << 20) | (0x3 << 16) | (1 << 13)

MSI_ADDR_BASE = 0xFEE00000


class Irq(NamedTuple):
    """``struct kvm_lapic_irq``: what __apic_accept_irq and the routing code see."""

    vector: int
    delivery_mode: int  # pre-shifted, DM_*
    logical: bool  # dest_mode (ICR bit 11 / MSI address bit 2)
    level: bool  # ICR bit 14; forced to 1 for MSIs (rule 38)
    trig_level: bool  # ICR/MSI-data bit 15: level-triggered
    shorthand: int  # SH_*
    dest_id: int
    redir_hint: bool = False  # MSI address bit 3 (rule 38)


def decode_icr(icr: int, x2apic: bool) -> Irq:
    """Rule 40: ``kvm_icr_to_lapic_irq``. xAPIC: icr = (ICR2 << 32) | ICR, destination in
    ICR2[31:24]; x2APIC: the 64-bit MSR 0x830 value, destination = the whole high half."""
    low = icr & 0xFFFFFFFF
    high = (icr >> 32) & 0xFFFFFFFF
    return Irq(
        vector=low & 0xFF,
        delivery_mode=low & 0x700,
        logical=bool(low & (1 << 11)),
        level=bool(low & (1 << 14)),
        trig_level=bool(low & (1 << 15)),
        shorthand=(low >> 18) & 3,
        dest_id=high if x2apic else (high >> 24) & 0xFF,
    )


def encode_icr(
    delivery_mode: int,
    vector: int = 0,
    dest: int = 0,
    *,
    x2apic: bool = False,
    logical: bool = False,
    level: bool = True,
    trig_level: bool = False,
    shorthand: int = SH_NONE,
) -> int:
    """Inverse of decode_icr, for tests and traces (xAPIC: ICR2 << 32 | ICR)."""
    low = (
        (vector & 0xFF)
        | (delivery_mode & 0x700)
        | (int(logical) << 11)
        | (int(level) << 14)
        | (int(trig_level) << 15)
        | ((shorthand & 3) << 18)
    )
    high = dest & 0xFFFFFFFF if x2apic else (dest & 0xFF) << 24
    return (high << 32) | low


def x2apic_icr_reserved(icr: int) -> bool:
    """Rule 40: does a WRMSR 0x830 value set reserved bits (V3 injects #GP)?"""
    return bool(icr & X2APIC_ICR_RESERVED)


def decode_msi(address_lo: int, address_hi: int, data: int, x2apic_format: bool) -> Irq:
    """Rule 38: ``kvm_set_msi_irq``. Level is forced to 1 and data bit 14 is ignored, so an
    INIT by MSI always asserts; shorthand is none."""
    dest = (address_lo >> 12) & 0xFF
    if x2apic_format:
        dest |= address_hi & 0xFFFFFF00  # address_hi[31:8] become dest_id[31:8]
    return Irq(
        vector=data & 0xFF,
        delivery_mode=data & 0x700,
        logical=bool(address_lo & (1 << 2)),
        level=True,
        trig_level=bool(data & (1 << 15)),
        shorthand=SH_NONE,
        dest_id=dest,
        redir_hint=bool(address_lo & (1 << 3)),
    )


def msi_invalid(address_hi: int, x2apic_format: bool) -> bool:
    """Rule 39: ``kvm_msi_route_invalid``: x2APIC format with address_hi[7:0] set."""
    return x2apic_format and bool(address_hi & 0xFF)


def encode_msi(delivery_mode: int, vector: int = 0, dest: int = 0, *, logical: bool = False):
    """(address_lo, address_hi, data) for an MSI as d.4 describes it."""
    address_lo = MSI_ADDR_BASE | ((dest & 0xFF) << 12) | (int(logical) << 2)
    return address_lo, 0, (delivery_mode & 0x700) | (vector & 0xFF)


def x2apic_ldr(x2apic_id: int) -> int:
    """x2APIC LDR derived from the ID: cluster in 31:16, one bit of 15:0."""
    return ((x2apic_id >> 4) << 16) | (1 << (x2apic_id & 0xF))


def match_physical(mda: int, xapic_id: int, x2apic_id: int, x2apic_mode: bool) -> bool:
    """Rule 41: ``kvm_apic_match_physical_addr`` (broadcast, then the hot-plug helper)."""
    if mda == (X2APIC_BROADCAST if x2apic_mode else XAPIC_BROADCAST):
        return True
    if x2apic_mode or mda > 0xFF:
        return mda == x2apic_id
    return mda == xapic_id


def match_logical(mda: int, ldr: int, dfr: int, x2apic_mode: bool) -> bool:
    """Rule 41: ``kvm_apic_match_logical_addr``: flat, cluster, x2APIC cluster."""
    if mda == (X2APIC_BROADCAST if x2apic_mode else XAPIC_BROADCAST):
        return True
    if x2apic_mode:
        return (ldr >> 16) == (mda >> 16) and bool(ldr & mda & 0xFFFF)
    logical_id = (ldr >> 24) & 0xFF
    if dfr == DFR_FLAT:
        return bool(logical_id & mda)
    if dfr == DFR_CLUSTER:
        return (logical_id >> 4) == (mda >> 4) and bool(logical_id & mda & 0xF)
    return False
