"""KTAP output: version line, plan, numbering, directives, diagnostics before results."""

import pytest

from kvmtest.report import render_ktap
from kvmtest.report.ktap import diagnostic, ktap_name
from tests.report import samples
from tests.report.ktap_grammar import KtapError, parse


def test_version_plan_and_one_result_per_trace():
    summary = samples.mixed()
    text = render_ktap(summary)
    assert text.splitlines()[:2] == ["KTAP version 1", "1..4"]
    doc = parse(text)
    assert doc.plan == len(doc.tests) == len(summary.results)
    assert [t.number for t in doc.tests] == [1, 2, 3, 4]
    assert [t.name for t in doc.tests] == [r.name for r in summary.results]
    assert [t.ok for t in doc.tests] == [True, False, False, True]


def test_skip_and_error_directives_carry_the_reason():
    passed, failed, error, skip = parse(render_ktap(samples.mixed())).tests
    assert skip.directive == "SKIP" and skip.reason == "KVM_CAP_SPLIT_IRQCHIP missing"
    assert error.directive == "ERROR" and error.reason == "GuestError: landing page not reached"
    assert passed.directive is None and failed.directive is None


def test_each_mismatch_is_one_diagnostic_before_its_result():
    summary = samples.mixed()
    text = render_ktap(summary)
    failed = parse(text).tests[1]
    for mismatch in samples.HALTED_MISMATCHES:
        line = f"# init-while-halted: {mismatch.describe()}"
        assert failed.diagnostics.count(line) == 1
        assert text.index(line) < text.index("not ok 2 init-while-halted")
    # nothing about the failure comes after its result line
    after = text.split("not ok 2 init-while-halted\n", 1)[1]
    assert "init-while-halted" not in after
    assert any("rules 4, 11, 12" in line for line in failed.diagnostics)


def test_multi_line_error_message_becomes_diagnostics():
    error = parse(render_ktap(samples.mixed())).tests[2]
    assert error.diagnostics == [
        "# smp-boot: GuestError: landing page not reached",
        "# smp-boot: at stepper.S:40",
    ]


def test_nested_drops_only_the_version_line():
    summary = samples.mixed()
    top = render_ktap(summary)
    nested = render_ktap(summary, nested=True)
    assert nested.splitlines()[0] == "1..4"
    assert "KTAP version" not in nested
    assert nested == top.split("\n", 1)[1]
    assert len(parse(nested, nested=True).tests) == 4
    with pytest.raises(KtapError):
        parse(nested)


def test_totals_trailer_counts_every_result():
    doc = parse(render_ktap(samples.mixed()))
    assert doc.trailer[-1] == "# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:1"


def test_repeats_are_subtests_of_one_trace():
    summary = samples.repeated()
    text = render_ktap(summary)
    doc = parse(text)
    assert doc.plan == 2
    concurrent, msi = doc.tests
    assert (concurrent.name, concurrent.ok) == ("concurrent-init", False)
    assert (msi.name, msi.ok) == ("msi-init-sipi", True)
    assert [s.name for s in concurrent.subtests] == [f"repeat-{i}" for i in range(1, 9)]
    assert [s.ok for s in concurrent.subtests] == [i != 5 for i in range(8)]
    assert "  # Subtest: concurrent-init" in text.splitlines()
    forbidden = [d for d in concurrent.diagnostics if "forbidden outcome both-lost" in d]
    assert forbidden and "both-lost=1 (FORBIDDEN)" in " ".join(concurrent.diagnostics)


def test_all_skipped_repeats_skip_the_parent():
    summary = samples.summary(
        [samples.result("t", samples.Status.SKIP, repeat=i, message="no #cap") for i in range(3)]
    )
    (test,) = parse(render_ktap(summary)).tests
    assert test.ok and test.directive == "SKIP" and "#" not in test.reason
    assert all(s.directive == "SKIP" for s in test.subtests)


def test_odd_names_and_messages_stay_in_the_grammar():
    summary = samples.odd()
    text = render_ktap(summary)
    doc = parse(text)  # ASCII only, names without '#' or spaces
    assert doc.plan == len(doc.tests) == 4
    assert [t.ok for t in doc.tests] == [True, False, False, True]
    assert doc.tests[3].directive == "SKIP"
    header_lines = [line for line in text.splitlines() if line.lstrip().startswith("# Subtest:")]
    assert header_lines == []
    assert all(line.startswith("# ") for t in doc.tests for line in t.diagnostics)
    failed = doc.tests[1]
    assert failed.diagnostics[-2:] == [f"# {failed.name}: line one", f"# {failed.name}: line # two"]
    assert doc.tests[2].reason == "Subtest: x"  # '#' dropped from directive data


def test_empty_run_has_an_empty_plan():
    doc = parse(render_ktap(samples.empty()))
    assert doc.plan == 0 and doc.tests == []


@pytest.mark.parametrize(
    "raw, safe",
    [
        ("msi-init-sipi", "msi-init-sipi"),
        ("a # b", "a_b"),
        ("\u00e9t\u00e9 2", "ete_2"),
        ("", "unnamed"),
        ("##", "unnamed"),
        ("line\nbreak", "line_break"),
    ],
)
def test_ktap_name(raw, safe):
    assert ktap_name(raw) == safe


def test_diagnostic_splits_lines_and_defuses_subtest_headers():
    assert diagnostic("one\ntwo") == ["# one", "# two"]
    assert diagnostic("Subtest: x") == ["# (Subtest: x)"]
    assert diagnostic("caf\u00e9 \x1b") == ["# cafe \\x1b"]
