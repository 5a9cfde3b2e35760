"""The fuzzer's pieces: generated traces are valid and reproducible, the model keeps its own
invariants on them, the shrinker finds a minimum, and the command runs."""

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


def _mismatch(step, field, expected, observed, vcpu=0):
    from kvmtest.trace.result import Mismatch

    return Mismatch(step, "<code>", vcpu, field, expected, observed)


def _host(flavour):
    from kvmtest.trace.engine import HostContext

    return HostContext("kvm", flavour=flavour)


def test_a_judged_divergence_is_counted_on_its_host_kind_only(monkeypatch):
    """kvmtest.fuzz.known: a first mismatching step its entry matches, on the host kind it was
    judged on, is counted under its key; anything else is a divergence like any other."""
    from types import SimpleNamespace

    from kvmtest.fuzz import known

    entry = known.Known(
        "example",
        ("pvm",),
        "judged by hand",
        lambda trace, ms, profile, host: all(m.field == "report" for m in ms),
    )
    monkeypatch.setattr(known, "KNOWN", (entry,))
    seen = SimpleNamespace(mismatches=[_mismatch(1, "report", "reset", "icr")])
    assert known.classify(None, seen, "mainline", _host("pvm")) == "example"
    assert known.judgement("example") == "judged by hand"
    assert known.classify(None, seen, "mainline", _host("vmx")) is None  # kvm_pvm only
    other = SimpleNamespace(mismatches=[_mismatch(1, "mp_state", "reset", "icr")])
    assert known.classify(None, other, "mainline", _host("pvm")) is None
    assert known.classify(None, SimpleNamespace(mismatches=[]), "mainline", _host("pvm")) is None
    both = SimpleNamespace(mismatches=[seen.mismatches[0], other.mismatches[0]])
    assert known.classify(None, both, "mainline", _host("pvm")) is None  # the whole step
    later = SimpleNamespace(mismatches=[seen.mismatches[0], _mismatch(2, "mp_state", 1, 2)])
    assert known.classify(None, later, "mainline", _host("pvm")) == "example"  # first step


def _classify_race(steps, mismatches, flavour="pvm", vcpus=2):
    from types import SimpleNamespace

    from kvmtest import ops as f
    from kvmtest.fuzz import known

    setup = f.Setup(vcpus=vcpus, apic="xapic", irqchip="kernel", guest="stepper")
    trace = f.Trace(name="t", setup=setup, steps=tuple(steps))
    seen = SimpleNamespace(mismatches=[_mismatch(*m) for m in mismatches])
    return known.classify(trace, seen, "mainline", _host(flavour))


def test_the_exit_race_is_counted_when_kvm_showed_the_rare_order_of_a_self_init():
    """d.7.15: the model's usual kvm_pvm order says ``icr``; KVM showing ``reset`` is the rare
    order, which the model's rare-first replay predicts, only for an INIT its sender takes."""
    from kvmtest import ops as f

    start = f.GuestCommand(0, "start")

    def first(value, expected="icr", observed="reset", field="report", flavour="pvm"):
        steps = (start, f.Icr(0, value))
        return _classify_race(steps, [(1, field, expected, observed)], flavour)

    key = "pvm-exit-race"
    assert first(0x4500) == key  # physical destination 0: itself
    assert first(0x44500) == key  # shorthand self
    assert first(0xFF00000000004500) == key  # broadcast
    assert first(0x0100000000004500) is None  # APIC 1 only: the sender had no INIT
    assert first(0xC4500) is None  # all excluding self
    assert first(0x8500) is None  # level de-assert: ignored (rule 2)
    assert first(0x4500, expected="reset", observed="icr") is None  # the other way round
    assert first(0x4500, field="mp_state") is None
    assert first(0x4500, flavour="vmx") is None


def test_the_exit_race_is_counted_when_kvm_showed_the_rare_order_of_two_nmis():
    """d.7.16: two NMIs queued, then HLT. The usual kvm_pvm order reports ``hlt``; a HLT that
    blocked is the rare order, every mismatch of the step must say so."""
    from kvmtest import ops as f

    steps = (f.GuestCommand(0, "start"), f.Nmi(0), f.Nmi(0), f.GuestCommand(0, "hlt"))
    report = (3, "report", "hlt", "none")
    thread = (3, "thread", "absent", "blocked")
    assert _classify_race(steps, [report, thread]) == "pvm-exit-race"
    assert _classify_race(steps, [report, (3, "thread", "absent", "running")]) is None
    one_nmi = (f.GuestCommand(0, "start"), f.Nmi(0), f.GuestCommand(0, "hlt"))
    assert _classify_race(one_nmi, [(2, "report", "hlt", "none")]) is None  # nothing waits


def test_a_flaky_divergence_keeps_what_the_search_saw():
    """The confirmation re-runs of a flaky divergence may all pass; the report and the .txt
    still say what the search's own run saw (its first mismatch)."""
    from kvmtest import ops as f
    from kvmtest.fuzz import run as fuzz_run
    from kvmtest.trace.result import Status, TraceResult

    setup = f.Setup(vcpus=1, apic="xapic", irqchip="kernel", guest="none", sync_apic_map=True)
    trace = f.Trace(name="t", setup=setup, steps=(f.Observe((0,), ("mp_state",)),))
    result = TraceResult.of(trace, "mainline", "kvm", 0, status=Status.FAIL)
    result.mismatches.append(_mismatch(0, "report", "icr", "reset"))
    seen = fuzz_run._first_difference(result)
    assert seen == "step 1 vcpu 0 report: expected (model) 'icr', observed (KVM) 'reset'"
    finding = fuzz_run.Finding(7, "mismatch report", "flaky", trace, runs=["pass"], seen=seen)
    report = fuzz_run.FuzzReport(1, "mainline", "kvm", findings=[finding])
    assert f"the search's own run saw: {seen}" in fuzz_run.render(report)


def test_a_trace_gets_its_settle_bounds_twice_over_and_at_least_a_minute():
    from kvmtest import ops as f
    from kvmtest.fuzz import run as fuzz_run

    setup = f.Setup(vcpus=1, apic="xapic", irqchip="kernel", guest="none", sync_apic_map=True)
    short = f.Trace(name="s", setup=setup, steps=(f.Observe((0,), ("mp_state",)),))
    assert fuzz_run.trace_timeout(short) == fuzz_run.TRACE_TIMEOUT
    long = f.Trace(name="l", setup=setup, steps=short.steps * 22)
    assert fuzz_run.trace_timeout(long) == 24 * 2 * 2.0  # 22 steps + 2, each 2 x the bound


def test_every_divergence_is_listed_and_any_one_can_be_shrunk_on_kvm(capsys, tmp_path):
    """On real KVM with a switch flipped (so that traces diverge): DIR/divergences.tsv lists
    every FAIL and ERROR of the search, not only the first of each signature, and
    `kvmtest fuzz --shrink` takes one of the unshrunk files and shrinks it to a trace that
    still fails under the flip and passes without it."""
    from tests.conftest import require_kvm

    require_kvm()
    from kvmtest.suite import load_traces

    out = tmp_path / "out"
    flip = ["--set", "get_mp_state_processes=false"]
    code = main(["fuzz", "--budget", "60", "--seed", "3", "--jobs", "8", "-o", str(out), *flip])
    text = capsys.readouterr().out
    statuses = dict(
        part.strip().split(" ") for part in text.split("statuses: ")[1].split("\n")[0].split(",")
    )
    failed = int(statuses.get("fail", 0)) + int(statuses.get("error", 0))
    rows = (out / "divergences.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["trace_seed", "signature", "first_difference"]
    assert len(rows) - 1 == failed > 1, text
    assert code == 1
    unshrunk = sorted(out.glob("*-unshrunk.yaml"))
    assert unshrunk, text
    again = tmp_path / "again"
    assert main(["fuzz", "--shrink", str(unshrunk[0]), "-o", str(again), *flip]) == 1
    (shrunk,) = [p for p in again.glob("*.yaml") if not p.name.endswith("-flaky.yaml")]
    traces, errors = load_traces([str(shrunk)])
    assert not errors and len(traces[0].steps) < len(load_traces([str(unshrunk[0])])[0][0].steps)
    assert main(["fuzz", "--shrink", str(shrunk), *flip]) == 1
    capsys.readouterr()
    assert main(["fuzz", "--shrink", str(shrunk)]) == 0
    assert "passes here" in capsys.readouterr().out
