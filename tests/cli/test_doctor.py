"""`kvmtest doctor` on this host, and with the device hidden or unusable."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import require_kvm


def doctor(*args):
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", "doctor", *args], capture_output=True, text=True
    )


def test_doctor_describes_this_host():
    require_kvm()
    result = doctor("--json")
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert info["full_mode"] and info["api_version"] == 12
    assert info["kernel"] == os.uname().release
    backends = [b for b in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{b}")]
    assert info["vendor_modules"] == backends
    # The backend is what KVM reported (a fresh vCPU's segment types), not /sys/module alone.
    from kvmtest.host import decide_backend

    types = info["reset_segment_types"]
    assert types is not None and info["backend_decided_by"].startswith("probe: ")
    assert info["backend"] == decide_backend(backends, tuple(types.values())).backend
    assert info["capabilities"]["KVM_CAP_IRQCHIP"] == 1
    text = doctor()
    assert "verdict: full conformance mode possible" in text.stdout
    assert f"decided by      {info['backend_decided_by']}" in text.stdout


@pytest.mark.parametrize(
    "device, reason",
    [("/nonexistent/kvm", "does not exist"), ("/dev/null", "is not a KVM device")],
)
def test_doctor_without_usable_device_says_reference_only(device, reason):
    result = doctor("--device", device)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert reason in result.stdout and "verdict: reference-only mode" in result.stdout
    assert "what to do:" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m")
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm to hide")
def test_doctor_with_dev_kvm_hidden_by_a_bind_mount():
    script = f"mount --bind /dev/null /dev/kvm && exec {sys.executable} -m kvmtest doctor"
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "reference-only" in result.stdout


def test_kernel_release_chooses_profile():
    from kvmtest.host import default_profile

    assert default_profile("6.18.44-fc-v595") == "mainline"
    assert default_profile("6.12.100+deb12-amd64") == "linux-6.12"
    assert default_profile("6.1.0-50-amd64") == "linux-6.1"
    assert default_profile("3.10.0") == "linux-3.10"
    assert default_profile("3.9.11") == "linux-3.9"
