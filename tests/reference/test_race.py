"""The pre-patch race of section (e), found by enumerating interleavings of atomic steps.

Thread A (the BSP's guest) sends INIT, SIPI, SIPI to the AP; thread B (the AP's guest) executes
HLT. Every interleaving of A's steps, B's two HLT steps and the kernel's reactions
(``pending_steps``) is explored with ``clone()`` and ``key()``; the outcome is the AP's state
once everything has settled (and, if KVM_RUN returned -EINTR as V1 does after a SIPI, once the
VMM has re-entered it).
"""

from __future__ import annotations

import pytest

from reference import GUEST, Machine, MpState
from reference import encodings as enc

from .util import INIT, SIPI, boot_ap, run_guest, vm

R, IR, H = MpState.RUNNABLE, MpState.INIT_RECEIVED, MpState.HALTED


def setting(profile: str) -> Machine:
    m = vm(profile)
    boot_ap(m, 1, 0x10)
    run_guest(m, 1)  # the AP runs code that ends in cli; hlt
    return m


def programs(m: Machine):
    bsp = [
        *m.atomic_steps("icr_write", 0, enc.encode_icr(INIT, 0, 1), False),
        *m.atomic_steps("icr_write", 0, enc.encode_icr(SIPI, 0x20, 1), False),
        *m.atomic_steps("icr_write", 0, enc.encode_icr(SIPI, 0x20, 1), False),
    ]
    ap = m.atomic_steps("guest_hlt", 1)
    return (bsp, ap)


def guest_context_kept(m: Machine, thread: int) -> bool:
    """The AP's program is the old guest code: once an INIT/SIPI reset its registers (RIP
    known again) that code is gone and its remaining steps never happen."""
    return thread == 0 or m.vcpus[1].regs["rip"] is GUEST


def outcome(m: Machine):
    m.settle()
    if m.vcpus[1].last_exit == "-EINTR" and not m.vcpus[1].in_run:
        m.enter_run(1)  # the VMM calls KVM_RUN again (V1 after a SIPI, section e)
        m.settle()
    v = m.vcpus[1]
    cs = v.regs["cs"].selector
    return (MpState(v.mp_state), str(m.run_status(1)), cs)


def explore(profile: str):
    """All reachable outcomes, and for each one interleaving (list of step labels) reaching it."""
    start = setting(profile)
    progs = programs(start)
    outcomes: dict = {}
    seen = set()
    stack = [(start, (0, 0), ())]
    while stack:
        m, pcs, trail = stack.pop()
        k = (m.key(), pcs)
        if k in seen:
            continue
        seen.add(k)
        moves = []
        for t, prog in enumerate(progs):
            if pcs[t] < len(prog) and m.can_apply(prog[pcs[t]]) and guest_context_kept(m, t):
                moves.append(("thread", t))
        moves += [("react", s) for s in m.pending_steps()]
        if not moves:
            outcomes.setdefault(outcome(m.clone()), trail)
            continue
        for kind, what in moves:
            c = m.clone()
            if kind == "thread":
                step = progs[what][pcs[what]]
                c.apply(step)
                npcs = tuple(pc + (i == what) for i, pc in enumerate(pcs))
                label = f"{'AB'[what]}:{step.op}"
            else:
                c.step(*what)
                npcs = pcs
                label = f"react:{what[0]}:{what[1]}"
            stack.append((c, npcs, trail + (label,)))
    return outcomes


def test_linux_3_9_loses_the_init():
    outcomes = explore("linux-3.9")
    assert (R, "runs", 0x2000) in outcomes  # the good ordering also exists
    lost = [t for o, t in outcomes.items() if o[:2] == (H, "blocked")]
    assert lost, outcomes  # the AP stays halted: "CPU 1 failed to start"
    # In a losing interleaving B's kvm_emulate_halt comes after A's INIT write.
    trail = lost[0]
    assert trail.index("A:icr_write") < trail.index("B:emulate_halt")


@pytest.mark.parametrize("profile", ["linux-3.10", "linux-6.1", "linux-6.12", "mainline"])
def test_patched_kernels_always_start_the_ap(profile):
    assert set(explore(profile)) == {(R, "runs", 0x2000)}


def test_section_e_step_table():
    """The exact sequence of docs/semantics.md: steps 1-6 of the table in section (e)."""
    m = setting("linux-3.9")
    hlt_exit, emulate_halt = m.atomic_steps("guest_hlt", 1)
    m.apply(hlt_exit)  # 1: VM exit, about to call kvm_emulate_halt
    sent_init = m.icr_write(0, enc.encode_icr(INIT, 0, 1), False)  # 2: A writes IR
    state_after_init = m.vcpus[1].mp_state
    m.apply(emulate_halt)  # 3: B writes H: the INIT is lost
    m.settle()  # 4: B sleeps
    sipis = [m.icr_write(0, enc.encode_icr(SIPI, 0x20, 1), False) for _ in range(2)]  # 5, 6
    m.settle()
    assert (sent_init, state_after_init) == (1, IR)
    assert sipis == [0, 0]
    assert (m.vcpus[1].mp_state, m.run_status(1), m.pending_steps()) == (H, "blocked", [])


def test_same_interleaving_patched():
    m = setting("linux-3.10")
    hlt_exit, emulate_halt = m.atomic_steps("guest_hlt", 1)
    m.apply(hlt_exit)
    m.icr_write(0, enc.encode_icr(INIT, 0, 1), False)
    m.apply(emulate_halt)  # writes H, but the pending INIT makes the vCPU runnable (rule 18)
    assert m.pending_steps() == [(1, "wake")]
    m.settle()
    assert m.vcpus[1].mp_state == IR
    assert m.icr_write(0, enc.encode_icr(SIPI, 0x20, 1), False) == 1
    m.settle()
    assert (m.vcpus[1].mp_state, m.run_status(1), m.vcpus[1].regs["cs"].selector) == (
        R,
        "runs",
        0x2000,
    )
