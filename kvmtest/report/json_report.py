"""The run as one JSON document for machines (`kvmtest run --format json`, `--json-file`).

    {"format": "kvmtest-report", "schema_version": 1, "version": 1, "tool": {...},
     "started": "2026-12-01T15:30:19.123Z", "finished": ..., "backend": ..., "profile": ...,
     "judged": ..., "not_judged": ..., "seed": null, "jitter_us": 200.0, "host": {...},
     "totals": {"passed": 1, "failed": 1, "errors": 1, "skipped": 1, "total": 4,
                "elapsed": 0.52},
     "exit_code": 1,
     "results": [TraceResult.to_json() plus "file", "line", "timed_out", "outcomes",
                 "allowed", and on each mismatch "file", "line", "rule" and "text"]}

The document is described by kvmtest/report/schema/run-v1.json (JSON Schema draft 2020-12):
a version adds keys without a new schema_version, and removes or changes one only with one.
"file" is the trace's path relative to the run's bases (kvmtest/corpus/NAME.yaml for the
corpus), the same on every host; "path" and "location" keep the path as given. Each repetition
of a trace is its own entry (its "repeat" counts from 0, as in TraceResult).
"""

import json
import math
from importlib import resources

from kvmtest import __version__
from kvmtest.trace.result import Status

from ._paths import relative_path, split_location

FORMAT = "kvmtest-report"
VERSION = 1  # the schema version; "version" is its older name, kept for readers of it
SCHEMA_VERSION = VERSION


def schema() -> dict:
    """The JSON Schema of the report (kvmtest/report/schema/run-v1.json)."""
    path = resources.files("kvmtest.report") / "schema" / f"run-v{SCHEMA_VERSION}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(summary, path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(render_json(summary) + "\n")


def render_json(summary) -> str:
    """The report as indented JSON text (no final newline, like json.dumps)."""
    return json.dumps(_document(summary), indent=2, default=str, allow_nan=False)


def _document(summary) -> dict:
    count = summary.count
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "version": VERSION,
        "tool": {"name": "kvmtest", "version": __version__},
        "started": summary.started or None,
        "finished": summary.finished or None,
        "backend": summary.backend,
        "profile": summary.profile,
        "judged": summary.judged,
        "not_judged": summary.not_judged,
        "seed": summary.seed,
        "jitter_us": None if summary.jitter is None else _seconds(summary.jitter * 1e6),
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
        "interrupted": summary.interrupted or None,
        "results": [_result(r, summary.bases) for r in summary.results],
    }


def _result(result, bases=()) -> dict:
    data = result.to_json()
    data["elapsed"] = _seconds(result.elapsed)
    data["file"] = relative_path(result.path, bases)
    data["line"] = result.line or None
    data["timed_out"] = bool(result.timed_out)
    for entry, mismatch in zip(data["mismatches"], result.mismatches, strict=True):
        path, line = split_location(mismatch.location)
        entry["file"] = relative_path(path, bases)
        entry["line"] = line
        # The rules the mismatch may break: the trace's rules list for now (a mismatch does
        # not yet know which one of them its field belongs to).
        entry["rule"] = list(result.rules)
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
