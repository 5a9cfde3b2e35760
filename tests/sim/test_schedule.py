"""The sequential scheduler over the simulated system: its fixed order decides nothing that an
observer could see, and the system is one model for replay and exploration alike."""

import random

import pytest

import reference
from kvmtest.sim import schedule
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.system import System
from kvmtest.suite import corpus_dir, load_traces
from kvmtest.trace.load import load_trace

TRACES, _ = load_traces([])
SEQUENTIAL = [t for t in TRACES if not any(s.kind == "concurrently" for s in t.steps)]


class _Shuffled(Sequential):
    """Takes a random move among those of the most urgent kind, instead of the first."""

    def __init__(self, system, rng):
        super().__init__(system)
        self.rng = rng

    def settle(self):
        system = self.system
        out: dict = {}
        while moves := system.enabled():
            best = min(map(schedule._priority, moves))
            out.update(
                system.apply(self.rng.choice([m for m in moves if schedule._priority(m) == best]))
            )
        return self.collect(out)


def _predictions(trace, profile, replay_class, *args):
    system = System(trace.setup, profile, "pvm", None, True)
    replay = replay_class(system, *args)
    return [replay.perform(step) for step in trace.steps]


@pytest.mark.parametrize("profile", ["linux-3.9", "linux-3.10", "mainline"])
@pytest.mark.parametrize("trace", SEQUENTIAL, ids=[t.name for t in SEQUENTIAL])
def test_the_order_among_equally_urgent_moves_changes_no_prediction(trace, profile):
    try:
        fixed = _predictions(trace, profile, Sequential)
    except reference.ModelError:
        pytest.skip(f"{trace.name} is refused by the model under {profile}")
    for seed in range(3):
        assert _predictions(trace, profile, _Shuffled, random.Random(seed)) == fixed, seed


def test_a_stepper_command_is_the_same_moves_in_replay_and_in_exploration():
    """The BSP's INIT to the AP, performed sequentially, walks exactly the moves the explorer
    offers for it: the stepper is modelled once."""
    trace = load_trace(f"{corpus_dir()}/race-hlt-init-sipi.yaml")
    system = System(trace.setup, "mainline", "pvm", None, True)
    replay = Sequential(system)
    for step in trace.steps[:2]:  # start: 0, start: 1
        replay.perform(step)
    system.load(trace.steps[2])
    program = system.programs["vcpu0"][system.pcs["vcpu0"] :]
    assert [m.op for m in program] == ["run_entry", "guest_runs", "icr_write", "kick_out"]
    out = replay.settle()
    assert system.pcs["vcpu0"] == len(system.programs["vcpu0"])
    assert out[(0, "report")] == "icr"


def test_a_busy_vcpu_refuses_a_second_command():
    trace = load_trace(f"{corpus_dir()}/race-hlt-init-sipi.yaml")
    system = System(trace.setup, "mainline", "pvm", None, True)
    replay = Sequential(system)
    replay.perform(trace.steps[1])  # start: 1 -> the AP waits for a SIPI inside KVM_RUN
    with pytest.raises(reference.ModelError, match="vcpu1 is still busy with start"):
        replay.perform(trace.steps[1])
