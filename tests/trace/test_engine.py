"""The replay engine against the real /dev/kvm and the model."""

import pytest

from kvmtest.trace.engine import HostContext, run_trace
from kvmtest.trace.load import parse_trace
from kvmtest.trace.result import Status
from tests.conftest import require_kvm

MSI_INIT_SIPI = """\
name: t
setup: {vcpus: 2}
steps:
  - msi: {dest: 1, delivery: init}
  - observe: 1
  - msi: {dest: 1, delivery: sipi, vector: 0x10}
  - observe: 1
"""


@pytest.fixture
def host(kvm):
    from kvmtest.host import FLAVOURS, detect_backend

    return HostContext(
        "kvm",
        flavour=FLAVOURS.get(detect_backend(), "vmx"),
        cpuid=kvm.get_supported_cpuid(),
        kvm=kvm,
    )


def test_mainline_agrees_with_this_kernel(host):
    result = run_trace(parse_trace(MSI_INIT_SIPI, "t.yaml"), "mainline", host)
    assert result.status is Status.PASS, [m.describe() for m in result.mismatches]


def test_pre_patch_profile_is_told_apart_field_by_field(host):
    """Under linux-3.9 the SIPI leaves SIPI_RECEIVED visible and INIT resets nothing."""
    result = run_trace(parse_trace(MSI_INIT_SIPI, "t.yaml"), "linux-3.9", host)
    assert result.status is Status.FAIL
    found = {(m.location, m.vcpu, m.field): (m.expected, m.observed) for m in result.mismatches}
    assert found[("t.yaml:7", 1, "mp_state")] == (4, 0)
    assert found[("t.yaml:5", 1, "rip")] == (0, 0xFFF0)


def test_wrong_pin_is_reported_as_model_versus_pin():
    text = MSI_INIT_SIPI.replace(
        "  - observe: 1\n", "  - observe: {vcpu: 1, expect: {rip: 5}}\n", 1
    )
    result = run_trace(parse_trace(text, "p.yaml"), "mainline", HostContext("reference"))
    assert result.status is Status.FAIL
    (mismatch,) = result.mismatches
    assert (mismatch.field, mismatch.expected, mismatch.observed) == (
        "rip (model vs pin)",
        5,
        0xFFF0,
    )
    # The report says which side is which: the trace's pin, and the model's prediction.
    from kvmtest.report import render_text
    from kvmtest.trace.result import RunSummary

    summary = RunSummary(
        results=[result], host={}, profile="mainline", backend="reference", elapsed=0.0
    )
    report = render_text(summary, verbose=False)
    assert "pinned (trace)    5\n" in report and "predicted (model) 0xfff0" in report, report
    assert "observed (KVM)" not in report
    assert "pinned 5, predicted 0xfff0" in mismatch.describe()


def test_failing_ioctl_is_an_error_result_not_an_exception(host):
    """KVM_CREATE_VM on a closed /dev/kvm fails with EBADF: an ERROR naming the ioctl."""
    from kvmtest.kvm import Kvm

    closed = Kvm()
    closed.close()
    host.kvm = closed
    text = "name: t\nsetup: {vcpus: 2}\nsteps:\n  - msi: {dest: 1, delivery: init}\n"
    result = run_trace(parse_trace(text, "t.yaml"), "mainline", host)
    assert result.status is Status.ERROR, result
    assert "kvm:" in result.message and "KVM_CREATE_VM" in result.message, result.message
    assert result.elapsed > 0


def test_split_irqchip_msi_init_is_judged_and_agrees(host):
    text = (
        "name: t\nsetup: {vcpus: 2, irqchip: split}\nsteps:\n  - msi: {dest: 1, delivery: init}\n"
        "  - observe: {vcpu: 1, read: [mp_state]}\n"
    )
    result = run_trace(parse_trace(text, "t.yaml"), "mainline", host)
    assert result.status is Status.PASS, result.message or result.mismatches
    assert result.compared >= 2  # the MSI's delivery count and vCPU 1's mp_state


def test_profile_filter_and_requirements_skip(host):
    trace = parse_trace("name: t\nprofiles: [linux-3.9]\nsteps: [{observe: 0}]\n", "t.yaml")
    assert run_trace(trace, "mainline", host).status is Status.SKIP
    trace = parse_trace("name: t\nrequires: [smm]\nsteps: [{observe: 0}]\n", "t.yaml")
    host.smm = False
    result = run_trace(trace, "mainline", host)
    assert result.status is Status.SKIP and "smm" in result.message


def test_guest_halt_then_stray_sipi_wakes_it(host):
    """Rule 19 through the guest path: a SIPI to a halted AP inside KVM_RUN wakes it."""
    text = """\
name: t
setup: {vcpus: 2, guest: stepper}
steps:
  - start: 0
  - start: 1
  - icr: {vcpu: 0, delivery: init, dest: 1}
  - icr: {vcpu: 0, delivery: sipi, vector: 0x12, dest: 1}
  - hlt: 1
  - observe: {vcpu: 1, read: [mp_state]}
  - icr: {vcpu: 0, delivery: sipi, vector: 0x20, dest: 1}
  - observe: {vcpu: 1, read: [mp_state]}
"""
    require_kvm()
    result = run_trace(parse_trace(text, "t.yaml"), "mainline", host)
    assert result.status is Status.PASS, result.message or [m.describe() for m in result.mismatches]


def test_kvm_side_settles_by_observation_an_unexpected_report_is_a_mismatch(host):
    """linux-3.9 predicts that the stray SIPI leaves the halted AP asleep (no report); this
    KVM wakes it and the guest reports "hlt". The kvm side does not know the prediction, so
    the report it saw is compared, and the extra sleeping thread the model predicted too."""
    from kvmtest.suite import corpus_dir
    from kvmtest.trace.load import load_trace

    require_kvm()
    trace = load_trace(f"{corpus_dir()}/guest-stray-sipi-wakes-hlt-xapic.yaml")
    result = run_trace(trace, "linux-3.9", host)
    found = {(m.vcpu, m.field): (m.expected, m.observed) for m in result.mismatches}
    assert found[(1, "report")] == ("none", "hlt"), result.mismatches
    assert found[(1, "thread")] == ("blocked", "absent")
    assert run_trace(trace, "mainline", host).status is Status.PASS
