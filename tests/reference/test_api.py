"""The public surface the rest of kvmtest calls (names, argument checks, step decomposition)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import reference
from reference import FLAVOURS, GUEST, PROFILES, Machine, ModelError, MpState, RunResult, Step

from .util import INIT, SIPI, msi, vm


def test_exports():
    assert {"linux-3.9", "linux-3.10", "linux-6.1", "linux-6.12", "mainline"} <= set(PROFILES)
    assert {"linux-4.18", "linux-5.10"} <= set(PROFILES)  # kernels people run (kernel matrix)
    assert FLAVOURS == ("vmx", "svm", "pvm")
    assert repr(GUEST) == "GUEST" and reference.GUEST is GUEST
    assert [reference.flavour_for_backend(b) for b in ("kvm_intel", "kvm_amd", "kvm_pvm")] == [
        "vmx",
        "svm",
        "pvm",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"profile": "linux-2.6"}, "unknown profile"),
        ({"flavour": "tdx"}, "unknown flavour"),
        ({"irqchip": "userspace"}, "irqchip"),
        ({"nr_vcpus": 0}, "at least one"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ModelError, match=message):
        Machine(**kwargs)


def test_split_irqchip_keeps_the_lapic_in_the_kernel():
    m = vm("mainline", irqchip="split")
    assert msi(m, INIT, 1) == 1
    assert m.get_mp_state(1) == MpState.INIT_RECEIVED


def test_no_irqchip_hlt_exits_to_userspace():
    m = Machine(2, "mainline", irqchip="none")
    assert m.enter_run(1) == RunResult.RUNS
    m.guest_hlt(1)
    assert (m.run_status(1), m.vcpus[1].mp_state) == ("KVM_EXIT_HLT", MpState.RUNNABLE)


def test_atomic_steps_decomposition():
    m = vm("linux-3.9")
    assert m.atomic_steps("guest_hlt", 1) == [Step("hlt_exit", (1,)), Step("emulate_halt", (1,))]
    assert m.atomic_steps("enter_run", 1) == [Step("run_entry", (1,))]
    assert m.atomic_steps("signal_msi", 1, 2, 3) == [Step("signal_msi", (1, 2, 3))]
    with pytest.raises(ModelError):
        m.atomic_steps("wake", 1)  # reactions come from pending_steps, not from operations
    assert not m.can_apply(Step("hlt_exit", (0,)))  # the BSP is not in guest mode
    assert m.can_apply(Step("get_mp_state", (0,)))


def test_step_refuses_a_disabled_reaction():
    m = vm("mainline")
    with pytest.raises(ModelError, match="not enabled"):
        m.step(1, "wake")


def test_enter_run_twice_and_immediate_exit_on_old_kernels():
    m = vm("mainline")
    m.enter_run(0)
    with pytest.raises(ModelError, match="already inside"):
        m.enter_run(0)
    with pytest.raises(ModelError, match="IMMEDIATE_EXIT"):
        vm("linux-3.10").enter_run(0, immediate_exit=True)


def test_smi_without_smm_support():
    assert Machine(2, "mainline", smm=False).smi(0) == -25
    assert Machine(2, "linux-3.10").smi(0) == -22


def test_sipi_received_can_be_read_only_in_linux_3_9():
    m = vm("linux-3.9")
    msi(m, INIT, 1)
    msi(m, SIPI, 1, 0x10)
    assert m.get_mp_state(1) == MpState.SIPI_RECEIVED


def test_reference_imports_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for path in Path(reference.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in stdlib, f"{path.name} imports {name}"
