"""docs/answers.md and docs/answers/*.svg are generated from real runs and stay true."""

import xml.etree.ElementTree as ET

import pytest

from kvmtest import answers
from kvmtest.suite import choose_backend
from kvmtest.trace import load_trace

TEXT = answers.PAGE.read_text(encoding="utf-8")


def test_model_parts_are_the_regenerated_text():
    """Everything but the KVM lines is regenerated here; the KVM lines are taken as recorded."""
    recorded = answers.recorded_kvm(TEXT)
    assert set(recorded) == {q.key for q in answers.QUESTIONS}, "a KVM answer is missing"
    flavour = choose_backend("reference", False).context.flavour
    assert answers.render(recorded, flavour) == TEXT, (
        "docs/answers.md is stale: regenerate it with `python -m kvmtest.answers > docs/answers.md`"
    )


@pytest.mark.parametrize("question", answers.QUESTIONS, ids=lambda q: q.key)
def test_each_question_has_a_trace_a_source_and_a_picture(question):
    trace = load_trace(str(answers.trace_path(question)))
    assert trace.description and trace.rules
    assert question.source.startswith("https://github.com/")
    root = ET.fromstring(answers.svg_path(question).read_text(encoding="utf-8"))
    assert root.tag.endswith("svg")
    assert f"({answers.svg_path(question).relative_to(answers.DOCS)})" in TEXT


def test_enough_questions():
    assert len(answers.QUESTIONS) >= 5


@pytest.fixture
def kvm_backend():
    from tests.conftest import require_kvm

    require_kvm()
    backend = choose_backend("kvm", True)
    yield backend
    backend.context.kvm.close()


@pytest.mark.kvm
def test_kvm_answers_are_what_this_host_does_now(kvm_backend):
    """Re-run every trace on this host's KVM: the recorded answer and picture must be what it
    shows now (on another kernel the page records another host: skip)."""
    recorded = answers.recorded_kvm(TEXT)
    measured = answers.measure_kvm(kvm_backend)
    for question in answers.QUESTIONS:
        host, sentence, svg = measured[question.key]
        if recorded[question.key][0] != host:
            pytest.skip(f"the page records {recorded[question.key][0]}, this is {host}")
        assert recorded[question.key][1] == sentence, question.key
        assert answers.svg_path(question).read_text(encoding="utf-8") == svg, question.key
