"""kvmtest's KTAP read by the kernel's own parser, tools/testing/kunit/kunit_parser.py.

The parser comes from Debian's linux-source tarball (./dev.sh test unpacks
tools/testing/kunit/ into the virtual environment's share/kvmtest-kunit); KVMTEST_KUNIT_DIR
points elsewhere. Without it these tests skip, except in CI (KVMTEST_REQUIRE_KVM=1), where
that is a failure.
"""

import glob
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmtest.suite import corpus_dir
from tests.conftest import REQUIRE_KVM, require_kvm


def _kunit_dirs():
    if os.environ.get("KVMTEST_KUNIT_DIR"):
        yield Path(os.environ["KVMTEST_KUNIT_DIR"])
    yield Path(sys.prefix) / "share" / "kvmtest-kunit" / "tools" / "testing" / "kunit"
    for source in sorted(glob.glob("/usr/src/linux-source-*/tools/testing/kunit"), reverse=True):
        yield Path(source)


@pytest.fixture(scope="module")
def kunit():
    """The kernel's kunit_parser module (it imports kunit_printer from its own directory)."""
    for directory in _kunit_dirs():
        if (directory / "kunit_parser.py").is_file():
            sys.path.insert(0, str(directory))
            try:
                return importlib.import_module("kunit_parser")
            finally:
                sys.path.remove(str(directory))
    reason = (
        "the kernel's kunit_parser.py is not unpacked (./dev.sh test does it as root, from "
        "Debian's linux-source; or set KVMTEST_KUNIT_DIR)"
    )
    if REQUIRE_KVM:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def kvmtest_ktap(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", "run", "--format", "ktap", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def parse(kunit, text):
    test = kunit.parse_run_tests(text.splitlines())
    return test, {sub.name: sub.status for sub in test.subtests}


def test_reference_run_parses(kunit):
    result = kvmtest_ktap("--backend", "reference")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    test, statuses = parse(kunit, result.stdout)
    assert test.counts.errors == 0, test.log
    assert test.status == kunit.TestStatus.SUCCESS
    names = [line.split(" ", 2)[2] for line in result.stdout.splitlines() if line[:2] == "ok"]
    assert len(statuses) == len(glob.glob(os.path.join(corpus_dir(), "*.yaml")))
    skipped = {n for n, s in statuses.items() if s == kunit.TestStatus.SKIPPED}
    assert skipped and all(s == kunit.TestStatus.SUCCESS for n, s in statuses.items()
                           if n not in skipped)  # fmt: skip
    assert names


def test_nothing_to_check_is_skipped_not_passed(kunit):
    """Races pin outcome sets for every profile (checked without KVM); the MSI traces do not."""
    result = kvmtest_ktap("--backend", "reference", "--profile", "linux-3.9", "-k", "msi-*")
    assert result.returncode == 4, result.stdout[-2000:]
    test, statuses = parse(kunit, result.stdout)
    assert test.status == kunit.TestStatus.SKIPPED
    assert set(statuses.values()) == {kunit.TestStatus.SKIPPED}
    assert "# kvmtest: not judged: this kernel's KVM" in result.stdout


def test_kvm_run_with_repeats_parses(kunit):
    require_kvm()
    result = kvmtest_ktap("-k", "msi-init", "--repeat", "3", "--jobs", "4")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    test, statuses = parse(kunit, result.stdout)
    assert test.counts.errors == 0 and test.status == kunit.TestStatus.SUCCESS, test.log
    repeated = [sub for sub in test.subtests if sub.subtests]
    assert repeated and all(len(sub.subtests) == 3 for sub in repeated)


def test_timeouts_are_timeout_with_a_diagnostic(kunit):
    require_kvm()
    result = kvmtest_ktap("-k", "smp-boot-xapic-8", "-k", "msi-init-sipi", "--timeout", "0.02")
    lines = result.stdout.splitlines()
    timeouts = [i for i, line in enumerate(lines) if "# TIMEOUT" in line]
    assert result.returncode == 1 and timeouts, result.stdout
    for index in timeouts:
        name = lines[index].split(" ")[3]
        assert lines[index].startswith("not ok ")
        assert lines[index - 1].startswith(f"# {name}: timed out after 0.02 s")
    test, statuses = parse(kunit, result.stdout)
    assert test.counts.errors == 0, test.log  # well formed
    assert statuses["smp-boot-xapic-8"] == kunit.TestStatus.FAILURE


def test_stream_cut_off_mid_run_still_parses(kunit):
    """KTAP is streamed: a run killed half-way (a runner's timeout) leaves every finished
    result in the log, and the kernel's parser reads them, marking the rest missing."""
    require_kvm()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvmtest", "run", "--format", "ktap", "--jobs", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines, results, deadline = [], 0, time.monotonic() + 120
    try:
        while results < 5 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            results += line.startswith(("ok ", "not ok "))
        assert results == 5, "".join(lines)
        assert process.poll() is None  # the results came while the run was still going
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    text = "".join(lines)
    plan = int(text.splitlines()[1].split("..")[1])
    test, statuses = parse(kunit, text)
    passed = [n for n, s in statuses.items() if s == kunit.TestStatus.SUCCESS]
    assert len(passed) + sum(s == kunit.TestStatus.SKIPPED for s in statuses.values()) == 5
    assert len(test.subtests) == plan  # the rest: crashed, "missing expected subtest!"
    assert test.counts.crashed == plan - 5


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m")
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm to hide")
def test_without_kvm_every_trace_is_skipped_and_parses(kunit):
    run = f"mount --bind /dev/null /dev/kvm && exec {sys.executable} -m kvmtest run"
    hidden = subprocess.run(
        ["unshare", "-m", "sh", "-c", run + " --format ktap -k msi"],
        capture_output=True,
        text=True,
    )
    assert hidden.returncode == 4, hidden.stdout + hidden.stderr
    test, statuses = parse(kunit, hidden.stdout)
    assert test.status == kunit.TestStatus.SKIPPED and statuses
    assert set(statuses.values()) == {kunit.TestStatus.SKIPPED}
    assert "# SKIP not judged: KVM is not usable" in hidden.stdout
    required = subprocess.run(
        ["unshare", "-m", "sh", "-c", run + " --format ktap -k msi --require-kvm"],
        capture_output=True,
        text=True,
    )
    assert required.returncode == 1, required.stdout + required.stderr
    test, statuses = parse(kunit, required.stdout)
    assert test.status == kunit.TestStatus.FAILURE
    assert set(statuses.values()) == {kunit.TestStatus.FAILURE}
