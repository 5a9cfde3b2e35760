"""What `kvmtest check` prints: text for people, JSON for machines, and KTAP / JUnit through
the project's reporters (each finding a mismatch of its recording's result)."""

from __future__ import annotations

import json

from kvmtest import suite
from kvmtest.report import render_junit, render_ktap
from kvmtest.rules import link
from kvmtest.trace import Mismatch, Status, TraceResult


def render_check(results, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps([_json(r) for r in results], indent=2) + "\n"
    if fmt in ("ktap", "junit"):
        summary = suite.summarize(
            [_as_trace_result(r) for r in results], {}, results[0].profile, "reference", 0.0
        )
        return (render_ktap if fmt == "ktap" else render_junit)(summary)
    return "".join(_text(r) for r in results)


def _text(r) -> str:
    t = r.trace
    lines = [
        f"{t.path}: {t.name}: {'clean' if r.clean else f'{len(r.findings)} finding(s)'} "
        f"(profile {r.profile}; {r.observations} observations, {r.compared} values compared, "
        f"{r.not_compared} unknown after guest code, {len(r.explained)} explained by the guest)"
    ]
    for x in r.findings:
        when = f" at {x.at:.6f} s" if x.at is not None else ""
        who = f" by thread {x.tid}" if x.tid is not None else ""
        lines.append(f"  HAZARD {x.name}: {x.title}")
        lines.append(f"    {x.location}: step {x.step + 1}{when}{who}")
        lines.append(f"    {x.message}")
        if x.rules:
            links = ", ".join(f"{n} ({link(n)})" for n in x.rules)
            lines.append(f"    rules: {links}")
    for step, location, vcpu, actions in r.explained:
        lines.append(f"  explained {location}: step {step + 1}: vCPU {vcpu}: {actions}")
    return "\n".join(lines) + "\n"


def _json(r) -> dict:
    return {
        "path": r.trace.path,
        "name": r.trace.name,
        "profile": r.profile,
        "clean": r.clean,
        "observations": r.observations,
        "compared": r.compared,
        "not_compared_guest": r.not_compared,
        "explained_by_guest": [
            {"step": s + 1, "location": loc, "vcpu": v, "actions": a}
            for s, loc, v, a in r.explained
        ],
        "findings": [x.to_json() for x in r.findings],
    }


def _as_trace_result(r) -> TraceResult:
    rules = tuple(dict.fromkeys(n for x in r.findings for n in x.rules))
    result = TraceResult.of(
        r.trace,
        r.profile,
        "reference",
        status=Status.PASS if r.clean else Status.FAIL,
        compared=r.compared,
        not_compared=r.not_compared,
    )
    result.rules = rules or r.trace.rules
    for x in r.findings:
        result.mismatches.append(
            Mismatch(
                x.step,
                x.location,
                x.vcpu,
                f"hazard {x.name}" + (f" {x.field}" if x.field else ""),
                x.expected if x.expected is not None else "no such step",
                x.observed if x.observed is not None else x.message,
            )
        )
    return result
