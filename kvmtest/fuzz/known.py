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


def _self_init_runs_on(trace: f.Trace, mismatch) -> bool:
    """The guest wrote an INIT its own APIC accepted (the model resets it there: a BSP reports
    "reset", an AP waits for its SIPI and reports nothing, "none"), and KVM let the stepper
    finish and report the ICR write first."""
    if mismatch.step >= len(trace.steps):
        return False
    # The ICR command the report answers: the vCPU's last command up to that step (the report
    # can come at a later step, when a host operation woke the vCPU into its command).
    commands = [
        s
        for s in trace.steps[: mismatch.step + 1]
        if isinstance(s, (f.Icr, f.GuestCommand)) and s.vcpu == mismatch.vcpu
    ]
    step = commands[-1] if commands else None
    return (
        isinstance(step, f.Icr)
        and mismatch.field == "report"
        and mismatch.expected in ("reset", "none")
        and mismatch.observed == "icr"
        and enc.decode_icr(step.value, trace.setup.apic == "x2apic").delivery_mode == enc.DM_INIT
    )


KNOWN = (
    Known(
        "pvm-self-init-runs-on",
        ("pvm",),
        "kvm_pvm: a vCPU that sends itself an INIT runs on to its next exit to userspace before "
        "the INIT resets it; kvm_amd (Debian 6.12 under TCG) resets it at once, as the model "
        "does (docs/fuzzing.md#self-init)",
        _self_init_runs_on,
    ),
)


def classify(trace: f.Trace, result, flavour: str) -> str | None:
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
