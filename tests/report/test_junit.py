"""JUnit XML: parses with ElementTree, counts match, failures carry every mismatch."""

import xml.etree.ElementTree as ET

import pytest

from kvmtest.report import render_junit, write_junit
from kvmtest.trace.result import Status
from tests.report import samples


def suite_of(summary):
    root = ET.fromstring(render_junit(summary).encode("utf-8"))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    return root, suite


@pytest.mark.parametrize("make", [samples.mixed, samples.repeated, samples.odd, samples.empty])
def test_counts_match(make):
    summary = make()
    root, suite = suite_of(summary)
    assert suite.get("name") == "kvmtest"
    cases = suite.findall("testcase")
    expected = {
        "tests": len(summary.results),
        "failures": summary.count(Status.FAIL),
        "errors": summary.count(Status.ERROR),
        "skipped": summary.count(Status.SKIP),
    }
    assert {k: int(suite.get(k)) for k in expected} == expected
    outer = {k: v for k, v in expected.items() if k != "skipped"}  # junit-10.xsd has none
    assert {k: int(root.get(k)) for k in outer} == outer and root.get("skipped") is None
    for element in (root, suite):
        assert float(element.get("time")) == pytest.approx(summary.elapsed, abs=1e-3)
    assert len(cases) == expected["tests"]
    assert len([c for c in cases if c.find("failure") is not None]) == expected["failures"]
    assert len([c for c in cases if c.find("error") is not None]) == expected["errors"]
    assert len([c for c in cases if c.find("skipped") is not None]) == expected["skipped"]


def test_testcases_of_the_mixed_run():
    _, suite = suite_of(samples.mixed())
    passed, failed, error, skipped = suite.findall("testcase")
    assert [c.get("name") for c in (passed, failed, error, skipped)] == [
        "msi-init-sipi",
        "init-while-halted",
        "smp-boot",
        "split-irqchip-sipi",
    ]
    # identity from the trace's path (samples: corpus/NAME.yaml), never from the profile
    assert {c.get("classname") for c in suite.findall("testcase")} == {"corpus"}
    assert failed.get("file") == "corpus/init-while-halted.yaml"
    assert float(failed.get("time")) == pytest.approx(0.003)
    assert list(passed) == []
    failure = failed.find("failure")
    assert failure.get("message").startswith("2 mismatches: init-while-halted.yaml:17")
    for mismatch in samples.HALTED_MISMATCHES:
        assert mismatch.describe() in failure.text
    assert "rules 4, 11, 12" in failure.text
    element = error.find("error")
    assert element.get("message") == "GuestError: landing page not reached at stepper.S:40"
    assert "at stepper.S:40" in element.text
    assert skipped.find("skipped").get("message") == "KVM_CAP_SPLIT_IRQCHIP missing"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["backend"] == "kvm_intel" and props["host.kernel"] == "6.18.44-fc"


def test_repeats_are_named_and_identity_ignores_the_profile():
    summary = samples.repeated()
    summary.results[-1].profile = "linux-3.9"
    _, suite = suite_of(summary)
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names[:8] == [f"concurrent-init [repeat {i}]" for i in range(1, 9)]
    assert names[8] == "msi-init-sipi"
    assert suite.findall("testcase")[8].get("classname") == "corpus"
    failing = suite.findall("testcase")[5]
    assert "both-lost" in failing.find("failure").get("message")


def test_odd_characters_stay_well_formed(tmp_path):
    path = tmp_path / "junit.xml"
    write_junit(samples.odd(), path)
    suite = ET.parse(path).getroot().find("testsuite")
    first = suite.find("testcase")
    assert first.get("name").startswith('odd #1 <trace> & "quotes" \u00e9t\u00e9 \\x00\\x1b[31m')
    assert "\\xd800" in first.get("name")
    failure = suite.findall("testcase")[1].find("failure")
    assert "line # two" in failure.text and "\\x07bell" in failure.text
    assert suite.get("hostname") == "h\\x01st"
