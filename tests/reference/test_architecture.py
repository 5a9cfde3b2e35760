"""The architectural profiles (reference/architecture.py): what they are, what they predict,
what they leave unspecified, and how a deviation is attributed to a switch."""

from dataclasses import fields

import pytest

import reference
from kvmtest.suite import load_traces
from kvmtest.trace.engine import HostContext, run_trace
from kvmtest.trace.result import Mismatch, Status, TraceResult
from reference import architecture as arch

TRACES, _ = load_traces([])
BY_NAME = {t.name: t for t in TRACES}


def test_the_profiles_resolve_by_name_and_never_by_release():
    assert reference.get_profile("sdm") is arch.SDM
    assert reference.get_profile("apm") is arch.APM
    assert reference.profile_for_release("6.18.1").name == "mainline"
    assert "sdm" not in reference.PROFILES  # the kernel tables and docs stay the kernels'


def test_kvm_switches_are_mainlines_and_each_arch_switch_cites_a_manual():
    for p in arch.ARCHITECTURES.values():
        for f in fields(reference.Profile):
            if "layer" in f.metadata:
                assert getattr(p, f.name) == getattr(reference.get_profile("mainline"), f.name)
        for switch in arch.ARCH_SWITCHES:
            cite = p.cite(switch)
            assert getattr(p, switch) is (cite is not None), (p.name, switch)
            if cite is not None:
                assert cite.section.startswith(("SDM vol. 3, ", "APM vol. 2, ")), cite
                assert cite.says
    for rule in arch.ARCH_RULES.values():
        assert rule.impact in arch.IMPACTS
        assert rule.kvm_rules and rule.source and rule.guest_visible and rule.impact_why
        assert rule.sdm or rule.apm


def test_every_kernel_profile_keeps_kvms_behaviour():
    for p in reference.PROFILES.values():
        assert not any(arch.arch_value(p, s) for s in arch.ARCH_SWITCHES), p.name


def test_set_reaches_the_architectural_switches():
    p = reference.apply_switches("sdm", ["first_sipi_wins=false"])
    assert p.first_sipi_wins is False and p.label == "sdm[first_sipi_wins=false]"
    with pytest.raises(reference.ModelError):
        reference.apply_switches("mainline", ["first_sipi_wins=true"])


def test_wait_for_sipi_is_both_encodings():
    assert arch.WAIT_FOR_SIPI == 1 and arch.WAIT_FOR_SIPI == 2
    assert arch.WAIT_FOR_SIPI != 0 and not (arch.WAIT_FOR_SIPI != 2)
    assert repr(arch.UNSPECIFIED) == "UNSPECIFIED"


def _machine(profile, **kw):
    m = reference.Machine(2, profile, **kw)
    m.set_lapic(0)  # enrol vCPU 1 in the APIC map, as a VMM does
    return m


def test_the_manual_ignores_a_sipi_outside_wait_for_sipi():
    for name, woken in (("mainline", True), ("sdm", False)):
        m = _machine(name)
        m.signal_msi(0xFEE01000, 0, 0x500)  # INIT
        m.signal_msi(0xFEE01000, 0, 0x610)  # SIPI 0x10
        assert m.get_mp_state(1) == 0  # processed: RUNNABLE at 0x1000:0
        assert m.enter_run(1) is reference.RunResult.RUNS
        m.guest_hlt(1)
        m.signal_msi(0xFEE01000, 0, 0x620)  # a stray SIPI
        m.settle()
        assert (m.run_status(1) is reference.RunResult.RUNS) is woken, name


def test_the_manual_takes_the_first_sipi_and_a_sipi_after_reset():
    m = _machine("sdm")
    m.signal_msi(0xFEE01000, 0, 0x610)  # SIPI to the AP fresh from RESET: it starts
    assert m.get_mp_state(1) == 0 and m.get_regs(1)["rip"] == 0
    m = _machine("sdm")
    for data in (0x500, 0x610, 0x620):
        m.signal_msi(0xFEE01000, 0, data)
    assert m.get_mp_state(1) == 0  # the processing point (rule 8)
    assert m.get_sregs(1)["cs"]["selector"] == 0x1000  # mainline: 0x2000 (rule 4)


def test_reset_rdx_is_the_signature_when_a_cpuid_table_is_known():
    assert _machine("sdm", cpuid_1_eax=0x806F8).get_regs(1)["rdx"] == 0x806F8
    assert _machine("mainline", cpuid_1_eax=0x806F8).get_regs(1)["rdx"] == 0x600
    assert _machine("sdm").get_regs(1)["rdx"] == 0x600  # no table: nothing to say


def test_the_manual_segment_types_ignore_the_vendor_flavour():
    assert _machine("sdm", flavour="svm").get_sregs(1)["ss"]["type"] == 3
    assert _machine("mainline", flavour="svm").get_sregs(1)["ss"]["type"] == 2


def _timeline(trace, profile, flavour="pvm"):
    host = HostContext("reference", flavour=flavour)
    result = run_trace(trace, profile, host, timeline=True)
    assert result.status is not Status.ERROR, result.message
    return result


# A concurrent block is explored, not predicted step by step: those traces have no timeline.
SEQUENTIAL = [t for t in TRACES if not any(s.kind == "concurrently" for s in t.steps)]


@pytest.mark.parametrize("trace", SEQUENTIAL, ids=[t.name for t in SEQUENTIAL])
def test_with_every_switch_back_the_manual_predicts_what_the_kvm_model_does(trace):
    """The profiles differ from mainline only by their switches and by leaving things open."""
    for profile in arch.ARCHITECTURES.values():
        kvm_like = arch.kvm_variant(profile, arch.ARCH_SWITCHES)
        ours = _timeline(trace, kvm_like)
        theirs = _timeline(trace, "mainline")
        for a, b in zip(ours.timeline, theirs.timeline, strict=True):
            for key, value in a.predicted.items():
                if value is arch.UNSPECIFIED or value is reference.GUEST:
                    continue
                assert not (value != b.predicted.get(key)), (trace.name, a.location, key)


def test_results_and_abi_fields_are_unspecified():
    result = _timeline(BY_NAME["msi-init-sipi"], "sdm")
    msi = result.timeline[0].predicted
    assert msi[(None, "result")] is arch.UNSPECIFIED
    observed = result.timeline[1].predicted
    assert observed[(1, "mp_state")] is arch.WAIT_FOR_SIPI
    assert observed[(1, "cs.type")] is arch.UNSPECIFIED  # "R/W" names no code type
    assert observed[(1, "ds.type")] == 3


def test_registers_read_with_an_init_pending_are_unspecified():
    result = _timeline(BY_NAME["msi-get-regs-no-processing"], "sdm")
    values = [v for r in result.timeline for (vcpu, f), v in r.predicted.items() if f == "rip"]
    assert arch.UNSPECIFIED in values


def test_a_vcpu_the_apic_map_missed_is_unspecified_from_then_on():
    result = _timeline(BY_NAME["msi-unmapped-newest-vcpu-3"], "sdm")
    last = result.timeline[-1].predicted
    assert all(v is arch.UNSPECIFIED for (vcpu, _), v in last.items() if vcpu == 2)


def test_collect_attributes_a_deviation_to_its_switch():
    from kvmtest.trace.findings import collect

    trace = BY_NAME["msi-last-sipi-wins"]
    predicted = _timeline(trace, "sdm").timeline
    step = next(r for r in predicted if (1, "cs.selector") in r.predicted)
    fake = TraceResult.of(trace, "sdm", "kvm", status=Status.FAIL)
    want = step.predicted[(1, "cs.selector")]
    fake.mismatches.append(Mismatch(step.index, step.location, 1, "cs.selector", want, 0x2000))
    fake.mismatches.append(Mismatch(step.index, step.location, 1, "rip", 0, 0x1234))
    report = collect([fake], TRACES, arch.SDM, HostContext("reference", flavour="pvm"))
    assert [f.switch for f in report.findings] == ["first_sipi_wins"]
    assert [o.field for o in report.unexplained] == ["rip"]
    assert report.exit_code == 1


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_every_trace_runs_under_the_manuals(trace):
    for name in ("sdm", "apm"):
        result = run_trace(trace, name, HostContext("reference", flavour="svm"))
        assert result.status is not Status.ERROR, (name, result.message)
