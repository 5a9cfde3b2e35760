"""Malformed traces give file:line: reason, never a traceback; good ones load exactly."""

import pytest

from kvmtest import ops as f
from kvmtest.trace.errors import TraceError
from kvmtest.trace.load import load_trace, parse_trace

GOOD = """\
name: example
rules: [1, 12, d7.3]
tags: [msi]
setup: {vcpus: 3, apic: x2apic}
steps:
  - msi: {dest: 2, delivery: sipi, vector: 0x20}
  - observe: {vcpus: [1, 2], read: [regs, mp_state], fields: [rip, mp_state]}
  - set_mp_state: {vcpu: 1, state: SIPI_RECEIVED}
  - set_vcpu_events: {vcpu: 2, sipi_vector: 0x30}
"""


def test_good_trace_loads_with_lines_and_encodings():
    trace = parse_trace(GOOD, "good.yaml")
    assert trace.name == "example" and trace.rules == ("1", "12", "d7.3")
    assert trace.setup == f.Setup(vcpus=3, apic="x2apic")
    msi, observe, set_mp, events = trace.steps
    assert (msi.line, msi.address_lo, msi.data) == (6, 0xFEE00000 | 2 << 12, 0x620)
    assert observe.read == ("regs", "mp_state") and observe.fields == {"rip", "mp_state"}
    assert (set_mp.vcpu, set_mp.state) == (1, 4)
    assert events.sipi_vector == 0x30 and events.latched_init is None


def test_icr_fields_encode_like_rule_40():
    text = """\
name: icr
setup: {vcpus: 2, guest: stepper, apic: %s}
steps:
  - icr: {vcpu: 0, delivery: init, dest: 1, shorthand: all-but-self, trigger: level}
"""
    xapic = parse_trace(text % "xapic").steps[0].value
    x2apic = parse_trace(text % "x2apic").steps[0].value
    assert xapic == (1 << 56) | 0x500 | 1 << 14 | 1 << 15 | 3 << 18
    assert x2apic == (1 << 32) | 0x500 | 1 << 14 | 1 << 15 | 3 << 18


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("name: a\nsteps: []\n", 2, "steps must be a non-empty list"),
        ("name: Bad Name\nsteps: [{observe: 0}]\n", 1, "must be lower-case"),
        ("steps: [{observe: 0}]\n", 1, "missing key 'name'"),
        ("name: a\nstep: [{observe: 0}]\n", 2, "unknown key 'step'"),
        ("name: a\nsteps:\n  - observe: 0\n  - msii: {}\n", 4, "unknown step 'msii'"),
        ("name: a\nsteps:\n  - msi: {dest: 256, delivery: init}\n", 3, "out of range"),
        ("name: a\nsteps:\n  - msi: {dest: 1, delivery: inti}\n", 3, "not one of"),
        ("name: a\nsteps:\n  - observe: 2\n", 3, "vcpu = 2 is out of range 0..1"),
        (
            "name: a\nsteps:\n  - observe: {vcpu: 1, read: [mp_state], fields: [rip]}\n",
            3,
            "not produced by read",
        ),
        ("name: a\nsteps:\n  - observe: {vcpu: 1, expect: {rpi: 0}}\n", 3, "'rpi' is not read"),
        ("name: a\nsteps:\n  - set_mp_state: {vcpu: 1, state: SLEEPY}\n", 3, "unknown mp_state"),
        ("name: a\nsteps:\n  - icr: {vcpu: 0, delivery: init}\n", 3, "needs setup.guest: stepper"),
        ("name: a\nsetup: {vcpus: 0}\nsteps: [{observe: 0}]\n", 2, "setup.vcpus = 0"),
        ("name: a\nsteps:\n  - {msi: {dest: 1, delivery: init}, observe: 1}\n", 3, "exactly one"),
        ("name: a\nsteps: [{observe: 1}\n", 3, "flow sequence that starts at line 2"),
        ("name: a\nrules: [x]\nsteps: [{observe: 1}]\n", 2, "must be a rule number"),
    ],
)
def test_malformed_trace_names_file_line_and_reason(text, line, reason):
    with pytest.raises(TraceError) as err:
        parse_trace(text, "bad.yaml")
    assert err.value.path == "bad.yaml" and err.value.line == line, str(err.value)
    assert reason in err.value.reason
    assert str(err.value).startswith(f"bad.yaml:{line}: ")


def test_unreadable_file(tmp_path):
    with pytest.raises(TraceError) as err:
        load_trace(str(tmp_path / "missing.yaml"))
    assert "cannot read" in str(err.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceError) as err:
        load_trace(str(binary))
    assert "UTF-8" in str(err.value)
