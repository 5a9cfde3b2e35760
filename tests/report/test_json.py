"""The JSON report: round-trips, totals equal the counts, per-trace detail survives."""

import json

import pytest

from kvmtest.report import render_json
from kvmtest.trace.result import Status
from tests.report import samples


@pytest.mark.parametrize("make", [samples.mixed, samples.repeated, samples.odd, samples.empty])
def test_round_trip_and_totals(make):
    summary = make()
    doc = json.loads(render_json(summary))
    totals = doc["totals"]
    assert totals == {
        "passed": summary.count(Status.PASS),
        "failed": summary.count(Status.FAIL),
        "errors": summary.count(Status.ERROR),
        "skipped": summary.count(Status.SKIP),
        "total": len(summary.results),
        "elapsed": round(summary.elapsed, 6),
    }
    statuses = [r["status"] for r in doc["results"]]
    for key, status in [("passed", "pass"), ("failed", "fail"), ("errors", "error")]:
        assert totals[key] == statuses.count(status)
    assert sum(totals[k] for k in ("passed", "failed", "errors", "skipped")) == totals["total"]
    assert doc["exit_code"] == summary.exit_code
    assert json.loads(json.dumps(doc)) == doc


def test_run_description():
    doc = json.loads(render_json(samples.mixed()))
    assert (doc["format"], doc["version"]) == ("kvmtest-report", 1)
    assert (doc["backend"], doc["profile"]) == ("kvm_intel", "mainline")
    assert doc["host"] == samples.HOST


def test_per_trace_status_mismatches_elapsed():
    summary = samples.mixed()
    doc = json.loads(render_json(summary))
    assert [r["name"] for r in doc["results"]] == [r.name for r in summary.results]
    assert [r["status"] for r in doc["results"]] == ["pass", "fail", "error", "skip"]
    assert [r["elapsed"] for r in doc["results"]] == [0.0012, 0.0034, 0.0008, 0.0]
    first, second = doc["results"][1]["mismatches"]
    assert first == {
        "step": 4,
        "location": "init-while-halted.yaml:17",
        "file": "init-while-halted.yaml",
        "line": 17,
        "rule": [4, 11, 12],
        "vcpu": 1,
        "field": "mp_state",
        "expected": 3,
        "observed": 0,
        "text": samples.HALTED_MISMATCHES[0].describe(),
        "rules": [  # the trace's rules (4, 11, 12) that speak of mp_state
            {"rule": "11", "anchor": "docs/semantics.md#rule-11"},
            {"rule": "12", "anchor": "docs/semantics.md#rule-12"},
        ],
    }
    assert second["vcpu"] is None and second["expected"] == [0, 0x9F000]
    assert doc["results"][3]["message"] == "KVM_CAP_SPLIT_IRQCHIP missing"
    assert doc["results"][1]["rules"] == [4, 11, 12]


def test_outcomes_and_allowed_are_kept():
    doc = json.loads(render_json(samples.repeated()))
    failing = doc["results"][5]
    assert (failing["repeat"], failing["status"]) == (5, "fail")
    assert failing["outcomes"] == {"both-lost": 1}
    assert failing["allowed"]["both-lost"] is False
    assert doc["results"][-1]["outcomes"] == {}


def test_text_is_strict_utf8_even_with_lone_surrogates():
    text = render_json(samples.odd())
    doc = json.loads(text)
    json.dumps(doc, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    assert doc["results"][0]["name"].endswith("\\ud800 ]]>")
    assert doc["host"]["kernel"] == doc["results"][0]["name"]


def test_values_json_cannot_hold_become_strings_or_null():
    summary = samples.summary(
        [samples.result("t", Status.PASS, elapsed=float("nan"))],
        host={"caps": {1, 2}, "path": object(), 3: (4, 5)},
        elapsed=float("inf"),
    )
    doc = json.loads(render_json(summary))
    assert doc["totals"]["elapsed"] is None and doc["results"][0]["elapsed"] is None
    assert doc["host"]["caps"] == [1, 2] and doc["host"]["3"] == [4, 5]
    assert isinstance(doc["host"]["path"], str)
