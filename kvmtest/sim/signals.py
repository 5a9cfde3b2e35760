"""What an operation sends, for pictures and tables: an ICR write or an MSI decoded into its
delivery mode, vector, sender and the vCPUs it is addressed to.

Decoding is the model's own (reference.decode_icr / decode_msi, rules 38 and 40); the
destination is resolved the way a freshly created VM has it (APIC ID = vcpu_id, rule 36), so
it names the vCPUs the message is *addressed* to, not the ones that accept it: whether they
accept it is what the run shows. A logical destination is not resolved (it depends on LDR and
DFR): ``targets`` is None and the label says "logical".
"""

from __future__ import annotations

from typing import NamedTuple

import reference
from kvmtest import ops as f

_MODES = {
    0: "FIXED",
    1: "LOWEST",
    2: "SMI",
    3: "REMRD",
    4: "NMI",
    5: "INIT",
    6: "SIPI",
    7: "EXTINT",
}


class Signal(NamedTuple):
    sender: str  # "host" (an MSI) or "vcpuN" (the guest's ICR write)
    mode: str  # "INIT", "SIPI", "FIXED", ...
    vector: int | None  # SIPI and fixed interrupts only
    targets: tuple | None  # vCPU indices addressed; None: not resolved (logical)
    label: str  # "SIPI 0x10 -> APIC 1", "INIT -> all-but-self"


def signal_of(op, setup: f.Setup) -> Signal | None:
    """The signal `op` sends, or None for an operation that sends none."""
    nr = setup.vcpus
    x2apic = setup.apic == "x2apic"
    if op.kind == "icr":
        irq = reference.decode_icr(op.value, x2apic)
        sender, self_ = f"vcpu{op.vcpu}", op.vcpu
        if op.value & (1 << 13) and x2apic:  # rule 40: reserved bit, #GP, nothing sent
            return None
    elif op.kind == "msi":
        irq = reference.decode_msi(op.address_lo, op.address_hi, op.data, False)
        sender, self_ = "host", None
    else:
        return None
    mode = _MODES[irq.delivery_mode >> 8]
    vector = irq.vector if mode in ("SIPI", "FIXED", "LOWEST") else None
    broadcast = 0xFFFFFFFF if x2apic else 0xFF
    everyone = tuple(range(nr))
    if irq.shorthand == reference.encodings.SH_SELF:
        targets, where = (self_,) if self_ is not None else (), "self"
    elif irq.shorthand == reference.encodings.SH_ALL:
        targets, where = everyone, "all"
    elif irq.shorthand == reference.encodings.SH_ALL_BUT_SELF:
        targets, where = tuple(v for v in everyone if v != self_), "all-but-self"
    elif irq.logical:
        targets, where = None, f"logical {irq.dest_id:#x}"
    elif irq.dest_id == broadcast:
        targets, where = everyone, f"broadcast {irq.dest_id:#x}"
    else:
        targets = (irq.dest_id,) if irq.dest_id < nr else ()
        where = f"APIC {irq.dest_id}"
    shown = f"{mode} {vector:#x}" if vector is not None else mode
    return Signal(sender, mode, vector, targets, f"{shown} -> {where}")
