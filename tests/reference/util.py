"""Small scenario helpers shared by the reference-model tests (standard library + reference)."""

from __future__ import annotations

from reference import Machine, MpState
from reference import encodings as enc
from reference.machine import Phase

ALL_PROFILES = ("linux-3.9", "linux-3.10", "linux-6.1", "linux-6.12", "mainline")
PATCHED = ("linux-3.10", "linux-6.1", "linux-6.12", "mainline")
MODERN = ("linux-6.1", "linux-6.12", "mainline")

INIT, SIPI = enc.DM_INIT, enc.DM_STARTUP


def vm(profile: str, nr: int = 2, flavour: str = "vmx", enrol: bool = True, **kw) -> Machine:
    """A VM as the harness builds it: vCPUs created, then KVM_SET_LAPIC so all are routable."""
    m = Machine(nr, profile, flavour, **kw)
    if enrol:
        assert m.set_lapic(0) == 0
    return m


def msi(m: Machine, dm: int, dest: int, vector: int = 0) -> int:
    return m.signal_msi(*enc.encode_msi(dm, vector, dest))


def ipi(m: Machine, sender: int, dm: int, dest: int = 0, vector: int = 0, **kw):
    """An xAPIC ICR write by the guest on ``sender``."""
    return m.icr_write(sender, enc.encode_icr(dm, vector, dest, **kw), False)


def process(m: Machine, vcpu: int) -> int:
    """Reach a processing point from outside KVM_RUN and report the state.

    Pending events: KVM_GET_MP_STATE (rule 24). Linux 3.9 has no pending events: the work is
    done by KVM_RUN (a SIPI_RECEIVED vCPU resets at entry), so run and kick the thread out."""
    if m.profile.sender_writes_mp_state and m.vcpus[vcpu].mp_state == MpState.SIPI_RECEIVED:
        m.enter_run(vcpu)
        m.kick_out(vcpu)
    return m.get_mp_state(vcpu)


def boot_ap(m: Machine, vcpu: int = 1, vector: int = 0x10) -> None:
    """INIT, SIPI, then KVM_RUN until the AP runs guest code; the guest runs; kick it out."""
    assert msi(m, INIT, vcpu) == 1
    if not m.profile.sender_writes_mp_state:
        m.get_mp_state(vcpu)
    assert msi(m, SIPI, vcpu, vector) == 1
    for _ in range(3):
        if m.enter_run(vcpu) == "runs":
            break
    else:
        raise AssertionError(f"AP does not run: {m.vcpus[vcpu]!r}")
    m.guest_runs(vcpu)
    m.kick_out(vcpu)
    assert m.vcpus[vcpu].mp_state == MpState.RUNNABLE


def run_guest(m: Machine, vcpu: int) -> None:
    """KVM_RUN on a RUNNABLE vCPU; the guest runs code."""
    assert m.enter_run(vcpu) == "runs"
    m.guest_runs(vcpu)


def pending(m: Machine, vcpu: int = 1) -> str:
    v = m.vcpus[vcpu]
    return (
        "+".join(n for n, on in (("INIT", v.pending_init), ("SIPI", v.pending_sipi)) if on) or "-"
    )


def phase(m: Machine, vcpu: int = 1) -> str:
    return Phase(m.vcpus[vcpu].phase).name
