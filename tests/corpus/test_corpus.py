"""The built-in corpus: every trace loads, is named after its file, says what it checks, and
passes (or skips) on the reference model; with /dev/kvm, on this host's KVM too."""

import os
from collections import Counter

import pytest

from kvmtest import coverage
from kvmtest.suite import corpus_dir, load_traces
from kvmtest.trace.engine import HostContext, run_trace
from kvmtest.trace.result import Status

TRACES, ERRORS = load_traces([])
IDS = [t.name for t in TRACES]
# Tags that say which path delivers the INIT/SIPI and in which APIC mode.
PATHS = {"msi", "guest"}
MODES = {"xapic", "x2apic"}


def test_the_corpus_loads_without_errors():
    assert not ERRORS, "\n".join(map(str, ERRORS))
    assert TRACES


def test_names_are_unique_and_equal_the_file_names():
    counts = Counter(IDS)
    assert [name for name, n in counts.items() if n > 1] == []
    for trace in TRACES:
        assert os.path.basename(trace.path) == f"{trace.name}.yaml", trace.path
        assert os.path.dirname(os.path.abspath(trace.path)).startswith(
            os.path.abspath(corpus_dir())
        )


def test_the_msi_init_sipi_reference_trace_exists():
    assert "msi-init-sipi" in IDS


@pytest.mark.parametrize("trace", TRACES, ids=IDS)
def test_trace_says_what_it_checks(trace):
    assert trace.description, "needs a description"
    assert trace.rules, "needs rules"
    assert set(trace.rules) <= set(coverage.RULES)
    tags = set(trace.tags)
    assert tags & PATHS, f"tags {sorted(tags)} name no path (msi or guest)"
    assert tags & MODES, f"tags {sorted(tags)} name no APIC mode (xapic or x2apic)"
    assert trace.setup.apic in tags, "the APIC mode tag must match setup.apic"
    if trace.setup.guest == "none":
        assert "guest" not in tags


@pytest.mark.parametrize("flavour", ["pvm", "vmx", "svm"])
@pytest.mark.parametrize("trace", TRACES, ids=IDS)
def test_trace_passes_on_the_reference_model(trace, flavour):
    """The pins come from docs/semantics.md and hold for every vendor flavour of the model."""
    result = run_trace(trace, "mainline", HostContext("reference", flavour=flavour))
    assert result.status in (Status.PASS, Status.SKIP), (result.message, result.mismatches)


SMM_TRACES = [t for t in TRACES if "smm" in t.requires]


@pytest.mark.parametrize("trace", SMM_TRACES, ids=[t.name for t in SMM_TRACES])
def test_smm_trace_pins_hold_on_a_model_with_smm(trace):
    """They skip on this host (no KVM_CAP_X86_SMM); the model with SMM must still meet the pins."""
    result = run_trace(trace, "mainline", HostContext("reference", flavour="pvm", smm=True))
    assert result.status is Status.PASS, (result.message, result.mismatches)


def test_every_trace_passes_or_skips_on_this_hosts_kvm(kvm):
    """Once each, never retried: a lost kick or a hang on real KVM is a failure to fix."""
    from kvmtest.suite import choose_backend, run_all

    context = choose_backend("kvm", require_kvm=True).context
    results = run_all(TRACES, "mainline", context, jobs=8)
    bad = [
        (r.name, r.status.name, r.message, r.mismatches[:3])
        for r in results
        if r.status not in (Status.PASS, Status.SKIP)
    ]
    assert bad == []
    assert sum(r.compared for r in results) > 1000  # judged on KVM, not just run
