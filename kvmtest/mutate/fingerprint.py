"""What the model predicts for one trace, step by step, as comparable digests.

Two models predict a trace alike when every step's prediction (what ``Sequential`` returns:
results, reads, reports, sleeping threads) and the concurrent block's outcome labels (with the
properties they break) are equal. A model error is a prediction too.
"""

from __future__ import annotations

import hashlib

from kvmtest.sim.explore import Explorer
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.system import System


def _digest(value) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()[:16]


def predictions(trace, profile, flavour: str, cpuid_1_eax, smm: bool) -> list[str]:
    """One digest per step (the block's outcome set for a concurrent block, which ends the
    trace); a model error ends the list with a digest of the error's type and text."""
    out = []
    try:
        system = System(trace.setup, profile, flavour, cpuid_1_eax, smm)
        model = Sequential(system)
        for step in trace.steps:
            if step.kind == "concurrently":
                explorer = Explorer(trace, profile, flavour, smm, cpuid_1_eax)
                found = explorer.run(prefix=system)
                out.append(_digest((sorted(found.outcomes), sorted(found.violations.items()))))
                break
            out.append(_digest(sorted(model.perform(step).items(), key=repr)))
    except Exception as exc:  # noqa: BLE001 - a mutant may break anything; that is its prediction
        out.append(_digest(("error", type(exc).__name__, str(exc)[:300])))
    return out


def first_difference(base: list[str], other: list[str]) -> int | None:
    """Index of the first step whose prediction differs, None when all are equal."""
    for i, (a, b) in enumerate(zip(base, other, strict=False)):
        if a != b:
            return i
    return None if len(base) == len(other) else min(len(base), len(other))
