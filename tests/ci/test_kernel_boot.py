"""End to end: boot Debian's 6.12 kernel under QEMU and run part of the corpus inside it.

Slow (about a minute under TCG, plus a one-time download of the kernel package), so it runs only
with KVMTEST_MATRIX=1; KVMTEST_MATRIX_KERNEL and KVMTEST_MATRIX_ARGS choose another kernel or
selection (defaults: debian-6.12, --tag msi).
"""

import json
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from kvmtest.matrix import summary as ms

pytestmark = pytest.mark.skipif(
    os.environ.get("KVMTEST_MATRIX") != "1", reason="boots a kernel: set KVMTEST_MATRIX=1"
)


def test_boot_debian_kernel_and_run_the_suite(tmp_path):
    kernel = os.environ.get("KVMTEST_MATRIX_KERNEL", "debian-6.12")
    selection = shlex.split(os.environ.get("KVMTEST_MATRIX_ARGS", "--tag msi"))
    out = tmp_path / "results"
    command = [sys.executable, "-m", "kvmtest.matrix", "boot", kernel, "--out", str(out)]
    result = subprocess.run([*command, *selection], capture_output=True, text=True, timeout=1800)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    console = (out / "console.log").read_text(errors="replace")[-3000:]
    assert result.returncode == 0, f"{report}\nconsole:\n{console}"
    ktap = (out / "ktap.txt").read_text()
    assert ktap.startswith("KTAP version 1")
    traces = ms.parse_ktap(ktap)
    assert traces and set(traces.values()) <= {ms.PASS, ms.SKIP}
    assert ms.backend_from_banner((out / "stderr.txt").read_text()) == "kvm_amd"
    # the guest's console carried the KTAP results as they came (what LAVA reads)
    full_console = (out / "console.log").read_text(errors="replace")
    assert "KTAP version 1" in full_console
    assert all(f" {name}" in full_console for name in traces)
    report = json.loads((out / "run.json").read_text())
    assert ms.traces_from_report(report) == traces  # the matrix reads this, not the KTAP
    # the flavour inside the booted kernel came from what its KVM reported, not /sys/module
    host = report["host"]
    assert host["backend"] == "kvm_amd" and host["flavour"] == "svm"
    assert host["reset_segment_types"] == {"cs": 0xA, "ss": 0x2, "tr": 0x3}
    assert host["backend_decided_by"].startswith("probe: ")
    suites = ET.parse(out / "junit.xml").getroot()
    cases = list(suites.iter("testcase"))
    assert len(cases) == len(traces), (len(cases), len(traces))
    assert not [c.get("name") for c in cases if c.find("failure") is not None]
    assert not [c.get("name") for c in cases if c.find("error") is not None]
    assert "Kernel matrix" in result.stdout and kernel in result.stdout
