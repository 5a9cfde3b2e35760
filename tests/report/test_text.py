"""The human report: aligned trace lines, a diff block per mismatch, totals and closing line."""

import re

from kvmtest.report import render_text
from kvmtest.report.text import BAR_WIDTH
from kvmtest.trace.result import Status
from tests.report import samples

CLOSING = re.compile(r"^(\d+) passed, (\d+) failed(, (\d+) skipped)?$")


def lines_of(text):
    assert not text.endswith("\n")  # print() adds the newline: the closing line stays last
    return text.split("\n")


def test_one_aligned_line_per_trace():
    summary = samples.mixed()
    lines = lines_of(render_text(summary))
    heads = [line for line in lines if not line.startswith(" ") and "(" in line]
    assert [h.split()[0] for h in heads] == ["PASS", "FAIL", "ERROR", "SKIP"]
    assert [h.split()[1] for h in heads] == [r.name for r in summary.results]
    assert len({h.index("(") for h in heads}) == 1  # the elapsed column lines up
    assert heads[0].endswith("(1.2 ms)")
    assert heads[1].endswith("2 mismatches")
    assert heads[2].endswith("GuestError: landing page not reached")
    assert heads[3].endswith("KVM_CAP_SPLIT_IRQCHIP missing")
    assert "       at stepper.S:40" in lines


def test_mismatch_block_has_every_field():
    text = render_text(samples.mixed())
    block = text.split("FAIL", 1)[1].split("ERROR", 1)[0]
    for expected in [
        "trace    init-while-halted  (corpus/init-while-halted.yaml)",
        "profile  mainline",
        "rules 4, 11, 12",
        "step 4 at init-while-halted.yaml:17  vcpu 1  mp_state",
        "expected (model)  HALTED (3)",
        "observed (KVM)    RUNNABLE (0)",
        "step 6 at init-while-halted.yaml:21  vm-wide  cs.base",
        "expected (model)  one of {0, 0x9f000}",
        "observed (KVM)    0xf0000",
    ]:
        assert expected in block, expected


def test_footer_totals_backend_profile_elapsed_and_closing_line():
    lines = lines_of(render_text(samples.mixed()))
    assert lines[-4] == "1 passed, 1 failed, 1 errors, 1 skipped"
    assert lines[-3] == "backend kvm_intel, profile mainline, host 6.18.44-fc x86_64"
    assert lines[-2] == "elapsed 521.0 ms"
    match = CLOSING.match(lines[-1])  # the error counts as failed on the CI closing line
    assert match and (match.group(1), match.group(2), match.group(4)) == ("1", "2", "1")


def test_closing_line_counts_match_the_summary():
    summary = samples.repeated()
    match = CLOSING.match(lines_of(render_text(summary))[-1])
    assert int(match.group(1)) == summary.count(Status.PASS) == 8
    assert int(match.group(2)) == summary.count(Status.FAIL) == 1


def test_repeats_share_a_line_and_failures_are_listed():
    lines = lines_of(render_text(samples.repeated()))
    heads = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert len(heads) == 2
    assert heads[0].startswith("FAIL   concurrent-init")
    assert "x 8" in heads[0] and "7 pass, 1 fail" in heads[0]
    listed = [line.strip() for line in lines if "repeat " in line]
    assert listed == ["repeat 6: FAIL (1.0 ms)  forbidden outcome both-lost"]


def test_outcome_histogram_scales_bars_and_marks_forbidden():
    lines = lines_of(render_text(samples.repeated()))
    rows = {line.split()[0]: line for line in lines if line.startswith("         ")}
    assert set(rows) == {"ap-first", "bsp-first", "sipi-first", "both-lost"}
    assert "#" * BAR_WIDTH in rows["ap-first"] and "#" * (BAR_WIDTH + 1) not in rows["ap-first"]
    assert rows["bsp-first"].count("#") == round(3 * BAR_WIDTH / 4)  # 3 against the largest 4
    assert "FORBIDDEN" in rows["both-lost"] and "!" * round(BAR_WIDTH / 4) in rows["both-lost"]
    assert rows["sipi-first"].split()[1:] == ["0", "allowed"]  # allowed, never seen
    assert all("FORBIDDEN" not in rows[k] for k in ("ap-first", "bsp-first", "sipi-first"))


def test_verbose_adds_context_for_passes_and_lists_every_repeat():
    quiet = render_text(samples.repeated())
    loud = render_text(samples.repeated(), verbose=True)
    assert "repeat 1: PASS" not in quiet
    assert all(f"repeat {i}: " in loud for i in range(1, 9))
    assert "(corpus/msi-init-sipi.yaml)" in loud and "(corpus/msi-init-sipi.yaml)" not in quiet


def test_long_error_messages_are_cut_without_verbose():
    message = "\n".join(f"frame {i}" for i in range(30))
    summary = samples.summary([samples.result("boom", Status.ERROR, message=message)])
    assert "frame 29" not in render_text(summary)
    assert "more lines (--verbose shows them)" in render_text(summary)
    assert "frame 29" in render_text(summary, verbose=True)


def test_odd_characters_never_reach_the_terminal_raw():
    text = render_text(samples.odd())
    text.encode("utf-8")  # a lone surrogate would make print() raise
    assert "\\ud800" in text
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text)
    assert "\\x1b" in text  # escaped, visible
    assert lines_of(text)[-1] == "1 passed, 2 failed, 1 skipped"


def test_empty_run_still_closes():
    assert lines_of(render_text(samples.empty()))[-1] == "0 passed, 0 failed, 0 skipped"
