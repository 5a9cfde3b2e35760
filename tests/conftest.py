"""Shared fixtures. Tests that need KVM take the `kvm` fixture.

Without /dev/kvm they skip, unless KVMTEST_REQUIRE_KVM=1 (as in .ci/run), which turns that skip
into a failure so a skip can never hide a broken run.
"""

import os

import pytest

REQUIRE_KVM = os.environ.get("KVMTEST_REQUIRE_KVM") == "1"


def kvm_unusable_reason() -> str | None:
    try:
        from kvmtest.kvm import DEVICE, available
    except ImportError as exc:
        return f"kvmtest.kvm does not import: {exc}"
    if not available():
        return "the /dev/kvm binding is not compiled in this installation"
    if not os.path.exists(DEVICE):
        return f"{DEVICE} is absent"
    if not os.access(DEVICE, os.R_OK | os.W_OK):
        return f"no read/write permission on {DEVICE}"
    return None


def require_kvm() -> None:
    """Skip (or, under KVMTEST_REQUIRE_KVM=1, fail) when KVM cannot be used."""
    reason = kvm_unusable_reason()
    if reason is None:
        return
    if REQUIRE_KVM:
        pytest.fail(f"KVMTEST_REQUIRE_KVM=1 but KVM is unusable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def kvm():
    require_kvm()
    from kvmtest.kvm import Kvm

    with Kvm() as handle:
        yield handle
