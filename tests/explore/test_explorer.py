"""The interleaving explorer finds the pre-patch lost INIT and proves its absence after."""

import dataclasses
import subprocess
import sys

import pytest

from kvmtest import ops as f
from kvmtest.sim.explore import ExploreError, Explorer, programs
from kvmtest.suite import corpus_dir
from kvmtest.trace.load import load_trace, parse_trace

RACE = f"{corpus_dir()}/race-hlt-init-sipi.yaml"


def test_pre_patch_profile_loses_the_init_as_in_section_e():
    result = Explorer(load_trace(RACE), "linux-3.9").run()
    assert result.violations, result.outcomes
    labels = [move.label for move in result.shortest_violation]
    # The race: HLT's VM exit, then the INIT written by the sender, then kvm_emulate_halt.
    hlt = labels.index("vcpu1 guest HLT: VM exit, handle_halt")
    init = labels.index("vcpu0 guest writes ICR: INIT -> APIC 1")
    halt = labels.index("vcpu1 kvm_emulate_halt writes mp_state")
    assert hlt < init < halt
    (lost,) = result.violations
    assert "HALTED" in lost
    good = [label for label in result.outcomes if label not in result.violations]
    assert good and all("sipi 0x20" in label for label in good)


@pytest.mark.parametrize("profile", ["linux-3.10", "linux-6.1", "linux-6.12", "mainline"])
def test_patched_profiles_never_lose_the_init(profile):
    result = Explorer(load_trace(RACE), profile).run()
    assert not result.violations and not result.shortest_violation
    assert result.interleavings and result.interleavings > 1000
    assert list(result.outcomes) == ["vcpu1 reported sipi 0x20; vcpu1 mp_state=RUNNABLE"]


def test_interleavings_are_counted_exactly_for_two_independent_threads():
    """Two MSIs on the host thread and three ioctls on vCPU 1's thread: C(5,2) = 10 orders."""
    text = """\
name: count
setup: {vcpus: 2}
steps:
  - concurrently:
      - thread: host
        steps:
          - msi: {dest: 1, delivery: nmi}
          - msi: {dest: 1, delivery: nmi}
      - thread: 1
        steps:
          - get_mp_state: 1
          - get_mp_state: 1
          - get_mp_state: 1
  - observe: {vcpu: 1, read: [mp_state]}
"""
    result = Explorer(parse_trace(text, "count.yaml"), "mainline").run()
    assert result.interleavings == 10
    assert result.outcomes == {"vcpu1 mp_state=UNINITIALIZED": 10}


def test_unsupported_step_in_a_block_is_a_clear_error():
    text = """\
name: bad
setup: {vcpus: 2}
steps:
  - concurrently:
      - thread: host
        steps: [{get_mp_state: 0}]
      - thread: 1
        steps: [{get_mp_state: 1}]
"""
    # The loader refuses such a block (tests/trace); a Trace built in code still gets this.
    trace = parse_trace(text, "bad.yaml")
    block = trace.steps[0]
    host = dataclasses.replace(block.branches[0], steps=(f.SetLapic(1, line=6),))
    block = dataclasses.replace(block, branches=(host, block.branches[1]))
    trace = dataclasses.replace(trace, steps=(block,))
    with pytest.raises(ExploreError, match="set_lapic steps inside a concurrent block"):
        Explorer(trace, "mainline").run()


def test_program_moves_split_hlt_into_exit_and_emulate():
    trace = load_trace(RACE)
    block = next(s for s in trace.steps if s.kind == "concurrently")
    (_, ap), (_, bsp) = programs(block, trace.setup)
    assert [m.op for m in ap] == [
        "run_entry",
        "guest_runs",
        "hlt_exit",
        "emulate_halt",
        "wait_report",
    ]
    assert [m.op for m in bsp].count("icr_write") == 3


def test_cli_exit_codes():
    run = [sys.executable, "-m", "kvmtest", "explore", RACE]
    old = subprocess.run([*run, "--profile", "linux-3.9"], capture_output=True, text=True)
    assert old.returncode == 1 and "shortest violating schedule" in old.stdout
    new = subprocess.run(run, capture_output=True, text=True)
    assert new.returncode == 0 and "no violation of init-never-lost" in new.stdout
    bad = subprocess.run([*run, "--profile", "linux-0.1"], capture_output=True, text=True)
    assert bad.returncode == 2


RACES = [
    "race-hlt-init-sipi",
    "race-hlt-msi-init-sipi",
    "race-init-vs-first-kvm-run",
    "race-sipi-before-init-processed",
    "race-two-senders-one-ap",
]


@pytest.mark.parametrize("name", RACES)
@pytest.mark.parametrize("profile", ["linux-3.10", "mainline"])
def test_no_race_trace_loses_an_init_after_the_patch(name, profile):
    result = Explorer(load_trace(f"{corpus_dir()}/{name}.yaml"), profile).run()
    assert not result.violations, result.violations
    assert result.interleavings and all(result.outcomes.values())


@pytest.mark.parametrize("name", ["race-hlt-init-sipi", "race-hlt-msi-init-sipi"])
def test_hlt_races_lose_the_init_before_the_patch(name):
    result = Explorer(load_trace(f"{corpus_dir()}/{name}.yaml"), "linux-3.9").run()
    assert any("HALTED" in label for label in result.violations)


def test_a_report_nobody_can_predict_matches_whatever_that_vcpu_reports():
    """An AP that took an NMI at its never-run reset vector strays (the IRET reloads CS base
    0xf0000): the model reports GUEST for it, which any report of that vCPU matches, and
    nothing else (seed 12, trace 3042)."""
    from kvmtest.sim.explore import Outcome
    from reference import GUEST

    outcome = Outcome(frozenset({(1, GUEST), (2, "sipi 0x10")}), ())
    stray = "error: vCPU 1: stray execution at 0xffff0"
    assert outcome.matches(frozenset({(1, stray), (2, "sipi 0x10")}), {})
    assert outcome.matches(frozenset({(2, "sipi 0x10")}), {})  # or nothing, for all we know
    assert not outcome.matches(frozenset({(1, stray)}), {})  # the known report is missing
    assert not outcome.matches(frozenset({(2, "sipi 0x10"), (0, "reset")}), {})  # not vcpu 1
    assert "vcpu1 reported what its guest code says" in outcome.label()
