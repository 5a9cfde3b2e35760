"""`kvmtest run` and `kvmtest list` end to end, as a user or CI calls them."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from kvmtest.suite import corpus_dir
from tests.conftest import require_kvm


def kvmtest(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_builtin_corpus_passes_against_this_kvm(tmp_path):
    require_kvm()
    junit = tmp_path / "junit.xml"
    result = kvmtest("run", "--require-kvm", "--format", "json", "--junit-xml", str(junit))
    report = json.loads(result.stdout)
    failing = [r for r in report["results"] if r["status"] not in ("pass", "skip")]
    assert result.returncode == 0, failing or result.stderr
    assert report["backend"] == "kvm" and report["totals"]["passed"] >= 1
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) == report["totals"]["total"]


def test_builtin_corpus_passes_in_reference_mode():
    result = kvmtest("run", "--backend", "reference")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reference-only (as asked)" in result.stderr


def test_pre_patch_profile_fails_on_this_kernel():
    require_kvm()
    result = kvmtest("run", MSI_INIT_SIPI, "--profile", "linux-3.9")
    assert result.returncode == 1
    assert "mp_state" in result.stdout and "SIPI_RECEIVED" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m")
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm to hide")
def test_hidden_dev_kvm_is_never_a_pass():
    run = f"mount --bind /dev/null /dev/kvm && exec {sys.executable} -m kvmtest run"
    result = subprocess.run(["unshare", "-m", "sh", "-c", run], capture_output=True, text=True)
    assert result.returncode == 4, result.stdout + result.stderr  # kselftest's skip
    assert "NOT JUDGED: KVM is not usable" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.splitlines()[-1].startswith("0 passed, 0 failed, ")
    assert "not judged: this kernel's KVM" in result.stdout
    strict = subprocess.run(
        ["unshare", "-m", "sh", "-c", run + " --require-kvm --format ktap"],
        capture_output=True,
        text=True,
    )
    assert strict.returncode == 1, strict.stdout + strict.stderr  # a failure, not a usage error
    assert "Traceback" not in strict.stderr
    lines = strict.stdout.splitlines()
    assert lines[0] == "KTAP version 1"
    errors = [line for line in lines if line.startswith("not ok ")]
    assert errors and all("# ERROR KVM is not usable" in line for line in errors)
    assert not [line for line in lines if line.startswith("ok ")]


def test_malformed_trace_is_reported_with_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.yaml", "name: bad\nsteps:\n  - msi: {dest: 1, delivery: nope}\n")
    good = write(tmp_path, "good.yaml", "name: good\nsteps:\n  - observe: {vcpu: 1}\n")
    result = kvmtest("run", "--backend", "reference", bad, good)
    assert result.returncode == 2
    assert f"{bad}:3: delivery = 'nope' is not one of" in result.stderr
    assert "Traceback" not in result.stderr
    assert "good" in result.stdout  # the run went on


def test_usage_errors_exit_2(tmp_path):
    assert kvmtest("run", "--backend", "reference", "-k", "no-such-trace").returncode == 2
    assert kvmtest("run", str(tmp_path / "missing.yaml")).returncode == 2
    assert kvmtest("run", "--backend", "reference", "--profile", "linux-9.9").returncode == 2
    assert kvmtest("run", "--jobs", "0").returncode == 2


def test_everything_skipped_exits_4(tmp_path):
    only_old = write(
        tmp_path, "old.yaml", "name: old\nprofiles: [linux-3.9]\nsteps:\n  - observe: 1\n"
    )
    result = kvmtest("run", "--backend", "reference", only_old)
    assert result.returncode == 4, result.stdout


MSI_INIT_SIPI = os.path.join(corpus_dir(), "msi-init-sipi.yaml")


def test_ktap_output_shape():
    result = kvmtest("run", "--backend", "reference", "--format", "ktap", MSI_INIT_SIPI)
    lines = result.stdout.splitlines()
    assert lines[0] == "KTAP version 1" and lines[1] == "1..1"
    assert "ok 1 msi-init-sipi" in lines
    nested = kvmtest(
        "run",
        "--backend",
        "reference",
        "--format",
        "ktap",
        "-k",
        "msi-init",
        env={"KSFT_TAP_LEVEL": "1"},
    )
    assert not nested.stdout.startswith("KTAP version")


def test_list_prints_corpus_with_rules():
    result = kvmtest("list")
    assert result.returncode == 0
    line = next(x for x in result.stdout.splitlines() if x.startswith("msi-init-sipi "))
    assert "1, 3, 10, 13, 24, 39" in line


def test_broken_pipe_exits_1_without_a_traceback():
    process = subprocess.Popen(
        [sys.executable, "-m", "kvmtest", "run", "--backend", "reference", "--format", "ktap"]
        + ["--repeat", "40"],  # more KTAP than a pipe holds: the writer must meet the EPIPE
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.readline()
    process.stdout.close()  # the reader leaves, as `| head -1` does
    code = process.wait(timeout=120)
    stderr = process.stderr.read()
    assert code == 1 and "Traceback" not in stderr, stderr
