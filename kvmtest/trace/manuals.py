"""Under an architectural profile (``sdm``, ``apm``): what of a prediction the manuals define.

The simulated system predicts as KVM would with the manuals' switches on (reference/
architecture.py). Before the engine compares, ``Specify`` replaces what the manuals leave open
with ``UNSPECIFIED`` (never compared, counted apart from GUEST) and the mp_state encodings of
wait-for-SIPI with ``WAIT_FOR_SIPI``:

* every ``result`` (an ioctl's return value, KVM_SIGNAL_MSI's count): KVM ABI;
* fields no manual row of ``reference.architecture.FIELDS`` defines for this vendor;
* mp_state values with no architectural state (SIPI_RECEIVED, AP_RESET_HOLD, ...);
* registers, LAPIC, MSRs and events read while the vCPU still holds an INIT or SIPI pending
  (no GET_MP_STATE first, docs/semantics.md rule 8): a processor would have taken it already;
* everything about a vCPU after an interrupt missed it only because KVM's APIC map lacked it
  (rule 33), or after KVM_SET_MP_STATE(SIPI_RECEIVED) started it at KVM's stored vector
  (rule 25): what the guest would have seen instead is not guessed.
"""

from __future__ import annotations

from reference import GUEST, decode_icr, decode_msi
from reference import architecture as arch


class Specify:
    """One trace's filter: ``before(machine, step)`` then ``apply(machine, step, predicted)``."""

    def __init__(self, profile, setup):
        self.profile = profile
        self.x2apic = setup.apic == "x2apic"
        self.tainted: set[int] = set()  # vCPUs the APIC map made miss an interrupt
        self._pending: set[int] = set()

    def before(self, machine, step) -> None:
        self._pending = {v.index for v in machine.vcpus if v.pending_init or v.pending_sipi}
        irq, sender = None, None
        if step.kind == "msi":
            irq = decode_msi(step.address_lo, step.address_hi, step.data, machine.x2apic_format)
        elif step.kind == "icr":
            irq, sender = decode_icr(step.value, self.x2apic), step.vcpu
        if irq is not None and machine.lapic:
            self.tainted |= arch.missed_by_map(machine, irq, sender)
        if step.kind == "set_mp_state" and step.state == 4:
            # SIPI_RECEIVED starts the vCPU at KVM's stored vector (rule 25): no manual's SIPI
            self.tainted.add(step.vcpu)

    def apply(self, machine, step, predicted: dict) -> dict:
        stale = self._stale_reads(step)
        out = {}
        for key, value in predicted.items():
            vcpu, name = key
            out[key] = self._value(vcpu, name, value, stale)
        return out

    def _stale_reads(self, step) -> set[int]:
        """vCPUs whose registers this observe reads while KVM holds an INIT/SIPI pending."""
        if step.kind != "observe":
            return set()
        if step.read and step.read[0] == "mp_state":
            return set()  # GET_MP_STATE processed the events before anything else was read
        return self._pending

    def _value(self, vcpu, name, value, stale):
        if value is GUEST:
            return value
        if vcpu is not None and vcpu in self.tainted:
            return arch.UNSPECIFIED
        if name == "result":
            return arch.UNSPECIFIED
        if name == "mp_state":
            if value in (1, 2):
                return arch.WAIT_FOR_SIPI
            return value if value in arch.ARCH_MP_STATES else arch.UNSPECIFIED
        if vcpu in stale and name not in ("report", "thread"):
            return arch.UNSPECIFIED
        if not arch.specified(self.profile, name, self.x2apic):
            return arch.UNSPECIFIED
        return value
