"""docs/model.md cannot drift from the model: its generated section must equal describe's."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference import PROFILES, describe

DOC = Path(__file__).resolve().parents[2] / "docs" / "model.md"


def test_doc_tables_match_the_model():
    assert describe.doc_section(DOC.read_text()) == describe.generated_markdown()


@pytest.mark.parametrize("profile", list(PROFILES))
def test_transition_table_and_graph(profile):
    table = describe.transition_table(profile)
    assert table.count("\n| ") == len(describe.transition_rows(profile)) + 1
    dot = describe.state_graph_dot(profile)
    assert dot.startswith(f'digraph "{profile}"')
    if profile == "linux-3.9":  # a SIPI goes through SIPI_RECEIVED, reset at KVM_RUN
        edges = ['"INIT_RECEIVED" -> "SIPI_RECEIVED"', '"SIPI_RECEIVED" -> "RUNNABLE"']
    else:
        edges = ['"INIT_RECEIVED" -> "RUNNABLE"']
    assert all(e in dot for e in edges), dot


def test_sipi_received_appears_only_in_linux_3_9():
    """The generated tables show the patch's main visible effect."""
    for name in PROFILES:
        reported = [r for r in describe.transition_rows(name) if r[4] == "reports SIPI_RECEIVED"]
        assert bool(reported) == (name == "linux-3.9"), name
