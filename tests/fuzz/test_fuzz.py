"""The fuzzer's pieces: generated traces are valid and reproducible, the model keeps its own
invariants on them, the shrinker finds a minimum, and the command runs."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from kvmtest import ops as f
from kvmtest.cli.main import main
from kvmtest.fuzz.gen import random_trace
from kvmtest.fuzz.predict import predict
from kvmtest.fuzz.run import _model_invariants, flips
from kvmtest.fuzz.shrink import shrink, size, valid
from kvmtest.trace import HostContext, dump_trace, parse_trace

SEEDS = st.integers(0, 1 << 40)


@settings(max_examples=150, deadline=None)
@given(SEEDS)
def test_generated_traces_load_back_equal_and_are_reproducible(seed):
    trace = random_trace(seed)
    assert parse_trace(dump_trace(trace), "<t>") == trace
    assert random_trace(seed) == trace


@settings(max_examples=150, deadline=None)
@given(SEEDS)
def test_the_model_keeps_its_invariants_on_random_traces(seed):
    """No refusal but the documented one (a command on a busy vCPU), replay deterministic,
    settle terminates (a ModelError otherwise)."""
    trace = random_trace(seed)
    assert (
        _model_invariants(trace, reference.PROFILES["mainline"], HostContext("reference")) is None
    )


def test_the_shrinker_keeps_only_what_the_failure_needs():
    trace = random_trace(7)
    needle = f.SetLapic(0)
    big = trace.__class__(**{**trace.__dict__, "steps": trace.steps + (needle,)})

    def fails(t):
        return needle in t.steps

    small, tried = shrink(big, fails)
    assert small.steps == (needle,) and valid(small) and size(small) == 1 and tried > 0


def test_every_switch_has_a_flip():
    assert {name for name, _ in flips(reference.PROFILES["mainline"])} == set(reference.SWITCHES)


def test_predict_stops_at_a_block():
    outputs, transitions = predict(random_trace(3), "mainline")
    assert outputs and isinstance(transitions, set)


def test_fuzz_command_on_the_reference_backend(capsys, tmp_path):
    code = main(
        ["fuzz", "--backend", "reference", "--budget", "60", "--jobs", "2", "-o", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "60 traces" in out and "coverage (model)" in out
    assert code == 0, out


def _self_init_trace(apic="xapic"):
    setup = f.Setup(vcpus=1, apic=apic, irqchip="kernel", guest="stepper", sync_apic_map=True)
    steps = (f.GuestCommand(0, "start"), f.Icr(0, 0x4520))
    return f.Trace(name="self-init", setup=setup, steps=steps)


def _mismatch(step, field, expected, observed, vcpu=0):
    from kvmtest.trace.result import Mismatch

    return Mismatch(step, "<code>", vcpu, field, expected, observed)


@pytest.mark.parametrize("apic", ["xapic", "x2apic"])
def test_known_self_init_divergence_is_classified_on_pvm_only(apic):
    """The judged kvm_pvm self-INIT divergence (docs/fuzzing.md#self-init) matches exactly its
    own first mismatch, on the host kind it was judged on."""
    from types import SimpleNamespace

    from kvmtest.fuzz import known

    trace = _self_init_trace(apic)
    seen = SimpleNamespace(mismatches=[_mismatch(1, "report", "reset", "icr")])
    assert known.classify(trace, seen, "pvm") == "pvm-self-init-runs-on"
    assert known.classify(trace, seen, "vmx") is None  # judged on kvm_pvm only
    ap = SimpleNamespace(mismatches=[_mismatch(1, "report", "none", "icr")])  # an AP: no report
    assert known.classify(trace, ap, "pvm") == "pvm-self-init-runs-on"
    for other in (
        _mismatch(1, "report", "reset", "woke"),  # another observed value
        _mismatch(1, "mp_state", "reset", "icr"),  # another field
        _mismatch(0, "report", "reset", "icr"),  # at the start, before any ICR command
        _mismatch(1, "report", "reset", "icr", vcpu=1),  # not the sender
    ):
        assert known.classify(trace, SimpleNamespace(mismatches=[other]), "pvm") is None
    fixed = replace(trace, steps=(trace.steps[0], replace(trace.steps[1], value=0x4020)))
    assert known.classify(fixed, seen, "pvm") is None  # a fixed IPI, not an INIT
    assert known.classify(trace, SimpleNamespace(mismatches=[]), "pvm") is None
    # The report may come at a later host step that woke the vCPU into its ICR command.
    later = replace(trace, steps=(*trace.steps, f.Msi(0xFEE00000, 0, 0x610)))
    woken = SimpleNamespace(mismatches=[_mismatch(2, "report", "reset", "icr")])
    assert known.classify(later, woken, "pvm") == "pvm-self-init-runs-on"
    hlt = replace(later, steps=(*trace.steps, f.GuestCommand(0, "hlt"), later.steps[-1]))
    assert known.classify(hlt, woken, "pvm") is None  # its last command was a HLT
