"""docs/races.md shows the explorer's real output: it must not drift from the code."""

import re
from pathlib import Path

import pytest

from kvmtest.sim.explore import Explorer, render
from kvmtest.suite import corpus_dir
from kvmtest.trace.load import load_trace

DOC = Path(__file__).resolve().parents[2] / "docs" / "races.md"


@pytest.mark.parametrize("profile", ["linux-3.9", "mainline"])
def test_worked_example_matches_the_explorer(profile):
    trace = load_trace(f"{corpus_dir()}/race-hlt-init-sipi.yaml")
    output = re.sub(r", [0-9.]+ ms", ", N ms", render(Explorer(trace, profile).run()))
    assert output in DOC.read_text()
