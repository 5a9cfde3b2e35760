"""The vendor flavour comes from what KVM reports (a fresh vCPU's segment types), not from
/sys/module alone: a kernel with kvm_intel and kvm_amd both built in lists both there although
only kvm_amd registered under TCG (docs/kernel-matrix.md, the built-in vendor module trap)."""

import os

import pytest

from kvmtest import host
from reference.regs import SEGMENT_TYPES
from tests.conftest import require_kvm

VMX = (0xB, 0x3, 0xB)
SVM = (0xA, 0x2, 0x3)


def test_reset_types_are_the_models_segment_types():
    for family, types in host.RESET_TYPES.items():
        assert types == tuple(SEGMENT_TYPES[family][s] for s in ("cs", "ss", "tr"))
    assert host.RESET_TYPES == {"vmx": VMX, "svm": SVM}


@pytest.mark.parametrize(
    "modules, types, backend",
    [
        (["kvm_intel", "kvm_amd"], SVM, "kvm_amd"),  # both built in, TCG: the trap
        (["kvm_intel", "kvm_amd"], VMX, "kvm_intel"),  # both built in, nested VMX
        (["kvm_amd"], SVM, "kvm_amd"),
        (["kvm_intel"], VMX, "kvm_intel"),
        (["kvm_pvm"], VMX, "kvm_pvm"),  # this host: kvm_pvm reports the VMX types
        (["kvm_intel", "kvm_pvm"], VMX, "kvm_pvm"),
        ([], SVM, "kvm_amd"),
        ([], VMX, "kvm_intel"),
    ],
)
def test_the_probe_decides_the_family(modules, types, backend):
    decision = host.decide_backend(modules, types)
    assert decision.backend == backend
    assert decision.how.startswith("probe: ")
    assert "/".join(f"{t:#x}" for t in types) in decision.how
    for other in set(modules) - {backend}:
        assert f"{other} listed but not what KVM runs" in decision.how


def test_without_a_probe_sys_module_is_all_there_is_and_it_says_so():
    decision = host.decide_backend(["kvm_amd"], None)
    assert decision.backend == "kvm_amd"
    assert decision.how.startswith("/sys/module only")
    assert host.decide_backend([], None).backend == "unknown"


def test_types_matching_no_vendor_fall_back_to_sys_module_and_say_so():
    decision = host.decide_backend(["kvm_intel"], (0x9, 0x3, 0xB))
    assert decision.backend == "kvm_intel" and "match neither" in decision.how


def test_probe_with_both_modules_listed_picks_what_kvm_reports(tmp_path, monkeypatch):
    """The built-in trap, with a fake /sys/module and a fake probe: the flavour is svm."""
    for name in ("kvm", "kvm_intel", "kvm_amd"):
        (tmp_path / name / "parameters").mkdir(parents=True)
    monkeypatch.setattr(host, "reset_segment_types", lambda device=None: SVM)
    assert host.vendor_modules(str(tmp_path)) == ["kvm_intel", "kvm_amd"]
    assert host.detect_backend(str(tmp_path)) == "kvm_amd"
    info = host._decide(host.HostInfo("6.1.176", "x86_64", "/dev/kvm"), SVM)
    info.vendor_modules = ["kvm_intel", "kvm_amd"]
    info = host._decide(info, SVM)
    assert (info.backend, info.flavour) == ("kvm_amd", "svm")
    assert info.to_json()["reset_segment_types"] == {"cs": 0xA, "ss": 0x2, "tr": 0x3}


def test_this_hosts_kvm_is_probed():
    require_kvm()
    types = host.reset_segment_types()
    assert types in (VMX, SVM)
    info = host.probe()
    assert info.reset_segment_types == dict(zip(("cs", "ss", "tr"), types, strict=True))
    if os.path.isdir("/sys/module/kvm_pvm"):  # the development host
        assert types == VMX and (info.backend, info.flavour) == ("kvm_pvm", "pvm")
    if types == SVM:
        assert (info.backend, info.flavour) == ("kvm_amd", "svm")


def test_no_device_means_no_probe():
    assert host.reset_segment_types("/nonexistent/kvm") is None
    info = host.probe("/nonexistent/kvm")
    assert info.reset_segment_types is None
    assert info.backend_decided_by.startswith("/sys/module only")
