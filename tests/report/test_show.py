"""kvmtest show: the timeline table, the final state in words, the SVG, rules of mismatches."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmtest import rules
from kvmtest.cli.main import main
from kvmtest.coverage import rules_module
from kvmtest.report.svg import explore_svg, run_svg
from kvmtest.report.timeline import model_sentence, render_timeline
from kvmtest.sim.explore import Explorer
from kvmtest.sim.system import VcpuView
from kvmtest.trace import HostContext, load_trace, run_trace
from reference import GUEST, MpState

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "kvmtest" / "corpus"


def test_rule_titles_module_is_generated_from_the_docs():
    text = (ROOT / "kvmtest" / "_rule_titles.py").read_text(encoding="utf-8")
    assert text == rules_module(), (
        "kvmtest/_rule_titles.py is stale: `python -m kvmtest.coverage --rules-module "
        "> kvmtest/_rule_titles.py`"
    )


def test_a_mismatch_links_only_to_rules_of_its_trace():
    assert rules.rules_for("mp_state", ["3", "12", "19"]) == ["12", "19"]
    assert rules.rules_for("cs.base", ["13", "39"]) == ["13"]
    assert rules.rules_for("result", ["13"]) == ["13"]  # none concerns it: the trace's rules
    assert rules.link("22") == "docs/semantics.md#rule-22"
    assert rules.describe("d7.3").startswith("quirk d7.3: SIPI to a non-IR vCPU")


def test_final_sentences_say_what_the_state_means():
    waiting = VcpuView(1, MpState.INIT_RECEIVED, "blocked in KVM_RUN", "", 0, 0xF000, 0xFFF0, "")
    assert "no SIPI is pending: it will never start" in model_sentence(waiting)
    started = waiting._replace(pending="SIPI", sipi_vector=0x10)
    assert "SIPI 0x10 is pending: it starts at 1000:0000" in model_sentence(started)
    running = waiting._replace(mp_state=MpState.RUNNABLE, cs_selector=GUEST, rip=GUEST)
    assert "guest-owned" in model_sentence(running)


def _model_run(name, profile="mainline"):
    trace = load_trace(str(CORPUS / name))
    return trace, run_trace(trace, profile, HostContext("reference"), timeline=True)


def test_reference_timeline_has_a_block_per_step_within_100_columns():
    trace, result = _model_run("guest-init-sipi-xapic.yaml")
    text = render_timeline(result)
    assert text.count("\nstep ") == len(trace.steps)
    assert "sends INIT -> APIC 1" in text and "sends SIPI 0x10 -> APIC 1" in text
    assert "KVM " not in text  # no KVM side without KVM
    assert max(len(line) for line in text.splitlines()) <= 100


def test_eight_vcpus_show_only_what_a_step_touched():
    _, result = _model_run("guest-init-sipi-all-but-self-8-x2apic.yaml")
    text = render_timeline(result)
    assert "unchanged)" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_run_svg_draws_an_arrow_per_target_and_a_band_per_vcpu_and_step():
    trace, result = _model_run("guest-init-sipi-all-but-self-4-xapic.yaml")
    root = ET.fromstring(run_svg(trace, result))
    ns = "{http://www.w3.org/2000/svg}"
    arrows = [e for e in root.iter(ns + "line") if "arrow-init" in e.get("marker-end", "")]
    assert len(arrows) == 3  # all-but-self from the BSP: three APs
    bands = [e for e in root.iter(ns + "rect") if e.find(ns + "title") is not None]
    assert len(bands) == 4 * len(result.timeline)


def test_explorer_keeps_a_shortest_schedule_per_outcome():
    trace = load_trace(str(CORPUS / "race-hlt-init-sipi.yaml"))
    found = Explorer(trace, "linux-3.9").run()
    assert set(found.shortest) == set(found.outcomes)
    violating = next(iter(found.violations))
    assert len(found.shortest[violating]) == len(found.shortest_violation)
    ET.fromstring(explore_svg(found))


def test_show_cli_prints_the_table_and_writes_the_svg(tmp_path, capsys):
    out = tmp_path / "run.svg"
    path = str(CORPUS / "msi-init-sipi.yaml")
    code = main(["show", path, "--backend", "reference", "--svg", str(out)])
    text = capsys.readouterr().out
    assert code in (0, 4)
    assert "final state:" in text and "vCPU 1" in text
    ET.fromstring(out.read_text(encoding="utf-8"))


@pytest.mark.kvm
def test_show_on_kvm_marks_differences_and_names_rules(capsys):
    from tests.conftest import require_kvm

    require_kvm()
    path = str(CORPUS / "guest-init-sipi-xapic.yaml")
    code = main(["show", path, "--backend", "kvm", "--profile", "linux-3.9"])
    text = capsys.readouterr().out
    assert code == 1
    assert "*RUNNABLE" in text  # KVM woke the AP, the 3.9 model keeps it HALTED
    assert "(docs/semantics.md#rule-19)" in text
