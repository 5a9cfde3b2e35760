"""The run as one JSON document for machines (`kvmtest run --json`).

    {"format": "kvmtest-report", "version": 1, "backend": ..., "profile": ..., "host": {...},
     "totals": {"passed": 1, "failed": 1, "errors": 1, "skipped": 1, "total": 4,
                "elapsed": 0.52},
     "exit_code": 1,
     "results": [TraceResult.to_json() plus "outcomes", "allowed" and each mismatch's "text"]}

Each repetition of a trace is its own entry (its "repeat" counts from 0, as in TraceResult).
"""

import json
import math

from kvmtest.trace.result import Status

FORMAT = "kvmtest-report"
VERSION = 1


def render_json(summary) -> str:
    """The report as indented JSON text (no final newline, like json.dumps)."""
    return json.dumps(_document(summary), indent=2, default=str, allow_nan=False)


def _document(summary) -> dict:
    count = summary.count
    return {
        "format": FORMAT,
        "version": VERSION,
        "backend": summary.backend,
        "profile": summary.profile,
        "host": _plain(summary.host),
        "totals": {
            "passed": count(Status.PASS),
            "failed": count(Status.FAIL),
            "errors": count(Status.ERROR),
            "skipped": count(Status.SKIP),
            "total": len(summary.results),
            "elapsed": _seconds(summary.elapsed),
        },
        "exit_code": summary.exit_code,
        "results": [_result(r) for r in summary.results],
    }


def _result(result) -> dict:
    data = result.to_json()
    data["elapsed"] = _seconds(result.elapsed)
    for entry, mismatch in zip(data["mismatches"], result.mismatches, strict=True):
        entry["text"] = mismatch.describe()
    data["outcomes"] = {str(label): count for label, count in result.outcomes.items()}
    data["allowed"] = {str(label): bool(ok) for label, ok in result.allowed.items()}
    return _plain(data)


def _seconds(value):
    """Seconds rounded to the microsecond; None when not a finite number (JSON has no NaN)."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return round(value, 6)
    return None


def _plain(value):
    """Only JSON types: string keys, lists for tuples and sets, finite floats, str otherwise."""
    if isinstance(value, dict):
        return {_plain(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, float):
        return _seconds(value) if not math.isfinite(value) else value
    if isinstance(value, str):
        # lone surrogates (surrogateescape'd bytes) are not Unicode: strict readers refuse them
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, (bool, int)):
        return value
    return str(value)
