"""The seven real-host observations of section d.8 (Linux 6.18, kvm_pvm), reproduced by the
``mainline`` profile with the ``pvm`` flavour, and the ones docs/host-findings.md says Linux 3.9
would have contradicted.

Setting of d.8: in-kernel irqchip, 2 vCPUs, INIT/SIPI by KVM_SIGNAL_MSI after KVM_SET_LAPIC on
each vCPU (observation 6 is about what happens before that).
"""

from __future__ import annotations

import pytest

from reference import GUEST, Machine, MpState

from .util import INIT, SIPI, msi

R, U, IR = MpState.RUNNABLE, MpState.UNINITIALIZED, MpState.INIT_RECEIVED


def host_vm(profile: str = "mainline") -> Machine:
    m = Machine(2, profile, "pvm")
    for i in range(2):
        assert m.set_lapic(i) == 0
    return m


def cs_rip(m: Machine, vcpu: int):
    cs = m.get_sregs(vcpu)["cs"]
    return cs["selector"], cs["base"], cs["limit"], m.get_regs(vcpu)["rip"]


def obs1(profile):
    return Machine(2, profile, "pvm").get_mp_state(1)


def obs2(profile):
    m = host_vm(profile)
    assert msi(m, INIT, 1) == 1
    return m.get_mp_state(1), cs_rip(m, 1)


def obs3(profile):
    m = host_vm(profile)
    msi(m, INIT, 1)
    m.get_mp_state(1)
    assert msi(m, SIPI, 1, 0x10) == 1
    return m.get_mp_state(1), cs_rip(m, 1)


def obs4(profile):
    m = host_vm(profile)
    msi(m, INIT, 1)
    m.get_mp_state(1)
    msi(m, SIPI, 1, 0x10)
    m.get_mp_state(1)
    msi(m, SIPI, 1, 0x20)  # while RUNNABLE: ignored
    ignored = m.get_mp_state(1), cs_rip(m, 1)
    msi(m, INIT, 1)
    m.get_mp_state(1)
    assert m.set_mp_state(1, MpState.SIPI_RECEIVED) == 0
    state = m.get_mp_state(1)
    if m.profile.sender_writes_mp_state:  # V1 resets from SIPI_RECEIVED when KVM_RUN is entered
        m.enter_run(1)
        m.kick_out(1)
        state = m.get_mp_state(1)
    return ignored, state, cs_rip(m, 1)


def obs5(profile):
    m = host_vm(profile)
    msi(m, INIT, 0)
    return m.get_mp_state(0), cs_rip(m, 0)


def obs6(profile):
    m = Machine(2, profile, "pvm")
    before = msi(m, INIT, 1)
    m.set_lapic(1)
    return before, msi(m, INIT, 1)


def obs7(profile):
    """Each stray SIPI releases the halted AP once; the guest resumes after its HLT (its CS
    and RIP are its own, not the SIPI vector)."""
    m = host_vm(profile)
    msi(m, INIT, 1)
    m.get_mp_state(1)
    msi(m, SIPI, 1, 0x10)
    m.get_mp_state(1)
    assert m.enter_run(1) == "runs"
    m.guest_runs(1)
    wakes = []
    for vector in (0x30, 0x40):
        m.guest_hlt(1)  # the guest halts (cli; hlt)
        msi(m, SIPI, 1, vector)
        m.settle()
        wakes.append((m.vcpus[1].mp_state, m.run_status(1)))
        if m.run_status(1) != "runs":
            break
    cs = m.vcpus[1].regs["cs"]
    return wakes, cs.selector, m.vcpus[1].regs["rip"]


RESET_VECTOR = (0xF000, 0xFFFF0000, 0xFFFF, 0xFFF0)

OBSERVATIONS = [
    ("d.8.1", obs1, U),
    ("d.8.2", obs2, (IR, RESET_VECTOR)),
    ("d.8.3", obs3, (R, (0x1000, 0x10000, 0xFFFF, 0))),
    ("d.8.4", obs4, ((R, (0x1000, 0x10000, 0xFFFF, 0)), R, (0x2000, 0x20000, 0xFFFF, 0))),
    ("d.8.5", obs5, (R, RESET_VECTOR)),
    ("d.8.6", obs6, (0, 1)),
    ("d.8.7", obs7, ([(R, "runs"), (R, "runs")], GUEST, GUEST)),
]


@pytest.mark.parametrize("obs, expected", [pytest.param(f, e, id=n) for n, f, e in OBSERVATIONS])
def test_mainline_reproduces_host(obs, expected):
    assert obs("mainline") == expected


@pytest.mark.parametrize("number", ["d.8.2", "d.8.4", "d.8.5", "d.8.6", "d.8.7"])
def test_linux_3_9_would_differ(number):
    """docs/host-findings.md, d.8: V1 resets nothing at INIT (2), keeps the first SIPI's
    vector (4), parks the
    BSP in IR (5), fails the MSI with EPERM (6) and ignores a SIPI outside IR (7)."""
    [(obs, expected)] = [(f, e) for n, f, e in OBSERVATIONS if n == number]
    assert obs("linux-3.9") != expected


def test_linux_3_9_keeps_first_vector():
    ignored, state, regs = obs4("linux-3.9")
    assert (state, regs) == (R, (0x1000, 0x10000, 0xFFFF, 0))
