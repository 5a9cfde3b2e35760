"""docs/coverage.md is generated from the corpus and cannot drift; every rule is accounted for."""

from pathlib import Path

import pytest

from kvmtest import coverage
from kvmtest.suite import load_traces

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "coverage.md"


@pytest.fixture(scope="module")
def traces():
    found, errors = load_traces([])
    assert not errors, errors
    return found


@pytest.fixture(scope="module")
def uncovered():
    return coverage.load_uncovered()


def test_doc_is_the_generated_text(traces, uncovered):
    expected = coverage.render_coverage(traces, uncovered)
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/coverage.md is stale: regenerate it with "
        "`python -m kvmtest.coverage > docs/coverage.md`"
    )


def test_main_prints_the_document(capsys):
    assert coverage.main([]) == 0
    assert capsys.readouterr().out == DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("rule", coverage.REQUIRED)
def test_every_rule_is_covered_or_explained(rule, traces, uncovered):
    covered = [t.name for t in traces if rule in t.rules]
    assert covered or uncovered.get(rule, "").strip(), (
        f"rule {rule}: no trace names it and kvmtest/coverage_uncovered.yaml gives no reason"
    )


def test_uncovered_file_names_only_known_rules(uncovered):
    assert set(uncovered) <= set(coverage.RULES)
    assert all(reason.strip() for reason in uncovered.values())


def test_traces_name_only_known_rules(traces):
    unknown = {(t.name, r) for t in traces for r in t.rules if r not in coverage.RULES}
    assert not unknown


def test_the_document_lists_every_rule_and_reason(traces, uncovered):
    text = coverage.render_coverage(traces, uncovered)
    for rule in coverage.REQUIRED:
        assert f"\n| [{rule}]({coverage.LINKS[rule]}) | " in text
    for rule, reason in uncovered.items():
        assert reason in text, rule


def test_render_shows_missing_rules_and_partial_coverage():
    class FakeSetup:
        vcpus, apic, guest, irqchip = 2, "xapic", "none", "kernel"

    class FakeTrace:
        name, rules, tags, requires, setup = "t1", ("1", "d7.2"), ("msi",), ("smm",), FakeSetup

    text = coverage.render_coverage([FakeTrace], {"2": "a reason", "1": "partly"})
    assert "| [1](semantics.md#rule-1) | " in text and "`t1` (smm)" in text
    assert "- **1** (partly covered): partly" in text
    assert "- **2** (no trace runs here): a reason" in text
    assert "without a reason: 3," in text  # rule 3 has neither


def test_load_uncovered_rejects_unknown_rules_and_empty_reasons(tmp_path):
    bad = tmp_path / "u.yaml"
    bad.write_text('"99": reason\n')
    with pytest.raises(ValueError, match="unknown rule"):
        coverage.load_uncovered(bad)
    bad.write_text('"6": ""\n')
    with pytest.raises(ValueError, match="needs a reason"):
        coverage.load_uncovered(bad)
