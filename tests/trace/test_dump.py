"""dump_trace writes YAML that load_trace reads back to an equal trace."""

import pytest
from hypothesis import HealthCheck, given, settings

from kvmtest import ops as f
from kvmtest.suite import load_traces
from kvmtest.trace import dump_trace, parse_trace

from .strategies import traces

CORPUS, _ = load_traces([])


@pytest.mark.parametrize("trace", CORPUS, ids=[t.name for t in CORPUS])
def test_every_corpus_trace_dumps_and_loads_back_equal(trace):
    assert parse_trace(dump_trace(trace), trace.path) == trace


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_generated_traces_dump_and_load_back_equal(trace):
    text = dump_trace(trace)
    assert parse_trace(text, "generated.yaml") == trace, text


def test_a_trace_built_in_code_needs_no_location():
    trace = f.Trace(
        "built",
        f.Setup(vcpus=2),
        (f.Msi(0xFEE01000, 0, 0x500), f.Observe((1,), ("mp_state",), expect={1: {"mp_state": 2}})),
    )
    assert trace.location(trace.steps[0]) == "<code>"
    assert [s.thread for s in trace.steps] == ["host", "host"]
    text = dump_trace(trace)
    assert "mp_state: INIT_RECEIVED" in text
    assert parse_trace(text) == trace


def test_equality_ignores_where_a_step_was_written_but_not_what_it_does():
    assert f.Msi(1, 2, 3, line=4) == f.Msi(1, 2, 3, line=9)
    assert f.Msi(1, 2, 3) != f.Msi(1, 2, 4)
    assert f.Icr(1, 0x500).thread == "vcpu1"
