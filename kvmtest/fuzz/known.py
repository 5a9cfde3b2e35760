"""Divergences already judged: what the fuzzer counts apart instead of shrinking again.

A random trace that diverges the way a judged divergence does (its *first* mismatch, on the
host kind the judgement is about) is counted under that judgement; the rest of that trace is
not judged, and the report says so. Each entry is narrow on purpose: it names the operation,
the field and both values, so a new divergence never hides behind an old one. The judgements
and their evidence are in docs/fuzzing.md; an entry leaves this table when the divergence is
fixed (in KVM, the model or the harness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from kvmtest import ops as f
from reference import encodings as enc


class Known(NamedTuple):
    key: str
    flavours: tuple  # the host kinds it was judged on (kvm_pvm reports flavour "pvm")
    judgement: str
    matches: Callable  # (trace, first mismatch) -> bool


def _icr_targets_itself(step, x2apic: bool) -> bool:
    """A physical-mode ICR INIT the sender's own APIC accepts: shorthand self or all including
    self, its own APIC ID (the stepper's vCPU index), or the broadcast ID."""
    irq = enc.decode_icr(step.value, x2apic)
    if irq.delivery_mode != enc.DM_INIT or irq.trig_level and not irq.level:
        return False
    if irq.shorthand in (enc.SH_SELF, enc.SH_ALL):
        return True
    if irq.shorthand or irq.logical:
        return False
    return irq.dest_id in (step.vcpu, 0xFFFFFFFF if x2apic else 0xFF)


def _self_init_exit_race(trace, mismatch) -> bool:
    """The model's usual kvm_pvm order (d.7.15: the guest runs on to its report, ``icr``) and
    KVM took the rare one: the guest exited before its report and re-entry processed the INIT
    (a BSP reports ``reset``, an AP waits for its SIPI: no report)."""
    if mismatch.step >= len(trace.steps):
        return False
    commands = [
        s
        for s in trace.steps[: mismatch.step + 1]
        if isinstance(s, (f.Icr, f.GuestCommand)) and s.vcpu == mismatch.vcpu
    ]
    step = commands[-1] if commands else None
    return (
        isinstance(step, f.Icr)
        and mismatch.field == "report"
        and mismatch.expected == "icr"
        and mismatch.observed in ("reset", "none")
        and _icr_targets_itself(step, trace.setup.apic == "x2apic")
    )


KNOWN = (
    Known(
        "pvm-self-init-exit-race",
        ("pvm",),
        "kvm_pvm: a vCPU that sends itself an INIT usually runs on to its report first (modelled, "
        "d.7.15), but a host interrupt can make it exit before, and then KVM processes the INIT "
        "at once, as VMX does; a trace cannot choose, a concurrent block explores both "
        "(docs/fuzzing.md#self-init)",
        _self_init_exit_race,
    ),
)


def classify(trace, result, flavour: str) -> str | None:
    """The key of the judged divergence `result`'s first mismatch is, or None."""
    if not result.mismatches:
        return None
    first = result.mismatches[0]
    for known in KNOWN:
        if flavour in known.flavours and known.matches(trace, first):
            return known.key
    return None


def judgement(key: str) -> str:
    return next(k.judgement for k in KNOWN if k.key == key)
