"""docs/findings.md stays true: its catalog is regenerated from reference/architecture.py, and
its host rows are what this host's KVM shows under ``sdm`` (skipped without KVM)."""

from pathlib import Path

from kvmtest.report import findings as render

DOC = Path(__file__).resolve().parents[2] / "docs" / "findings.md"


def test_the_catalog_is_the_reference():
    text = DOC.read_text(encoding="utf-8")
    assert render.section(text, "catalog") == render.catalog_markdown(), (
        "regenerate: python -m kvmtest.findings_doc"
    )


def test_the_host_section_names_real_switches_and_manual_sections():
    from reference import architecture as arch

    host = render.section(DOC.read_text(encoding="utf-8"), "host")
    for line in host.splitlines():
        if line.startswith("#### "):
            switch = line.split("`")[1]
            assert switch in arch.ARCH_RULES, line
            assert arch.SDM.cite(switch).section in host


def test_the_host_rows_are_what_this_kvm_shows(kvm):
    from kvmtest.findings_doc import host_section

    markdown, report = host_section()
    assert report.exit_code == 0, (report.unexplained, report.errors)
    documented = render.table_rows(render.section(DOC.read_text(encoding="utf-8"), "host"))
    assert render.table_rows(markdown) == documented, "regenerate docs/findings.md on this host"
