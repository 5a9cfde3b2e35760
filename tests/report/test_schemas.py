"""Real `kvmtest run` output against the schemas CI systems and our readers hold it to: JUnit
XML against Jenkins xUnit's junit-10.xsd (tests/report/junit-10.xsd), the JSON report against
kvmtest/report/schema/run-v1.json (JSON Schema draft 2020-12)."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import xmlschema

from kvmtest.report import render_json, render_junit
from kvmtest.report.json_report import schema
from kvmtest.suite import corpus_dir
from tests.conftest import require_kvm
from tests.report import samples

JUNIT_XSD = xmlschema.XMLSchema(str(Path(__file__).with_name("junit-10.xsd")))
RUN_SCHEMA = schema()

BAD = "name: bad\nsteps:\n  - msi: {dest: 1, delivery: nope}\n"


def run(tmp_path, *args):
    junit, report = tmp_path / "junit.xml", tmp_path / "run.json"
    result = subprocess.run(
        [sys.executable, "-m", "kvmtest", "run", "--junit-xml", str(junit)]
        + ["--json-file", str(report), *args],
        capture_output=True,
        text=True,
    )
    assert junit.exists() and report.exists(), result.stderr
    return result, junit, json.loads(report.read_text())


def assert_valid_junit(path_or_text):
    errors = list(JUNIT_XSD.iter_errors(path_or_text))
    assert not errors, "\n".join(str(e.reason) for e in errors[:10])


def assert_valid_json(document):
    jsonschema.Draft202012Validator.check_schema(RUN_SCHEMA)
    errors = list(jsonschema.Draft202012Validator(RUN_SCHEMA).iter_errors(document))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


@pytest.mark.parametrize("make", [samples.mixed, samples.repeated, samples.odd, samples.empty])
def test_samples_validate(make):
    assert_valid_junit(render_junit(make()))
    assert_valid_json(json.loads(render_json(make())))


def test_reference_run_validates(tmp_path):
    result, junit, document = run(tmp_path, "--backend", "reference", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert_valid_junit(str(junit))
    assert_valid_json(document)
    assert document["tool"]["version"] and document["seed"] == 7
    assert document["jitter_us"] == 200.0
    assert document["started"] <= document["finished"]
    assert document["judged"].startswith("the model (profile mainline)")
    first = document["results"][0]
    assert first["file"].startswith("kvmtest/corpus/") and first["line"] == 1


def test_trace_identity_is_stable_and_relative(tmp_path):
    """The testcase is the same whatever the profile: classname from the path, not the
    profile (linux-3.9 used to become package linux-3, class 9)."""
    identities = []
    for profile in ("mainline", "linux-3.9"):
        _, junit, _ = run(tmp_path, "--backend", "reference", "--profile", profile)
        assert_valid_junit(str(junit))
        suite = ET.parse(junit).getroot().find("testsuite")
        cases = suite.findall("testcase")
        identities.append([(c.get("classname"), c.get("name"), c.get("file")) for c in cases])
        assert {c.get("classname") for c in cases} == {"kvmtest.corpus"}
        assert all(c.get("file").startswith("kvmtest/corpus/") for c in cases)
        assert all(c.get("line") == "1" for c in cases)
        props = {p.get("name"): p.get("value") for p in suite.find("properties")}
        assert props["profile"] == profile
    assert identities[0] == identities[1]


def test_failures_errors_and_repeats_validate(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    pinned = tmp_path / "mine" / "wrong-pin.yaml"
    pinned.parent.mkdir()
    pinned.write_text(
        "name: wrong-pin\nrules: [1, d7.4]\nsteps:\n  - msi: {dest: 1, delivery: init}\n"
        "  - observe:\n      vcpu: 1\n      expect: {mp_state: RUNNABLE}\n"
    )
    msi = os.path.join(corpus_dir(), "msi-init-sipi.yaml")
    result, junit, document = run(
        tmp_path, "--backend", "reference", "--repeat", "2", str(bad), str(pinned.parent), msi
    )
    assert result.returncode == 2  # the malformed file
    assert_valid_junit(str(junit))
    assert_valid_json(document)
    by_name = {}
    for entry in document["results"]:
        by_name.setdefault(entry["name"], []).append(entry)
    failed = by_name["wrong-pin"][0]
    assert failed["status"] == "fail" and failed["file"] == "mine/wrong-pin.yaml"
    (mismatch,) = failed["mismatches"]
    assert mismatch["file"] == "mine/wrong-pin.yaml" and mismatch["line"] == 6
    assert mismatch["rule"] == ["1", "d7.4"]
    assert by_name["bad"][0]["status"] == "error"
    classnames = {c.get("name"): c.get("classname") for c in ET.parse(junit).iter("testcase")}
    assert classnames["wrong-pin [repeat 1]"] == "mine"
    assert classnames["msi-init-sipi [repeat 2]"] == "kvmtest.corpus"


def test_kvm_run_validates(tmp_path):
    require_kvm()
    result, junit, document = run(tmp_path, "--require-kvm", "-k", "msi", "--jobs", "4")
    assert result.returncode == 0, result.stderr
    assert_valid_junit(str(junit))
    assert_valid_json(document)
    assert document["backend"] == "kvm" and document["not_judged"] == ""


def test_doctor_json_has_a_schema_version():
    result = subprocess.run(
        [sys.executable, "-m", "kvmtest", "doctor", "--json"], capture_output=True, text=True
    )
    assert json.loads(result.stdout)["schema_version"] == 1
