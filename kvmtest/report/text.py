"""The human report: one aligned line per trace, a compact diff under each mismatch, totals.

    PASS   msi-init-sipi        (1.2 ms)
    FAIL   init-while-halted    (3.4 ms)  2 mismatches
           trace    init-while-halted  (corpus/init/halted.yaml)
           profile  mainline   rules 3, 7
           step 4 at halted.yaml:17  vcpu 1  mp_state
             expected (model)  0x3
             observed (KVM)    0x1

Repeats of a trace (--repeat) share one line with an `x N` count; failures and errors among
them are listed one by one under it. The report ends with the totals line, the backend and
profile, the elapsed time, and a closing line `N passed, N failed, N skipped` alone.
"""

from kvmtest.trace.result import Status

from ._format import (
    STATUS_WORD,
    format_duration,
    one_line,
    repeat_label,
    rules_label,
    text_lines,
    vcpu_label,
)
from ._group import TraceGroup, group_results
from ._outcomes import outcome_rows
from .timeline import render_timeline, rule_lines

STATUS_WIDTH = 5  # len("ERROR")
NAME_WIDTH_MAX = 40
INDENT = " " * (STATUS_WIDTH + 2)
BAR_WIDTH = 30
MESSAGE_LINES = 10  # lines of an error message shown without --verbose


def render_text(summary, verbose: bool = False) -> str:
    """The whole report as text (no final newline: print() adds it)."""
    groups = group_results(summary.results)
    width = min(NAME_WIDTH_MAX, max((len(one_line(g.name)) for g in groups), default=0))
    lines = []
    for group in groups:
        lines.extend(_group_lines(group, width, verbose))
    if lines:
        lines.append("")
    lines.extend(_footer(summary))
    return "\n".join(lines)


def render_result(result, verbose: bool = True) -> str:
    """One result as the report shows it (its line and the diff under it), no footer."""
    return "\n".join(_single_lines(result, len(one_line(result.name)), verbose))


def _group_lines(group: TraceGroup, width: int, verbose: bool) -> list:
    if not group.repeated:
        return _single_lines(group.results[0], width, verbose)
    return _repeated_lines(group, width, verbose)


def _head(status: Status, name: str, width: int) -> str:
    return f"{STATUS_WORD[status]:<{STATUS_WIDTH}}  {one_line(name):<{width}}"


def _single_lines(result, width: int, verbose: bool) -> list:
    head = f"{_head(result.status, result.name, width)}  ({format_duration(result.elapsed)})"
    body = []
    if result.status is Status.FAIL and result.mismatches:
        head += f"  {_mismatch_count(result)}"
        body = _failure_block(result, INDENT)
    elif result.status is Status.FAIL:  # no mismatch: a forbidden outcome, say
        head, body = _with_message(head, result.message, verbose)
        body = _context_lines(result, INDENT) + body
    elif result.status in (Status.ERROR, Status.SKIP):
        head, body = _with_message(head, result.message, verbose)
    elif verbose:
        body = _context_lines(result, INDENT) + _message_lines(result.message, INDENT, verbose)
    body += _histogram(result.outcomes, result.allowed, INDENT)
    if verbose and result.timeline:
        body += ["", *render_timeline(result).split("\n"), ""]
    return [head.rstrip(), *body]


def _repeated_lines(group: TraceGroup, width: int, verbose: bool) -> list:
    runs = len(group.results)
    mean = format_duration(group.elapsed / runs)
    counts = ", ".join(
        f"{group.count(status)} {status.value}"
        for status in (Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP)
        if group.count(status)
    )
    lines = [f"{_head(group.status, group.name, width)}  x {runs}  ({mean} mean)  {counts}"]
    first = group.results[0]
    if verbose or group.status is Status.FAIL:
        lines.extend(_context_lines(first, INDENT))
    listed = group.results if verbose else group.with_status(Status.FAIL, Status.ERROR)
    for result in listed:
        head = f"{INDENT}{repeat_label(result)}: {STATUS_WORD[result.status]} "
        head += f"({format_duration(result.elapsed)})"
        if result.status is Status.FAIL and result.mismatches:
            lines.append(f"{head}  {_mismatch_count(result)}")
            lines.extend(_mismatch_lines(result, INDENT + "  "))
            lines.extend(_message_lines(result.message, INDENT + "  ", verbose))
        else:
            head, body = _with_message(head, result.message, verbose, INDENT + "  ")
            lines.append(head)
            lines.extend(body)
    if not verbose:
        reasons = sorted({one_line(r.message) for r in group.with_status(Status.SKIP)} - {""})
        lines.extend(f"{INDENT}skipped: {reason}" for reason in reasons)
    lines.extend(_histogram(group.outcomes, group.allowed, INDENT))
    return lines


def _mismatch_count(result) -> str:
    n = len(result.mismatches)
    return f"{n} mismatch" + ("" if n == 1 else "es")


def _with_message(head: str, message, verbose: bool, indent: str = INDENT):
    """The first line of an error or skip reason on the trace line, the rest under it."""
    lines = text_lines(message)
    if not lines:
        return head, []
    return f"{head}  {lines[0]}", _message_lines("\n".join(lines[1:]), indent, verbose)


def _message_lines(message, indent: str, verbose: bool) -> list:
    lines = text_lines(message)
    if not verbose and len(lines) > MESSAGE_LINES:
        hidden = len(lines) - MESSAGE_LINES
        lines = lines[:MESSAGE_LINES] + [f"... {hidden} more lines (--verbose shows them)"]
    return [indent + line for line in lines]


def _context_lines(result, indent: str) -> list:
    """Which trace, judged by which profile, checking which rules."""
    rules = one_line(rules_label(result.rules))
    lines = [
        f"{indent}trace    {one_line(result.name)}  ({one_line(result.path)})",
        f"{indent}profile  {one_line(result.profile)}   rules {rules}",
    ]
    if result.tags:
        lines.append(f"{indent}tags     {one_line(', '.join(map(str, result.tags)))}")
    lines.append(f"{indent}checked  {judged_line(result)}")
    return lines


def judged_line(result) -> str:
    """What was judged: compared fields, fields the model could not know, pinned values."""
    unspecified = getattr(result, "unspecified", 0)
    return (
        f"{result.compared} compared with KVM, {result.not_compared} not compared "
        f"(guest-owned: the guest ran code), "
        + (f"{unspecified} unspecified by the manual, " if unspecified else "")
        + f"{result.pins_checked} pinned values"
    )


def _failure_block(result, indent: str) -> list:
    return (
        _context_lines(result, indent)
        + _mismatch_lines(result, indent)
        + _message_lines(result.message, indent, verbose=True)
    )


def _mismatch_lines(result, indent: str) -> list:
    lines = []
    for m in result.mismatches:
        where = f"step {m.step + 1} at {one_line(m.location)}"
        lines.append(f"{indent}{where}  {vcpu_label(m.vcpu)}  {one_line(m.field)}")
        expected, observed = m.sides
        lines.append(f"{indent}  {expected:<17} {one_line(m.show(m.expected))}")
        lines.append(f"{indent}  {observed:<17} {one_line(m.show(m.observed))}")
        lines.extend(rule_lines(m, result.rules, indent + "  "))
    return lines


def _histogram(outcomes: dict, allowed: dict, indent: str) -> list:
    """Outcome counts as bars scaled to the largest, next to whether the model allows each."""
    rows = outcome_rows(outcomes, allowed)
    if not rows:
        return []
    label_width = max(len(one_line(row.label)) for row in rows)
    count_width = max(len(str(row.count)) for row in rows)
    largest = max(row.count for row in rows) or 1
    runs = sum(row.count for row in rows)
    lines = [f"{indent}outcomes over {runs} runs (allowed = predicted by the model):"]
    for row in rows:
        length = round(row.count * BAR_WIDTH / largest)
        length = max(length, 1) if row.count else 0
        bar = ("#" if row.allowed else "!") * length
        verdict = "allowed" if row.allowed else "FORBIDDEN  <-- not allowed by the model"
        lines.append(
            f"{indent}  {one_line(row.label):<{label_width}}  {bar:<{BAR_WIDTH}}  "
            f"{row.count:>{count_width}}  {verdict}"
        )
    never = [one_line(row.label) for row in rows if row.allowed and not row.count]
    if never and runs > 1:
        lines.append(f"{indent}allowed but never observed in {runs} runs: " + " | ".join(never))
    return lines


def _footer(summary) -> list:
    passed, failed = summary.count(Status.PASS), summary.count(Status.FAIL)
    errors, skipped = summary.count(Status.ERROR), summary.count(Status.SKIP)
    where = f"backend {one_line(summary.backend)}, profile {one_line(summary.profile)}"
    host = _host_label(summary.host)
    if host:
        where += f", host {host}"
    # The last line is the plain closing line CI systems read; an error counts as a failure
    # there, so a crashed trace can never look like a clean run.
    judged = [f"judged: {one_line(summary.judged)}"] if summary.judged else []
    if summary.not_judged:
        judged.append(f"not judged: {one_line(summary.not_judged)}")
    if summary.interrupted:
        judged.append(one_line(summary.interrupted))
    return [
        f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped",
        where,
        *judged,
        f"elapsed {format_duration(summary.elapsed)}",
        f"{passed} passed, {failed + errors} failed, {skipped} skipped",
    ]


def _host_label(host) -> str:
    if not isinstance(host, dict):
        return ""
    parts = [one_line(host[key]) for key in ("kernel", "machine") if host.get(key)]
    return " ".join(parts)
