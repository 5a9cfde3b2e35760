"""Divergences already judged: what the fuzzer counts apart instead of shrinking again.

A random trace that diverges the way a judged divergence does (at its *first* mismatching
step, on the host kind the judgement is about) is counted under that judgement; the rest of
that trace is not judged, and the report says so. Each entry is narrow on purpose: a new
divergence must never hide behind an old one. The judgements and their evidence are in
docs/fuzzing.md; an entry leaves this table when the divergence is fixed (in KVM, the model
or the harness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import reference
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.system import System
from kvmtest.trace.engine import MISSING
from reference import GUEST


class Known(NamedTuple):
    key: str
    flavours: tuple  # the host kinds it was judged on (kvm_pvm reports flavour "pvm")
    judgement: str
    matches: Callable  # (trace, mismatches of the first mismatching step, profile, host) -> bool


def _rare_exit_explains(trace, mismatches, profile, host) -> bool:
    """Every mismatch of the step is what the model predicts there when the rare exit of
    d.7.15/d.7.16 comes first (a host interrupt made the guest exit before the event's usual
    exit; re-entry processed it), and the usual order is not what KVM showed. Only for a step
    outside a concurrent block: a block explores the rare exit already."""
    index = mismatches[0].step
    if index >= len(trace.steps) or trace.steps[index].kind == "concurrently":
        return False
    system = System(trace.setup, profile, host.flavour, host.cpuid_1_eax, host.smm)
    try:
        usual = Sequential(system)
        for step in trace.steps[:index]:
            usual.perform(step)
        other = system.clone()
        rare = Sequential(system, rare_first=True).perform(trace.steps[index])
        if rare == Sequential(other).perform(trace.steps[index]):
            return False  # no rare exit could happen there, or it changes nothing
    except reference.ModelError:
        return False
    for m in mismatches:
        want = rare.get((m.vcpu, m.field), "none" if m.field == "report" else MISSING)
        if want is GUEST or want != m.observed:
            return False
    return True


KNOWN = (
    Known(
        "pvm-exit-race",
        ("pvm",),
        "kvm_pvm: an event that waits for the vCPU's next VM exit (an INIT, SIPI or NMI it sent "
        "itself, d.7.15; a second queued NMI, d.7.16) usually waits, as modelled, but a host "
        "interrupt can make the guest exit first, and re-entry then processes it at once, as "
        "VMX does. KVM showed exactly the model's prediction for that rare order; a trace "
        "cannot choose, a concurrent block explores both (docs/fuzzing.md#exit-race)",
        _rare_exit_explains,
    ),
)


def classify(trace, result, profile, host) -> str | None:
    """The key of the judged divergence `result`'s first mismatching step is, or None."""
    if not result.mismatches:
        return None
    index = result.mismatches[0].step
    first = [m for m in result.mismatches if m.step == index]
    for known in KNOWN:
        if host.flavour in known.flavours and known.matches(trace, first, profile, host):
            return known.key
    return None


def judgement(key: str) -> str:
    return next(k.judgement for k in KNOWN if k.key == key)
