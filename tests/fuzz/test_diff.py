"""docs/profile-diffs.md is generated from the model; kvmtest diff-profiles finds boundaries."""

from pathlib import Path

import reference
from kvmtest.fuzz.diff import diff_profiles, profile_diffs_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "profile-diffs.md"


def test_profile_diffs_doc_is_up_to_date():
    assert DOC.read_text() == profile_diffs_markdown(), (
        "regenerate: python -m kvmtest.fuzz.diff > docs/profile-diffs.md"
    )


def test_a_profile_does_not_differ_from_itself():
    p = reference.PROFILES["mainline"]
    assert diff_profiles(p, p, max_steps=1) == []


# Switches no host-ioctl trace of two steps can tell apart: INIT latched in VMX root or with
# GIF = 0 needs a nested guest, and KVM_VCPUEVENT_VALID_PAYLOAD is a flag no trace step sets.
UNSEEN_BY_HOST_TRACES = {"init_blocked_nested", "vcpu_events_flags"}


def _differing_switches(a, b) -> set:
    return {name for name in reference.SWITCHES if getattr(a, name) != getattr(b, name)}


def test_every_adjacent_pair_differs_in_a_short_trace():
    """...unless the two differ only where a host-ioctl trace cannot look (linux-4.18 and
    linux-5.10: nested INIT latching and the PAYLOAD flag)."""
    names = list(reference.PROFILES)
    for a, b in zip(names, names[1:], strict=False):
        pa, pb = reference.PROFILES[a], reference.PROFILES[b]
        found = diff_profiles(pa, pb, max_steps=2)
        assert found or _differing_switches(pa, pb) <= UNSEEN_BY_HOST_TRACES, (a, b)
