"""Hypothesis property tests: invariants over random operation sequences.

Under ``linux-3.10`` and later: the BSP never ends in INIT_RECEIVED (userspace's own
SET_MP_STATE(IR/SR) on the BSP excluded), a SIPI never cancels a pending INIT, and
SIPI_RECEIVED is never reported. Under ``linux-3.9`` the first and last can be violated, and
Hypothesis finds sequences that do.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from reference import Machine, ModelError, MpState
from reference import encodings as enc
from reference.profiles import VALID_NMI_PENDING, VALID_SIPI_VECTOR, VALID_SMM

from .util import PATCHED

NR = 3
vcpu = st.integers(0, NR - 1)
dest = st.sampled_from([0, 1, 2, 0xFF])
vector = st.integers(0, 0xFF)
dm = st.sampled_from([enc.DM_INIT, enc.DM_STARTUP, enc.DM_NMI, enc.DM_FIXED])

OPS = st.one_of(
    st.tuples(st.just("msi"), dm, dest, vector),
    st.tuples(st.just("init_sipi"), dest, vector),  # the bring-up pair, back to back
    st.tuples(
        st.just("ipi"),
        vcpu,
        dm,
        dest,
        vector,
        st.sampled_from([0, 1, 2, 3]),  # shorthand
        st.booleans(),  # level
        st.booleans(),  # trigger
    ),
    st.tuples(st.just("get_mp_state"), vcpu),
    st.tuples(st.just("set_mp_state"), vcpu, st.sampled_from([0, 1, 2, 3, 4, 9])),
    st.tuples(st.just("enter_run"), vcpu),
    st.tuples(st.just("kick_out"), vcpu),
    st.tuples(st.just("guest_runs"), vcpu),
    st.tuples(st.just("guest_hlt"), vcpu),
    st.tuples(st.just("settle")),
    st.tuples(st.just("set_lapic"), vcpu),
    st.tuples(st.just("nmi"), vcpu),
    st.tuples(st.just("smi"), vcpu),
    st.tuples(st.just("rsm"), vcpu),
    st.tuples(
        st.just("set_vcpu_events"),
        vcpu,
        st.sampled_from([0, VALID_SIPI_VECTOR, VALID_SMM, VALID_NMI_PENDING | VALID_SMM]),
        vector,
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("get_regs"), vcpu),
    st.tuples(st.just("get_sregs"), vcpu),
    st.tuples(st.just("get_vcpu_events"), vcpu),
)
PROGRAMS = st.lists(OPS, max_size=40)


class Violation(Exception):
    pass


def apply(m: Machine, op: tuple, reported: list) -> None:
    """Apply one generated operation if the vCPU's thread can do it now, else skip it."""
    name, *args = op
    if name == "msi":
        d, v, vec = args
        m.signal_msi(*enc.encode_msi(d, vec, v))
        return
    if name == "init_sipi":
        d, vec = args
        m.signal_msi(*enc.encode_msi(enc.DM_INIT, 0, d))
        before = [v.pending_init for v in m.vcpus]
        m.signal_msi(*enc.encode_msi(enc.DM_STARTUP, vec, d))
        for v, had in zip(m.vcpus, before, strict=True):
            if had and not v.pending_init:
                raise Violation(f"SIPI cancelled the pending INIT of vCPU {v.index}")
        return
    if name == "ipi":
        sender, d, dst, vec, sh, level, trig = args
        icr = enc.encode_icr(d, vec, dst, level=level, trig_level=trig, shorthand=sh)
        m.icr_write(sender, icr, False)
        return
    if name == "settle":
        m.settle()
        return
    if name == "kick_out":
        m.kick_out(*args)
        return
    if name == "set_mp_state" and m.is_bsp(args[0]) and args[1] in (2, 4):
        return  # userspace parking the BSP is not the kernel's doing
    if name == "set_vcpu_events":
        v, flags, vec, smm, latched = args
        if not m.can_apply(m.atomic_steps(name, v)[0]):
            return
        m.set_vcpu_events(v, flags=flags, sipi_vector=vec, smm=smm, latched_init=latched)
        return
    steps = m.atomic_steps(name, *args)
    if not m.can_apply(steps[0]):
        return
    if name == "rsm" and not m.vcpus[args[0]].smm:
        return
    for step in steps:
        result = m.apply(step)
    if name == "get_mp_state":
        reported.append(result)


def check_invariants(m: Machine, before_pending_init: list[bool], op: tuple, reported: list):
    for v in m.vcpus:
        if m.is_bsp(v.index) and v.mp_state == MpState.INIT_RECEIVED:
            raise Violation(f"BSP in INIT_RECEIVED after {op}")
    delivery_mode = {"msi": 1, "ipi": 2}.get(op[0])
    if delivery_mode and op[delivery_mode] == enc.DM_STARTUP:
        for v, had in zip(m.vcpus, before_pending_init, strict=True):
            if had and not v.pending_init:
                raise Violation(f"SIPI cancelled the pending INIT of vCPU {v.index}")
    if MpState.SIPI_RECEIVED in reported:
        raise Violation("GET_MP_STATE reported SIPI_RECEIVED")


def run_program(profile: str, program: list) -> Machine:
    m = Machine(NR, profile)
    m.set_lapic(0)
    reported: list = []
    for op in program:
        before = [v.pending_init for v in m.vcpus]
        apply(m, op, reported)
        check_invariants(m, before, op, reported)
    m.settle()
    check_invariants(m, [False] * NR, ("settle",), reported)
    return m


@pytest.mark.parametrize("profile", PATCHED)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=PROGRAMS)
def test_invariants_hold_after_the_patch(profile, program):
    m = run_program(profile, program)
    assert m.pending_steps() == []  # settle reached quiescence


def _violates(program) -> bool:
    try:
        run_program("linux-3.9", program)
    except Violation:
        return True
    return False


def _find(predicate):
    return find(
        PROGRAMS,
        predicate,
        settings=settings(max_examples=3000, database=None, derandomize=True, deadline=None),
    )


def test_linux_3_9_bsp_can_end_in_init_received():
    def bsp_ir(program):
        try:
            run_program("linux-3.9", program)
        except Violation as e:
            return "BSP" in str(e)
        return False

    program = _find(bsp_ir)
    with pytest.raises(Violation, match="BSP"):
        run_program("linux-3.9", program)


def test_linux_3_9_reports_sipi_received():
    def reported_sr(program):
        try:
            run_program("linux-3.9", program)
        except Violation as e:
            return "SIPI_RECEIVED" in str(e)
        return False

    program = _find(reported_sr)
    with pytest.raises(Violation, match="SIPI_RECEIVED"):
        run_program("linux-3.9", program)


@pytest.mark.parametrize("profile", ["linux-3.9", "mainline"])
@settings(max_examples=100, deadline=None)
@given(program=PROGRAMS, extra=PROGRAMS)
def test_clone_is_independent_and_keys_are_deterministic(profile, program, extra):
    m = run_program_unchecked(profile, program)
    key = m.key()
    c = m.clone()
    assert c.key() == key
    for op in extra:
        apply(c, op, [])
    assert m.key() == key  # the original did not move
    again = run_program_unchecked(profile, program)
    assert again.key() == key
    hash(key)


@pytest.mark.parametrize("profile", ["linux-3.9", "linux-3.10", "mainline"])
@settings(max_examples=100, deadline=None)
@given(program=PROGRAMS, v=vcpu)
def test_register_and_event_reads_have_no_side_effects(profile, program, v):
    """d.7.4: GET_REGS, GET_SREGS and GET_VCPU_EVENTS never change the machine."""
    m = run_program_unchecked(profile, program)
    m.kick_out(v)
    key = m.key()
    m.get_regs(v)
    m.get_sregs(v)
    m.get_vcpu_events(v)
    assert m.key() == key


def run_program_unchecked(profile: str, program: list) -> Machine:
    m = Machine(NR, profile)
    m.set_lapic(0)
    for op in program:
        apply(m, op, [])
    return m


def test_ioctl_while_in_run_is_refused():
    m = Machine(2, "mainline")
    m.enter_run(0)
    with pytest.raises(ModelError, match="kick_out"):
        m.get_mp_state(0)
    m.kick_out(0)
    assert m.get_mp_state(0) == MpState.RUNNABLE


@settings(max_examples=300)
@given(
    d=dm,
    vec=vector,
    dst=st.integers(0, 0xFFFFFFFF),
    x2=st.booleans(),
    logical=st.booleans(),
    level=st.booleans(),
    trig=st.booleans(),
    sh=st.integers(0, 3),
)
def test_icr_round_trip(d, vec, dst, x2, logical, level, trig, sh):
    icr = enc.encode_icr(
        d, vec, dst, x2apic=x2, logical=logical, level=level, trig_level=trig, shorthand=sh
    )
    irq = enc.decode_icr(icr, x2)
    expected_dest = dst if x2 else dst & 0xFF
    assert irq == enc.Irq(vec, d, logical, level, trig, sh, expected_dest)
    assert not enc.x2apic_icr_reserved(icr)


@settings(max_examples=300)
@given(
    d=dm, vec=vector, dst=st.integers(0, 0xFF), logical=st.booleans(), data_bits=st.integers(0, 3)
)
def test_msi_round_trip_and_forced_level(d, vec, dst, logical, data_bits):
    lo, hi, data = enc.encode_msi(d, vec, dst, logical=logical)
    irq = enc.decode_msi(lo, hi, data | (data_bits << 14), x2apic_format=False)
    assert (irq.vector, irq.delivery_mode, irq.dest_id, irq.logical) == (vec, d, dst, logical)
    assert irq.level  # rule 38: forced to 1 whatever bit 14 says
    assert irq.trig_level == bool(data_bits & 2)


@pytest.mark.parametrize("profile", ["linux-3.9", "linux-3.10", "mainline"])
@settings(max_examples=100, deadline=None)
@given(program=PROGRAMS)
def test_settle_order_does_not_matter(profile, program):
    """Reactions of different vCPUs commute, so settle()'s lowest-vCPU-first order is no
    choice: running them highest-first reaches the same state."""
    m = run_program_unchecked(profile, program)
    forward = m.clone()
    forward.settle()
    backward = m.clone()
    for _ in range(1000):
        steps = backward.pending_steps()
        if not steps:
            break
        backward.step(*steps[-1])
    assert backward.pending_steps() == []
    assert backward.key() == forward.key()
