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


def test_every_adjacent_pair_differs_in_a_short_trace():
    names = list(reference.PROFILES)
    for a, b in zip(names, names[1:], strict=False):
        found = diff_profiles(reference.PROFILES[a], reference.PROFILES[b], max_steps=2)
        assert found, (a, b)
