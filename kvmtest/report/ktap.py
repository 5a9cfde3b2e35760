"""KTAP version 1 (the kernel's Documentation/dev-tools/ktap.rst), the format KernelCI reads.

One top-level test per trace, in the order the traces ran:

    KTAP version 1
    1..4
    ok 1 msi-init-sipi
    # init-while-halted: halted.yaml:17: step 4: vcpu 1 mp_state: expected 0x3, observed 0x1
    not ok 2 init-while-halted
    not ok 3 smp-boot # ERROR GuestError: no landing page
    ok 4 split-irqchip # SKIP KVM_CAP_SPLIT_IRQCHIP missing
    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:1

A trace run several times (--repeat) is one test with a subtest per repetition (`repeat-1`,
`repeat-2`, ...), so the top-level names stay stable whatever the repeat count. Diagnostics
come before the result line they explain, one line per mismatch. Under a runner
(KSFT_TAP_LEVEL set; the caller decides) the version line is left out.
"""

import re

from kvmtest.trace.result import Status

from ._format import ascii_line, format_duration, rules_label, text_lines
from ._group import TraceGroup, group_results
from ._outcomes import forbidden_rows, summary_line

VERSION_LINE = "KTAP version 1"
INDENT = "  "

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.,:+=@/\[\]()-]+")


def render_ktap(summary, nested: bool = False) -> str:
    """The run as KTAP text (no final newline); `nested` drops the top version line."""
    groups = group_results(summary.results)
    lines = [] if nested else [VERSION_LINE]
    lines.append(f"1..{len(groups)}")
    for number, group in enumerate(groups, 1):
        lines.extend(_group_lines(group, number))
    lines.extend(_trailer(summary))
    return "\n".join(lines)


def ktap_name(name) -> str:
    """A test name KTAP parsers keep intact: ASCII, no '#', no spaces, never empty."""
    safe = _NAME_UNSAFE.sub("_", ascii_line(name).replace("\\", " ")).strip("_")
    return safe or "unnamed"


def diagnostic(text) -> list:
    """Diagnostic lines ('# ...'), one per line of text, ASCII, never mistaken for a header."""
    lines = []
    for line in text_lines(text) or [""]:
        line = ascii_line(line)
        if line.startswith("Subtest:"):  # would open a subtest in kunit_parser.py
            line = "(" + line + ")"
        lines.append(f"# {line}".rstrip())
    return lines


def _directive_data(text) -> str:
    """Diagnostic data after a directive: one ASCII line without '#'."""
    return " ".join(ascii_line(text).replace("#", " ").split())


def _group_lines(group: TraceGroup, number: int) -> list:
    name = ktap_name(group.name)
    if not group.repeated:
        return _result_lines(group.results[0], number, name, name)
    lines = [
        INDENT + VERSION_LINE,
        f"{INDENT}# Subtest: {name}",
        f"{INDENT}1..{len(group.results)}",
    ]
    for sub_number, result in enumerate(group.results, 1):
        sub_name = f"repeat-{result.repeat + 1}"
        sub_lines = _result_lines(result, sub_number, sub_name, name, outcomes=False)
        lines.extend(INDENT + line for line in sub_lines)
    lines.extend(_outcome_diagnostics(name, group.outcomes, group.allowed))
    counts = ", ".join(
        f"{status.value}:{group.count(status)}"
        for status in (Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP)
    )
    lines.extend(diagnostic(f"{name}: {len(group.results)} repeats: {counts}"))
    status = group.status
    if status is Status.SKIP:
        reasons = sorted({ascii_line(r.message) for r in group.results} - {""})
        reason = "; ".join(reasons) or "all repeats skipped"
        lines.append(f"ok {number} {name} # SKIP {_directive_data(reason)}")
    elif status is Status.PASS:
        lines.append(f"ok {number} {name}")
    else:
        lines.append(f"not ok {number} {name}")
    return lines


def _result_lines(result, number: int, name: str, trace_name: str, outcomes=True) -> list:
    """Diagnostics for one run of a trace, then its result line.

    A repetition leaves its outcome counts to the group, which shows them summed.
    """
    lines = []
    status = result.status
    if status is Status.FAIL:
        lines.extend(
            diagnostic(
                f"{trace_name}: profile {result.profile}, rules {rules_label(result.rules)}, "
                f"{result.path}"
            )
        )
        for mismatch in result.mismatches:
            lines.extend(diagnostic(f"{trace_name}: {mismatch.describe()}"))
        lines.extend(_prefixed(trace_name, result.message))
    if outcomes:
        lines.extend(_outcome_diagnostics(trace_name, result.outcomes, result.allowed))
    if status is Status.PASS:
        lines.append(f"ok {number} {name}")
    elif status is Status.FAIL:
        lines.append(f"not ok {number} {name}")
    elif status is Status.ERROR:
        message = text_lines(result.message)
        if len(message) > 1:
            lines[:0] = _prefixed(trace_name, result.message)
        reason = _directive_data(message[0]) if message else "harness error"
        lines.append(f"not ok {number} {name} # ERROR {reason}")
    else:
        reason = _directive_data(result.message)
        lines.append(f"ok {number} {name} # SKIP {reason}".rstrip())
    return lines


def _prefixed(name: str, text) -> list:
    """Diagnostics for a multi-line message, every line naming the test, kunit style."""
    if not text_lines(text):
        return []
    return diagnostic("\n".join(f"{name}: {line}" for line in text_lines(text)))


def _outcome_diagnostics(name: str, outcomes: dict, allowed: dict) -> list:
    if not outcomes:
        return []
    lines = diagnostic(f"{name}: outcomes: {summary_line(outcomes, allowed)}")
    for row in forbidden_rows(outcomes, allowed):
        lines.extend(diagnostic(f"{name}: forbidden outcome {row.label} seen {row.count} times"))
    return lines


def _trailer(summary) -> list:
    """Run-wide diagnostics after the last result, kselftest style."""
    count = summary.count
    return diagnostic(
        f"kvmtest: backend {summary.backend}, profile {summary.profile}, "
        f"elapsed {format_duration(summary.elapsed)}"
    ) + diagnostic(
        f"Totals: pass:{count(Status.PASS)} fail:{count(Status.FAIL)} xfail:0 xpass:0 "
        f"skip:{count(Status.SKIP)} error:{count(Status.ERROR)}"
    )
