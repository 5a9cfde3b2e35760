"""KTAP version 1 (the kernel's Documentation/dev-tools/ktap.rst), the format KernelCI reads.

One top-level test per trace, in the order the traces ran:

    KTAP version 1
    1..4
    ok 1 msi-init-sipi
    # init-while-halted: halted.yaml:17: step 4: vcpu 1 mp_state: expected 0x3, observed 0x1
    not ok 2 init-while-halted
    # smp-boot: GuestError: no landing page
    not ok 3 smp-boot # ERROR GuestError: no landing page
    ok 4 split-irqchip # SKIP KVM_CAP_SPLIT_IRQCHIP missing
    # hung-trace: timed out after 60 s (the trace's VM is abandoned)
    not ok 5 hung-trace # TIMEOUT timed out after 60 s (the trace's VM is abandoned)
    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:2

A trace run several times (--repeat) is one test with a subtest per repetition (`repeat-1`,
`repeat-2`, ...), so the top-level names stay stable whatever the repeat count. Diagnostics
come before the result line they explain, one line per mismatch, and an error's or a
timeout's reason is a diagnostic line too. Names are trace names, the same on every host and
under every profile. Under a runner (KSFT_TAP_LEVEL set; the caller decides) the version line
is left out.

`KtapStream` writes the same document while the run goes on: the version line and the plan
first, then each trace's result as soon as it completes (numbered in completion order, flushed
at once), so that a runner's timeout or a killed guest still leaves every finished result in
the log. `render_ktap` is the whole document at once, in the order of the results.
"""

import re
import threading

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
    lines = _header(len(groups), nested, preamble_lines(summary.judged, summary.not_judged))
    for number, group in enumerate(groups, 1):
        lines.extend(_group_lines(group, number))
    lines.extend(_trailer(summary))
    return "\n".join(lines)


class KtapStream:
    """KTAP written as results complete: `start()`, then `add(result)` from any thread (or
    `add_group([results])`), then `finish(summary)` for the trailer.

    `tests` is the plan: the number of top-level tests (traces) that will be reported.
    `repeats` results of one trace (same name and path) make one test with a subtest per
    repetition, written when the last of them completes.
    """

    def __init__(self, stream, tests: int, repeats: int = 1, nested=False, preamble=()):
        self.stream = stream
        self.tests = tests
        self.repeats = max(1, repeats)
        self.nested = nested
        self.preamble = list(preamble)
        self._lock = threading.Lock()
        self._pending: dict = {}
        self._number = 0

    def start(self) -> None:
        self._write(_header(self.tests, self.nested, self.preamble))

    def add(self, result) -> None:
        with self._lock:
            key = (result.name, result.path)
            waiting = self._pending.setdefault(key, [])
            waiting.append(result)
            if len(waiting) < self.repeats:
                return
            del self._pending[key]
        self.add_group(waiting)

    def add_group(self, results) -> None:
        (group,) = group_results(results)
        with self._lock:
            self._number += 1
            self._write(_group_lines(group, self._number))

    def finish(self, summary) -> None:
        with self._lock:
            leftovers = list(self._pending.values())
            self._pending.clear()
        for results in leftovers:  # repeats that never all came back: report what did
            self.add_group(results)
        with self._lock:
            self._write(_trailer(summary))

    def _write(self, lines) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


def _header(tests: int, nested: bool, preamble) -> list:
    lines = [] if nested else [VERSION_LINE]
    lines.append(f"1..{tests}")
    for text in preamble:
        lines.extend(diagnostic(text))
    return lines


def preamble_lines(judged: str, not_judged: str) -> list:
    """What the run judges and what it does not, for diagnostics before the first result."""
    lines = [f"kvmtest: judged: {judged}"] if judged else []
    if not_judged:
        lines.append(f"kvmtest: not judged: {not_judged}")
    return lines


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
        lines[:0] = _prefixed(trace_name, result.message or "harness error")
        reason = _directive_data(message[0]) if message else "harness error"
        directive = "TIMEOUT" if getattr(result, "timed_out", False) else "ERROR"
        lines.append(f"not ok {number} {name} # {directive} {reason}")
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
    judged = [
        line
        for text in preamble_lines(summary.judged, summary.not_judged)
        for line in diagnostic(text)
    ]
    if summary.interrupted:
        judged += diagnostic(f"kvmtest: {summary.interrupted}")
    return (
        judged
        + diagnostic(
            f"kvmtest: backend {summary.backend}, profile {summary.profile}, "
            f"elapsed {format_duration(summary.elapsed)}"
        )
        + diagnostic(
            f"Totals: pass:{count(Status.PASS)} fail:{count(Status.FAIL)} xfail:0 xpass:0 "
            f"skip:{count(Status.SKIP)} error:{count(Status.ERROR)}"
        )
    )
