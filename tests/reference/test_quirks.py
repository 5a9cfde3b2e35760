"""The quirk list d.7.1-14, one row per quirk per profile it applies to."""

from __future__ import annotations

import pytest

from reference import GUEST, Machine, MpState
from reference.profiles import VALID_SMM

from .util import ALL_PROFILES, INIT, MODERN, PATCHED, SIPI, boot_ap, msi, pending, run_guest, vm

R, U, IR, H = (
    MpState.RUNNABLE,
    MpState.UNINITIALIZED,
    MpState.INIT_RECEIVED,
    MpState.HALTED,
)
V2 = ("linux-3.10",)


def q1_init_discards_sipi_not_reverse(p):
    a = vm(p)
    msi(a, SIPI, 1, 0x10)
    msi(a, INIT, 1)
    b = vm(p)
    msi(b, INIT, 1)
    msi(b, SIPI, 1, 0x10)
    return pending(a), pending(b)


def q2_ir_never_observable(p):
    m = vm(p)
    boot_ap(m)
    run_guest(m, 1)
    m.guest_hlt(1)
    msi(m, INIT, 1)
    msi(m, SIPI, 1, 0x20)  # both before the halted AP's thread wakes up
    seen = set()
    while m.pending_steps():
        m.step(*m.pending_steps()[0])
        seen.add(m.vcpus[1].mp_state)
    return IR in seen, m.vcpus[1].mp_state, m.vcpus[1].regs["cs"].selector


def q3_dropped_sipi_vector_reused(p):
    m = vm(p)
    boot_ap(m, 1, 0x10)
    msi(m, SIPI, 1, 0x20)
    dropped = m.get_mp_state(1), m.get_sregs(1)["cs"]["selector"]
    msi(m, INIT, 1)
    m.get_mp_state(1)
    m.set_mp_state(1, 4)
    m.get_mp_state(1)
    return dropped, m.get_sregs(1)["cs"]["selector"]


def q4_which_reads_have_side_effects(p):
    m = vm(p)
    boot_ap(m)
    msi(m, INIT, 1)
    unchanged = []
    for read in (m.get_regs, m.get_sregs, m.get_vcpu_events):
        before = m.key()
        read(1)
        unchanged.append(m.key() == before)
    before = m.key()
    m.get_mp_state(1)
    return unchanged, m.key() == before


def q5_set_ir_no_reset(p):
    m = vm(p)
    boot_ap(m)
    m.set_mp_state(1, 2)
    return m.get_mp_state(1), m.get_regs(1)["rip"], m.get_sregs(1)["cs"]["base"]


def q6_eagain_after_runnable(p):
    m = vm(p)
    assert m.enter_run(1) == "blocked"
    msi(m, INIT, 1)
    msi(m, SIPI, 1, 0x10)
    m.settle()
    return m.vcpus[1].mp_state, m.run_status(1)


def q7_stray_sipi_wakes(p):
    m = vm(p)
    boot_ap(m, 1, 0x10)
    run_guest(m, 1)
    m.guest_hlt(1)
    msi(m, SIPI, 1, 0x30)
    m.settle()
    return m.vcpus[1].mp_state, m.run_status(1), m.vcpus[1].regs["cs"].selector


def q8_init_to_bsp(p):
    m = vm(p)
    run_guest(m, 0)
    m.kick_out(0)
    msi(m, INIT, 0)
    state = m.get_mp_state(0)
    cs = m.get_sregs(0)["cs"]
    return state, m.get_regs(0)["rip"], cs["selector"], cs["base"]


def q9_init_keeps_apic_id_and_base(p):
    m = vm(p)
    m.set_lapic(1, apic_id=5)
    msi(m, INIT, 5)
    m.get_mp_state(1)
    x = vm(p)
    x.enable_x2apic(1)
    msi(x, INIT, 1)
    x.get_mp_state(1)
    return m.vcpus[1].xapic_id, x.get_sregs(1)["apic_base"]


def q10_cr0_cd_nw(p):
    out = []
    for cr0 in (0x11, 0x60000011):
        m = vm(p)
        m.set_sregs(1, cr0=cr0)
        msi(m, INIT, 1)
        m.get_mp_state(1)
        out.append(m.get_sregs(1)["cr0"])
    return tuple(out)


def q11_rdx(p, flavour="vmx"):
    with_cpuid = vm(p, flavour=flavour, cpuid_1_eax=0x906A3)
    without = vm(p, flavour=flavour)
    for m in (with_cpuid, without):
        msi(m, INIT, 1)
        m.get_mp_state(1)
    return with_cpuid.get_regs(1)["rdx"], without.get_regs(1)["rdx"]


def q11_rdx_svm(p):
    return q11_rdx(p, "svm")


def q12_newest_absent(p):
    m = Machine(2, p)
    before = msi(m, INIT, 1)
    m.set_lapic(1)
    return before, msi(m, INIT, 1)


def q13_flavour_types(p):
    out = {}
    for flavour in ("vmx", "svm", "pvm"):
        m = vm(p, flavour=flavour)
        s = m.get_sregs(0)
        out[flavour] = (s["cs"]["type"], s["ss"]["type"], s["tr"]["type"])
    return out


def q14_latched_init(p):
    m = vm(p)
    msi(m, INIT, 1)
    latched = m.get_vcpu_events(1)["smi"]["latched_init"]
    m.set_vcpu_events(1, flags=VALID_SMM, latched_init=0)
    cancelled = m.get_mp_state(1), m.get_vcpu_events(1)["smi"]["latched_init"]
    m.set_vcpu_events(1, flags=VALID_SMM, latched_init=1)
    return latched, cancelled, m.get_mp_state(1)


TYPES = {"vmx": (0xB, 3, 0xB), "svm": (0xA, 2, 3), "pvm": (0xB, 3, 0xB)}

ROWS = [
    ("1", q1_init_discards_sipi_not_reverse, PATCHED, ("INIT", "INIT+SIPI")),
    ("2", q2_ir_never_observable, PATCHED, (False, R, 0x2000)),
    ("3", q3_dropped_sipi_vector_reused, PATCHED, ((R, GUEST), 0x2000)),
    ("4", q4_which_reads_have_side_effects, PATCHED, ([True, True, True], False)),
    ("5", q5_set_ir_no_reset, PATCHED, (IR, GUEST, GUEST)),
    ("6", q6_eagain_after_runnable, PATCHED, (R, "-EAGAIN")),
    ("7", q7_stray_sipi_wakes, PATCHED, (R, "runs", GUEST)),
    ("8", q8_init_to_bsp, V2, (R, 0xFFF0, 0xF000, 0)),  # c.3: VMX CS base 0 at 66450a21
    ("8", q8_init_to_bsp, MODERN, (R, 0xFFF0, 0xF000, 0xFFFF0000)),
    ("9", q9_init_keeps_apic_id_and_base, V2, (1, 0xFEE00800)),
    ("9", q9_init_keeps_apic_id_and_base, MODERN, (5, 0xFEE00C00)),
    ("10", q10_cr0_cd_nw, V2, (0x60000010, 0x60000010)),
    ("10", q10_cr0_cd_nw, MODERN, (0x10, 0x60000010)),
    ("11", q11_rdx, V2, (0x600, 0x600)),
    ("11", q11_rdx, MODERN, (0x906A3, 0x600)),
    ("11", q11_rdx_svm, V2, (0x906A3, 0)),  # c.3: kvm_cpuid without a table (UNVERIFIED)
    ("11", q11_rdx_svm, MODERN, (0x906A3, 0x600)),
    ("12", q12_newest_absent, ("linux-3.9", "linux-3.10"), (-1, 1)),
    ("12", q12_newest_absent, MODERN, (0, 1)),
    ("13", q13_flavour_types, ALL_PROFILES, TYPES),
    ("14", q14_latched_init, MODERN, (1, (U, 0), IR)),
]


def _expand(rows):
    for quirk, scenario, profiles, expected in rows:
        for p in profiles:
            yield pytest.param(scenario, p, expected, id=f"d.7.{quirk}-{p}-{scenario.__name__}")


@pytest.mark.parametrize("scenario, profile, expected", list(_expand(ROWS)))
def test_quirk(scenario, profile, expected):
    assert scenario(profile) == expected


def test_every_quirk_has_a_row():
    assert {int(r[0]) for r in ROWS} == set(range(1, 15))


def test_sipi_fixup_on_a_guest_segment_keeps_unknown_fields():
    """Rule 13 on a segment the guest owned: selector and base become known, the rest stays."""
    m = vm("mainline")
    boot_ap(m)
    m.set_mp_state(1, 2)
    msi(m, SIPI, 1, 0x10)
    m.get_mp_state(1)
    cs = m.get_sregs(1)["cs"]
    assert (cs["selector"], cs["base"], cs["limit"], cs["type"]) == (0x1000, 0x10000, GUEST, GUEST)


@pytest.mark.parametrize("flavour", ["vmx", "svm", "pvm"])
def test_d7_15_a_self_sent_init_waits_for_the_exit_only_on_kvm_pvm(flavour):
    """d.7.15: VMX and SVM process an INIT the running BSP sent itself before it runs on;
    kvm_pvm keeps it pending until the thread has left KVM_RUN, and the next processing
    point (GET_MP_STATE here) takes it."""
    from reference import Machine, MpState

    m = Machine(2, "mainline", flavour)
    for i in range(2):
        m.set_lapic(i)
    m.enter_run(0)
    m.guest_runs(0)
    assert m.icr_write(0, 0x4500, False) == 1  # INIT to APIC 0: itself
    reacts = (0, "guest_event") in m.pending_steps()
    assert reacts == (flavour != "pvm")
    assert ((0, "exit_event") in m.pending_steps()) == (flavour == "pvm")  # the rare order
    if reacts:
        m.step(0, "guest_event")  # before the guest runs on: reset at once
        assert not m.vcpus[0].pending_init and m.vcpus[0].regs["rip"] == 0xFFF0
        return
    m.kick_out(0)  # the stepper ran on to its report: an exit to userspace
    assert m.vcpus[0].pending_init
    assert m.get_mp_state(0) == MpState.RUNNABLE  # a processing point: the INIT is taken
    assert not m.vcpus[0].pending_init and m.get_regs(0)["rip"] == 0xFFF0


@pytest.mark.parametrize("flavour", ["vmx", "pvm"])
def test_d7_15_a_self_sent_sipi_waits_too_and_lands_after_set_mp_state(flavour):
    """d.7.15 for a SIPI: the running BSP's own SIPI is dropped at once on VMX (it was RUNNABLE,
    rule 12); on kvm_pvm it is still pending when the host sets INIT_RECEIVED, and the next
    processing point lands it (seed 8, trace 34359740516; an AP: seed 11, trace 2163)."""
    from reference import Machine, MpState

    m = Machine(2, "mainline", flavour)
    for i in range(2):
        m.set_lapic(i)
    m.enter_run(0)
    m.guest_runs(0)
    assert m.icr_write(0, 0x44610, False) == 1  # SIPI 0x10 to itself (shorthand self)
    if (0, "guest_event") in m.pending_steps():
        m.step(0, "guest_event")  # VMX: processed (dropped) before the guest runs on
    m.kick_out(0)
    m.set_mp_state(0, MpState.INIT_RECEIVED)
    landed = m.get_mp_state(0) == MpState.RUNNABLE
    assert landed == (flavour == "pvm")


@pytest.mark.parametrize("flavour", ["vmx", "pvm"])
def test_d7_15_a_self_sent_nmi_waits_too_and_makes_uninitialized_spin(flavour):
    """d.7.15 for an NMI: VMX injects the BSP's own NMI before the guest runs on; kvm_pvm keeps
    it pending past the exit, so after SET_MP_STATE(UNINITIALIZED) the next KVM_RUN spins on it
    (rule 18; seed 13, trace 5068; kvm_amd blocks, as the vmx model does)."""
    from reference import Machine, MpState

    m = Machine(2, "mainline", flavour)
    for i in range(2):
        m.set_lapic(i)
    m.enter_run(0)
    m.guest_runs(0)
    assert m.icr_write(0, 0x44400, False) == 1  # NMI to itself (shorthand self)
    if (0, "guest_event") in m.pending_steps():
        m.step(0, "guest_event")  # VMX: injected before the guest runs on
    m.kick_out(0)
    m.set_mp_state(0, MpState.UNINITIALIZED)
    m.enter_run(0)
    assert m.spins(0) == (flavour == "pvm")


@pytest.mark.parametrize("flavour", ["vmx", "svm", "pvm"])
def test_d7_16_a_second_queued_nmi_waits_for_the_next_exit_only_on_kvm_pvm(flavour):
    """d.7.16: two KVM_NMIs queued while the thread is out. VMX and SVM inject the second in
    the NMI window right after the first handler's IRET, so a HLT then blocks; kvm_pvm has no
    NMI window: the second waits for the next VM exit, which is the HLT, and the HLT does not
    block (seed 13, trace 8827). GET_VCPU_EVENTS shows a flag, never the count."""
    from reference import Machine, MpState, Phase

    m = Machine(1, "mainline", flavour)
    m.nmi(0)
    m.nmi(0)
    m.nmi(0)  # a third one is dropped: at most two pending
    assert m.vcpus[0].nmi_pending == 2
    assert m.get_vcpu_events(0)["nmi_pending"] == 1
    m.enter_run(0)
    assert m.vcpus[0].phase == Phase.GUEST
    assert m.vcpus[0].nmi_pending == (1 if flavour == "pvm" else 0)
    assert ((0, "exit_event") in m.pending_steps()) == (flavour == "pvm")  # the rare order
    m.guest_hlt(0)
    m.settle()
    blocked = m.vcpus[0].phase == Phase.BLOCKED
    assert blocked == (flavour != "pvm")
    assert m.vcpus[0].mp_state == (MpState.HALTED if blocked else MpState.RUNNABLE)
    assert m.vcpus[0].nmi_pending == 0


def test_d7_16_a_snapshot_keeps_one_of_two_queued_nmis():
    """SET_VCPU_EVENTS takes the flag GET_VCPU_EVENTS gave: two queued NMIs restore as one, so
    on kvm_pvm the HLT after a restore blocks."""
    from reference import Machine, Phase

    m = Machine(1, "mainline", "pvm")
    m.nmi(0)
    m.nmi(0)
    events = m.get_vcpu_events(0)
    assert m.set_vcpu_events(0, flags=events["flags"], nmi_pending=events["nmi_pending"]) == 0
    m.enter_run(0)
    assert m.vcpus[0].nmi_pending == 0
    m.guest_hlt(0)
    m.settle()
    assert m.vcpus[0].phase == Phase.BLOCKED


@pytest.mark.parametrize("nmi", [True, False])
def test_a_kick_finds_a_thread_looping_in_uninitialized_between_two_kvm_runs(nmi):
    """rule 18: with an NMI pending, an AP in UNINITIALIZED loops through KVM_RUN (-EAGAIN at
    once), mostly in userspace, so a host ioctl's kick stops it before its next KVM_RUN and a
    SIPI sent meanwhile is still pending: SET_MP_STATE(INIT_RECEIVED) then lands it (seed 25,
    trace 20553, on kvm_pvm and kvm_amd). A thread asleep in the UNINITIALIZED branch wakes
    for the kick and processes (drops) the SIPI first."""
    from reference import Machine, MpState, Phase

    m = Machine(2, "mainline", "vmx")
    for i in range(2):
        m.set_lapic(i)
    m.enter_run(1)
    if nmi:
        m.signal_msi(0xFEE01000, 0, 0x400)
        m.settle()
        assert m.spins(1)
    assert m.vcpus[1].phase == Phase.U_BLOCK
    m.signal_msi(0xFEE01000, 0, 0x610)  # SIPI 0x10, before the thread's next KVM_RUN
    m.kick_out(1)
    assert m.vcpus[1].pending_sipi == nmi
    m.set_mp_state(1, MpState.INIT_RECEIVED)
    m.enter_run(1)
    assert (m.vcpus[1].mp_state == MpState.RUNNABLE) == nmi
