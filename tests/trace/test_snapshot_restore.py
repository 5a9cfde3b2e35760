"""snapshot / restore steps and pinned outcome sets: loader, model and KVM."""

import pytest

import reference
from kvmtest import ops as f
from kvmtest.trace import dump_trace, parse_trace
from kvmtest.trace.engine import HostContext, run_trace
from kvmtest.trace.errors import TraceError
from kvmtest.trace.result import Status

MIGRATE_IR = """\
name: t
setup: {vcpus: 2}
steps:
  - msi: {dest: 1, delivery: init}
  - snapshot: {}
  - restore: {order: [lapic, mp_state, regs, sregs, events, msrs]}
  - observe: {vcpus: [0, 1], read: [mp_state, regs, sregs, events, lapic, msrs]}
  - msi: {dest: 1, delivery: sipi, vector: 0x20}
  - observe: 1
"""

OLD_SOURCE = """\
name: t
setup: {vcpus: 2}
steps:
  - msi: {dest: 1, delivery: init}
  - snapshot: {}
  - restore: {mp_state: {1: SIPI_RECEIVED}}
  - observe: {vcpu: 1, expect: {mp_state: RUNNABLE, cs.selector: 0, rip: 0}}
"""


@pytest.fixture
def host(kvm):
    from kvmtest.host import FLAVOURS, detect_backend

    flavour = FLAVOURS.get(detect_backend(), "vmx")
    return HostContext("kvm", flavour=flavour, cpuid=kvm.get_supported_cpuid(), kvm=kvm)


def test_loader_reads_snapshot_and_restore():
    trace = parse_trace(OLD_SOURCE, "t.yaml")
    snap, restore = trace.steps[1], trace.steps[2]
    assert isinstance(snap, f.Snapshot) and isinstance(restore, f.Restore)
    assert restore.order == f.RESTORE_SETS
    assert restore.mp_state == ((1, 4),)
    assert parse_trace(dump_trace(trace), "t.yaml") == trace


@pytest.mark.parametrize(
    "steps, error",
    [
        ("  - restore: {}\n", "restore before any snapshot"),
        ("  - snapshot: {}\n  - restore: {order: [mp_state, cpuid]}\n", "unknown 'cpuid'"),
        ("  - snapshot: {}\n  - restore: {order: [regs, regs]}\n", "named twice"),
        ("  - snapshot: {}\n  - restore: {order: []}\n", "restores nothing"),
        ("  - snapshot: {}\n  - restore: {order: [regs], mp_state: {1: HALTED}}\n", "without"),
        ("  - snapshot: {}\n  - restore: {mp_state: {5: HALTED}}\n", "restore.mp_state"),
        ("  - snapshot: 1\n", "takes no arguments"),
    ],
)
def test_loader_refuses_bad_restores_with_a_line(steps, error):
    with pytest.raises(TraceError) as exc:
        parse_trace("name: t\nsetup: {vcpus: 2}\nsteps:\n" + steps, "t.yaml")
    assert error in str(exc.value) and "t.yaml:" in str(exc.value)


def test_restore_needs_a_guestless_vm():
    text = "name: t\nsetup: {guest: stepper}\nsteps:\n  - snapshot: {}\n"
    with pytest.raises(TraceError, match="needs setup.guest: none"):
        parse_trace(text, "t.yaml")


def test_model_restores_sipi_received_from_an_older_source():
    """Rule 25: SET_MP_STATE(SIPI_RECEIVED) is INIT_RECEIVED plus a pending SIPI, and the
    restored events' sipi_vector (GET reads 0, rule 30) is where it lands."""
    result = run_trace(parse_trace(OLD_SOURCE, "t.yaml"), "mainline", HostContext("reference"))
    assert result.status is Status.PASS, [m.describe() for m in result.mismatches]
    assert result.pins_checked == 3


def test_restore_order_matters_on_the_model():
    """Rule 42: SET_SREGS with the reset CS:RIP unhalts the BSP, so MP_STATE last keeps HALTED."""
    from kvmtest.sim.schedule import Sequential
    from kvmtest.sim.system import System

    def halted_after(order):
        system = System(f.Setup(), "mainline", "vmx", None, False)
        replay = Sequential(system)
        replay.perform(f.SetMpState(0, 3))
        replay.perform(f.Snapshot())
        replay.perform(f.Restore(order))
        return replay.perform(f.GetMpState(0))[(0, "mp_state")]

    assert halted_after(f.RESTORE_SETS) == 0  # RUNNABLE: SET_SREGS after SET_MP_STATE
    assert halted_after(f.RESTORE_SETS[1:] + ("mp_state",)) == 3  # HALTED


@pytest.mark.parametrize("text", [MIGRATE_IR, OLD_SOURCE])
def test_kvm_agrees_with_the_model_across_a_restore(host, text):
    result = run_trace(parse_trace(text, "t.yaml"), "mainline", host)
    assert result.status is Status.PASS, [m.describe() for m in result.mismatches]
    assert result.compared > 50


def _race(labels: list[str]) -> f.Trace:
    block = f.Concurrently(
        (
            f.Branch("host", (f.Msi(0xFEE01000, 0, 0x500),)),
            f.Branch("vcpu1", (f.GetMpState(1),)),
        )
    )
    steps = (block, f.Observe((1,), ("mp_state",)))
    return f.Trace("t", f.Setup(), steps, outcomes=(("mainline", tuple(labels)),))


def _explored(trace) -> set:
    from kvmtest.sim.explore import Explorer

    return set(Explorer(trace, "mainline", "vmx", False).run().outcomes)


def test_pinned_outcomes_equal_to_the_explored_set_pass_in_reference_mode():
    labels = sorted(_explored(_race(["x"])))
    result = run_trace(_race(labels), "mainline", HostContext("reference"))
    assert result.status is Status.PASS and result.pins_checked >= 1


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_a_model_that_allows_too_much_or_too_little_fails(change):
    labels = sorted(_explored(_race(["x"])))
    pinned = labels + ["vcpu1 mp_state=HALTED"] if change == "extra" else labels[1:]
    if not pinned:
        pinned = ["vcpu1 mp_state=HALTED"]
    result = run_trace(_race(pinned), "mainline", HostContext("reference"))
    assert result.status is Status.FAIL
    assert all(m.field == "outcome (model vs pin)" for m in result.mismatches)


def test_outcome_pins_need_a_block_and_known_profiles():
    base = "name: t\nsetup: {vcpus: 2}\noutcomes: %s\nsteps:\n  - get_mp_state: 1\n"
    with pytest.raises(TraceError, match="has none"):
        parse_trace(base % "{mainline: [a]}", "t.yaml")
    block = (
        "concurrently: [{thread: host, steps: [get_mp_state: 1]}, "
        "{thread: 1, steps: [get_mp_state: 1]}]"
    )
    with pytest.raises(TraceError, match="unknown profile"):
        parse_trace((base % "{linux-9.9: [a]}").replace("get_mp_state: 1", block), "t.yaml")


def test_every_race_in_the_corpus_pins_its_outcomes_for_every_profile():
    from kvmtest.suite import load_traces

    traces, _ = load_traces([])
    for trace in traces:
        # kvm_pvm's exit races (d.7.15, d.7.16): the outcomes depend on the vendor module,
        # which a pin cannot name.
        if any(s.kind == "concurrently" for s in trace.steps) and "exit-race" not in trace.tags:
            pinned = {p for p, _ in trace.outcomes}
            assert pinned == {p for p in reference.PROFILES if trace.applies_to(p)}, trace.name
