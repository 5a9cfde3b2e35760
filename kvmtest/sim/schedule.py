"""Sequential replay: a deterministic scheduler over the simulated system.

A trace outside a concurrent block is performed one operation at a time, and after each one
every thread reacts until nothing can move (what kvm_side observes as "settled"). The order
among enabled moves is fixed: KVM inside a thread first (it handles a pending request before
anything else runs on that vCPU), then the stepper guest (reports, re-entering KVM_RUN), then
the threads' programs, lowest vCPU first within each; last, a reaction that only a rare
event starts (kvm_pvm's early exit for an event that waits for the next one, d.7.15, d.7.16),
which the report or HLT exit that ends the wait always pre-empts here. ``System.enabled``
lists the moves; the reactions are confluent (tests/sim), so this order decides nothing an
observer could see except where real KVM imposes the same order.
"""

from __future__ import annotations

import reference

from .system import Move, System

# Upper bound on moves after one operation: a machine that does not settle is a model bug.
MAX_MOVES = 10_000


def _priority(move: Move) -> int:
    if move.op == "exit_event":
        return 3  # the rare order (d.7.15, d.7.16): the explorer has it, replay never
    if move.thread.startswith("kvm:"):
        return 0
    if move.op in ("report", "reenter"):
        return 1
    return 2


def _rare_first(move: Move) -> int:
    return -1 if move.op == "exit_event" else _priority(move)


class Sequential:
    """Performs operations in trace order on one System and says what each showed.
    ``rare_first``: take the rare exit as soon as it can happen instead of never (what a
    sequential trace shows when a host interrupt came first, kvmtest.fuzz.known)."""

    def __init__(self, system: System, rare_first: bool = False):
        self.system = system
        self._priority = _rare_first if rare_first else _priority

    def perform(self, op, thread: str | None = None) -> dict:
        """Load `op`, run to quiescence; return its outputs {(vcpu, field): value}: what the
        operation returned or read, the reports the guests sent meanwhile (the last per vCPU)
        and "thread": "blocked" for every vCPU thread asleep inside KVM_RUN ("running" for one
        that loops there without sleeping, Machine.spins)."""
        system = self.system
        system.reports.clear()
        system.load(op, thread)
        return self.settle()

    def settle(self) -> dict:
        """Run every enabled move, in the fixed order, until none is; return the outputs."""
        system = self.system
        out: dict = {}
        for _ in range(MAX_MOVES):
            moves = system.enabled()
            if not moves:
                break
            out.update(system.apply(min(moves, key=self._priority)))
        else:
            raise reference.ModelError(
                f"the simulated system does not settle: {system.machine.vcpus!r}"
            )
        return self.collect(out)

    def collect(self, out: dict) -> dict:
        """Add what the system shows once quiet: the reports, and where each busy thread is."""
        system = self.system
        for vcpu, what in system.reports:
            out[(vcpu, "report")] = what
        system.reports.clear()
        m = system.machine
        for vcpu in sorted(system.busy()):
            if m.run_status(vcpu) is reference.RunResult.BLOCKED:
                # asleep inside KVM_RUN (HLT, U, IR), or looping there without sleeping
                out[(vcpu, "thread")] = "running" if m.spins(vcpu) else "blocked"
        return out
