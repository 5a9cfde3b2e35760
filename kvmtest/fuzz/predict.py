"""What the model predicts for a trace, as one comparable value; and which mp_state
transitions it went through. Prediction against prediction needs no KVM: `kvmtest
diff-profiles` and the fuzzer's coverage (which switches would have changed a prediction)
both stand on it. The sequential part only: a concurrent block and what follows it are cut
(their outcomes are sets the explorer computes, far too costly to compare per trace).
"""

from __future__ import annotations

import reference
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.system import System
from reference import GUEST

DELIVERY_NAMES = {v: k for k, v in reference.encodings.DELIVERY_MODE_NAMES.items()}


def _label(step) -> str:
    if step.kind == "msi":
        return f"msi {reference.encodings.DELIVERY_MODE_NAMES.get(step.data & 0x700, '?')}"
    if step.kind == "icr":
        return f"icr {reference.encodings.DELIVERY_MODE_NAMES.get(step.value & 0x700, '?')}"
    if step.kind == "guest":
        return step.command
    return step.kind


def predict(trace, profile, flavour="vmx", cpuid_1_eax=None, smm=False):
    """(outputs, transitions): outputs is a tuple per step of its sorted (key, value) pairs
    (GUEST values as the string "guest"), ending with ("refused", message) if the model
    refused a step; transitions is a set of (what, mp_state before, mp_state after)."""
    profile = reference.get_profile(profile)
    system = System(trace.setup, profile, flavour, cpuid_1_eax, smm)
    model = Sequential(system)
    outputs = []
    transitions = set()
    vcpus = system.machine.vcpus
    for step in trace.steps:
        if step.kind == "concurrently":
            break
        before = [v.mp_state for v in vcpus]
        try:
            out = model.perform(step)
        except reference.ModelError as exc:
            outputs.append((("refused", str(exc)),))
            break
        outputs.append(
            tuple(sorted(((k, "guest" if v is GUEST else v) for k, v in out.items()), key=repr))
        )
        what = _label(step)
        for v, old in zip(vcpus, before, strict=True):
            if v.mp_state != old:
                transitions.add((what, _name(old), _name(v.mp_state)))
    return tuple(outputs), transitions


def _name(state) -> str:
    return getattr(state, "name", str(state))
