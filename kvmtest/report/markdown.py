"""A Markdown summary for CI job pages (GitHub's $GITHUB_STEP_SUMMARY, GitLab's job log or a
merge-request note): what was judged, the totals, and a table of every trace that did not pass
with its reason.

    ### kvmtest: 1 failed, 1 error, 1 skipped, 1 passed

    **Judged:** this kernel's KVM against the model (profile mainline)

    | status | trace | file | reason |
    |---|---|---|---|
    | FAIL | init-while-halted | kvmtest/corpus/init-while-halted.yaml:3 | 2 mismatches: ... |
"""

from kvmtest.trace.result import Status

from ._format import STATUS_WORD, format_duration, one_line
from ._group import group_results
from ._outcomes import forbidden_rows
from ._paths import relative_path

REASON_WIDTH = 160  # characters of a reason shown in a table cell


def render_markdown(summary) -> str:
    """The summary as Markdown (no final newline)."""
    count = summary.count
    passed, failed = count(Status.PASS), count(Status.FAIL)
    errors, skipped = count(Status.ERROR), count(Status.SKIP)
    parts = [f"{failed} failed", f"{errors} errors", f"{skipped} skipped", f"{passed} passed"]
    verdict = "FAILED" if failed or errors else ("NOTHING JUDGED" if not passed else "passed")
    lines = [f"### kvmtest: {verdict}: {', '.join(parts)}", ""]
    if summary.judged:
        lines.append(f"**Judged:** {_cell(summary.judged)}  ")
    if summary.not_judged:
        lines.append(f"**Not judged:** {_cell(summary.not_judged)}  ")
    lines.append(
        f"backend `{_code(summary.backend)}`, profile `{_code(summary.profile)}`, "
        f"{len(group_results(summary.results))} traces, "
        f"elapsed {format_duration(summary.elapsed)}"
    )
    host = summary.host if isinstance(summary.host, dict) else {}
    if host.get("kernel"):
        lines[-1] += f", kernel `{_code(host['kernel'])}`"
    rows = []
    for group in group_results(summary.results):
        if group.status is Status.PASS:
            continue
        worst = next(r for r in group.results if r.status is group.status)
        where = relative_path(group.path, summary.bases)
        if worst.line:
            where += f":{worst.line}"
        runs = f" ({group.count(group.status)} of {len(group.results)} repeats)"
        rows.append(
            f"| {STATUS_WORD[group.status]} | {_cell(group.name)} | `{_code(where)}` | "
            f"{_cell(_reason(worst))}{runs if group.repeated else ''} |"
        )
    if rows:
        lines += ["", "| status | trace | file | reason |", "|---|---|---|---|", *rows]
    else:
        lines += ["", f"All {passed} judged traces passed."]
    return "\n".join(lines)


def _reason(result) -> str:
    if result.status is Status.FAIL and result.mismatches:
        n = len(result.mismatches)
        first = result.mismatches[0]
        field = f"vcpu {first.vcpu} {first.field}" if first.vcpu is not None else first.field
        return (
            f"{n} mismatch{'es' if n > 1 else ''}: step {first.step + 1} {field}: expected "
            f"{first.show(first.expected)}, observed {first.show(first.observed)}"
        )
    forbidden = forbidden_rows(result.outcomes, result.allowed)
    if result.status is Status.FAIL and forbidden:
        return "forbidden outcome " + ", ".join(f"{r.label} x{r.count}" for r in forbidden)
    prefix = "timeout: " if result.timed_out else ""
    return prefix + (one_line(result.message) or result.status.value)


def _cell(text) -> str:
    """Text safe inside a Markdown table cell: one line, pipes and markup escaped, bounded."""
    text = one_line(text)
    if len(text) > REASON_WIDTH:
        text = text[: REASON_WIDTH - 3] + "..."
    for char in "\\|*_`<>[]":
        text = text.replace(char, "\\" + char)
    return text


def _code(text) -> str:
    return one_line(text).replace("`", "'").replace("|", "\\|")
