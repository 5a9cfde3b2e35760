"""A Markdown summary for CI job pages (GitHub's $GITHUB_STEP_SUMMARY, a GitLab job log or
merge-request note): the verdict, what was judged and what was not, and a table of every trace
that did not pass with its reason.

    ### kvmtest: FAILED: 1 failed, 1 errors, 1 skipped, 1 passed

    **Judged:** this kernel's KVM against the model (profile mainline)
    backend `kvm`, profile `mainline`, 4 traces, elapsed 521 ms, kernel `6.18.44-fc`

    | status | trace | file | reason |
    |---|---|---|---|
    | FAIL | init-while-halted | `corpus/init-while-halted.yaml:1` | 2 mismatches: ... |

It is rendered from the JSON report (kvmtest/report/json_report.py), so a saved report renders
the same: `python -m kvmtest.report.markdown run.json` (what `kvmtest matrix boot` writes to
summary.md from the guest's run.json).
"""

import json
import sys

from ._format import format_duration, one_line

REASON_WIDTH = 160  # characters of a reason shown in a table cell
_WORST = ("fail", "error", "pass", "skip")  # KCIDB priority over a trace's repeats
_WORD = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}


def render_markdown(summary) -> str:
    """The summary (a RunSummary) as Markdown (no final newline)."""
    from .json_report import _document

    return markdown_from_report(_document(summary))


def markdown_from_report(report: dict) -> str:
    """A JSON report (the document render_json writes) as Markdown."""
    totals = report.get("totals", {})
    passed, failed = totals.get("passed", 0), totals.get("failed", 0)
    errors, skipped = totals.get("errors", 0), totals.get("skipped", 0)
    if failed or errors:
        verdict = "FAILED"
    elif not passed:
        verdict = "NOTHING JUDGED"
    else:
        verdict = "passed"
    counts = f"{failed} failed, {errors} errors, {skipped} skipped, {passed} passed"
    lines = [f"### kvmtest: {verdict}: {counts}", ""]
    if report.get("judged"):
        lines.append(f"**Judged:** {_cell(report['judged'])}  ")
    if report.get("not_judged"):
        lines.append(f"**Not judged:** {_cell(report['not_judged'])}  ")
    groups = _groups(report.get("results", []))
    line = (
        f"backend `{_code(report.get('backend', '?'))}`, profile "
        f"`{_code(report.get('profile', '?'))}`, {len(groups)} traces, "
        f"elapsed {format_duration(totals.get('elapsed'))}"
    )
    host = report.get("host") if isinstance(report.get("host"), dict) else {}
    if host.get("kernel"):
        line += f", kernel `{_code(host['kernel'])}`"
    lines.append(line)
    rows = []
    for name, results in groups.items():
        status = next(s for s in _WORST if any(r.get("status") == s for r in results))
        if status == "pass":
            continue
        worst = next(r for r in results if r.get("status") == status)
        located = (worst.get("mismatches") or [worst])[0]  # the first mismatch's step, if any
        where = str(located.get("file") or worst.get("file") or worst.get("path") or "")
        if located.get("line"):
            where += f":{located['line']}"
        reason = _cell(_reason(worst))
        if len(results) > 1:
            n = sum(r.get("status") == status for r in results)
            reason += f" ({n} of {len(results)} repeats)"
        rows.append(f"| {_WORD[status]} | {_cell(name)} | `{_code(where)}` | {reason} |")
    if rows:
        lines += ["", "| status | trace | file | reason |", "|---|---|---|---|", *rows]
    elif passed:
        lines += ["", f"All {len(groups)} traces passed."]
    return "\n".join(lines)


def _groups(results) -> dict:
    groups: dict = {}
    for result in results:
        groups.setdefault(str(result.get("name", "?")), []).append(result)
    return groups


def _reason(result: dict) -> str:
    mismatches = result.get("mismatches") or []
    if result.get("status") == "fail" and mismatches:
        n = len(mismatches)
        text = str(mismatches[0].get("text", ""))
        first = text.split(": ", 1)[1] if ": " in text else text  # without file:line
        return f"{n} mismatch{'es' if n > 1 else ''}: {first}"
    outcomes, allowed = result.get("outcomes") or {}, result.get("allowed") or {}
    forbidden = [f"{k} x{v}" for k, v in outcomes.items() if v and not allowed.get(k, False)]
    if result.get("status") == "fail" and forbidden:
        return "forbidden outcome " + ", ".join(sorted(forbidden))
    prefix = "timeout: " if result.get("timed_out") else ""
    return prefix + (one_line(result.get("message", "")) or str(result.get("status", "")))


def _cell(text) -> str:
    """Text safe inside a Markdown table cell: one line, markup escaped, bounded."""
    text = one_line(text)
    if len(text) > REASON_WIDTH:
        text = text[: REASON_WIDTH - 3] + "..."
    for char in "\\|*_`<>[]":
        text = text.replace(char, "\\" + char)
    return text


def _code(text) -> str:
    return one_line(text).replace("`", "'").replace("|", "\\|")


def main(argv=None) -> int:
    """`python -m kvmtest.report.markdown REPORT.json`: print the report as Markdown."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kvmtest.report.markdown REPORT.json", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as source:
            report = json.load(source)
    except (OSError, ValueError) as exc:
        print(f"kvmtest: {args[0]}: {exc}", file=sys.stderr)
        return 2
    print(markdown_from_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
