"""Shrinking a failing trace to a minimal one: greedy, structured, deterministic.

`shrink(trace, fails)` tries smaller variants in a fixed order and keeps the first that still
fails, until no variant does (a local minimum: removing any one step, branch or vCPU, or any
simplification below, makes the failure go away):

* drop one step (from the end first: observations and later noise go first);
* a concurrent block: drop a branch, drop a step of a branch, or run the block's steps in
  sequence (a race that is not needed for the failure is not kept);
* an observation: fewer vCPUs, reads narrowed to mp_state;
* the setup: one vCPU fewer (when no step names it), the APIC map synced, the in-kernel
  irqchip.

Every candidate must load back from its own YAML (the loader's rules), so what is written is
a valid trace. `fails` decides what "still fails" means; for real KVM the caller re-runs each
candidate several times and accepts only a failure that reproduces every time.
"""

from __future__ import annotations

from dataclasses import replace

from kvmtest import ops as f
from kvmtest.trace.dump import dump_trace
from kvmtest.trace.errors import TraceError
from kvmtest.trace.load import parse_trace


def _started_first(trace: f.Trace) -> bool:
    """Every guest command (an ICR write too) follows a `start` of its vCPU: the model and
    the harness disagree about a command to a stepper that never reported ready."""
    started: set = set()
    for step in trace.steps:
        inner = (
            [s for b in step.branches for s in b.steps]
            if isinstance(step, f.Concurrently)
            else [step]
        )
        for s in inner:
            if s.kind == "guest" and s.command == "start":
                started.add(s.vcpu)
            elif s.kind in ("guest", "icr") and s.vcpu not in started:
                return False
    return True


def valid(trace: f.Trace) -> bool:
    if not _started_first(trace):
        return False
    if trace.setup.guest != "none" and not trace.setup.sync_apic_map:
        return False
    try:
        return parse_trace(dump_trace(trace), "<shrink>") == trace
    except (TraceError, ValueError, KeyError, TypeError):
        return False


def _vcpus_named(trace: f.Trace) -> set:
    named = set()

    def visit(step):
        for attr in ("vcpu",):
            if hasattr(step, attr):
                named.add(getattr(step, attr))
        if isinstance(step, f.Observe):
            named.update(step.vcpus)
        if isinstance(step, f.Concurrently):
            for branch in step.branches:
                if branch.thread != "host":
                    named.add(int(branch.thread[4:]))
                for s in branch.steps:
                    visit(s)

    for step in trace.steps:
        visit(step)
    return named


def candidates(trace: f.Trace):
    steps = trace.steps
    for i in reversed(range(len(steps))):
        if len(steps) > 1:
            yield replace(trace, steps=steps[:i] + steps[i + 1 :])
    for i, step in enumerate(steps):
        if isinstance(step, f.Concurrently):
            flat = tuple(s for b in step.branches for s in b.steps)
            yield replace(trace, steps=steps[:i] + flat + steps[i + 1 :])
            for j in range(len(step.branches)):
                rest = step.branches[:j] + step.branches[j + 1 :]
                if len(rest) >= 2:
                    yield replace(trace, steps=steps[:i] + (f.Concurrently(rest),) + steps[i + 1 :])
            for j, branch in enumerate(step.branches):
                for k in range(len(branch.steps)):
                    if len(branch.steps) > 1:
                        smaller = replace(branch, steps=branch.steps[:k] + branch.steps[k + 1 :])
                        branches = step.branches[:j] + (smaller,) + step.branches[j + 1 :]
                        yield replace(
                            trace, steps=steps[:i] + (f.Concurrently(branches),) + steps[i + 1 :]
                        )
        if isinstance(step, f.Observe):
            if len(step.vcpus) > 1:
                for v in step.vcpus:
                    fewer = tuple(x for x in step.vcpus if x != v)
                    yield replace(
                        trace, steps=steps[:i] + (replace(step, vcpus=fewer),) + steps[i + 1 :]
                    )
            if step.read != ("mp_state",):
                narrow = replace(step, read=("mp_state",), fields=None)
                yield replace(trace, steps=steps[:i] + (narrow,) + steps[i + 1 :])
    setup = trace.setup
    if setup.vcpus > 1 and setup.vcpus - 1 not in _vcpus_named(trace):
        yield replace(trace, setup=replace(setup, vcpus=setup.vcpus - 1))
    if not setup.sync_apic_map:
        yield replace(trace, setup=replace(setup, sync_apic_map=True))
    if setup.irqchip != "kernel":
        yield replace(trace, setup=replace(setup, irqchip="kernel"))


def size(trace: f.Trace) -> int:
    """Steps, counting a block's steps: the measure that shrinking lowers."""
    return sum(
        len(s.branches) + sum(len(b.steps) for b in s.branches)
        if isinstance(s, f.Concurrently)
        else 1
        for s in trace.steps
    )


def shrink(
    trace: f.Trace, fails, budget: int = 400, seconds: float | None = None
) -> tuple[f.Trace, int]:
    """(the smallest failing trace found, candidates tried); `fails(trace) -> bool`. Stops
    after `budget` candidates or `seconds` (a trace that hangs costs seconds per run)."""
    import time

    end = None if seconds is None else time.monotonic() + seconds
    tried = 0
    current = trace
    progress = True
    while progress and tried < budget:
        progress = False
        for candidate in candidates(current):
            if tried >= budget or (end is not None and time.monotonic() > end):
                break
            if not valid(candidate):
                continue
            tried += 1
            if fails(candidate):
                current = candidate
                progress = True
                break
    return current, tried
