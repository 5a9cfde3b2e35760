"""--format markdown: the summary for CI job pages, from a RunSummary or a saved JSON report."""

import json
import subprocess
import sys

from kvmtest.report import render_json, render_markdown
from kvmtest.report.markdown import markdown_from_report
from tests.report import samples


def test_mixed_run_lists_what_did_not_pass():
    text = render_markdown(samples.mixed())
    lines = text.splitlines()
    assert lines[0] == "### kvmtest: FAILED: 1 failed, 1 errors, 1 skipped, 1 passed"
    rows = [line for line in lines if line.startswith("| ") and "status" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| FAIL", "| ERROR", "| SKIP"]
    assert "msi-init-sipi" not in text  # passes are counted, not listed
    assert "2 mismatches: step 4: vcpu 1 mp\\_state: expected" in rows[0]
    assert "`init-while-halted.yaml:17`" in rows[0]  # the first mismatch's place
    assert all(row.count(" | ") == 3 for row in rows)  # no cell breaks the table


def test_repeats_and_forbidden_outcomes():
    text = render_markdown(samples.repeated())
    assert "forbidden outcome both-lost x1 (1 of 8 repeats)" in text


def test_saved_report_renders_the_same(tmp_path):
    summary = samples.mixed()
    path = tmp_path / "run.json"
    path.write_text(render_json(summary))
    assert markdown_from_report(json.loads(path.read_text())) == render_markdown(summary)
    printed = subprocess.run(
        [sys.executable, "-m", "kvmtest.report.markdown", str(path)], capture_output=True, text=True
    )
    assert printed.returncode == 0 and printed.stdout.rstrip("\n") == render_markdown(summary)


def test_cli_markdown_says_what_was_judged():
    result = subprocess.run(
        [sys.executable, "-m", "kvmtest", "run", "--backend", "reference", "--format", "markdown"]
        + ["--profile", "linux-3.9", "-k", "msi-init-sipi*"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 4, result.stdout + result.stderr  # nothing to check: skipped
    assert result.stdout.startswith("### kvmtest: NOTHING JUDGED: 0 failed")
    assert "**Not judged:** this kernel's KVM" in result.stdout
