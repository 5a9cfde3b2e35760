"""Ctrl-C and SIGTERM stop a run promptly, and every completed result is still reported in the
requested formats, marked "interrupted after N of M" (the Reliability issue)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from kvmtest.suite import load_traces
from tests.conftest import require_kvm

PLANNED = len(load_traces([])[0]) * 50  # the corpus, --repeat 50


def wait_for_banner(process) -> None:
    """The run has started once kvmtest names its backend on stderr (before: Python itself
    is still starting, and a signal then is an ordinary interrupted start, not a run's)."""
    line = process.stderr.readline()
    assert line.startswith("kvmtest: "), line


def start_run(tmp_path, *args):
    junit, report = tmp_path / "junit.xml", tmp_path / "run.json"
    command = [sys.executable, "-m", "kvmtest", "run", "--repeat", "50", "--jobs", "2"]
    command += ["--junit-xml", str(junit), "--json-file", str(report), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    return process, junit, report


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_gives_a_partial_report(tmp_path, signo):
    require_kvm()
    process, junit, report = start_run(tmp_path, "--format", "ktap")
    wait_for_banner(process)
    time.sleep(1.5)
    process.send_signal(signo)
    start = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - start < 15, "the run did not stop promptly"
    assert process.returncode == 128 + signo, err[-2000:]
    assert "Traceback" not in err
    document = json.loads(report.read_text())
    done = document["totals"]["total"]
    assert 0 < done < PLANNED
    name = signal.Signals(signo).name
    assert document["interrupted"] == f"interrupted by {name} after {done} of {PLANNED} traces"
    assert f"# kvmtest: interrupted by {name} after {done} of" in out
    # Under --repeat each trace is a KTAP subtest block with one line per repetition; the
    # repetitions that completed before the signal are all there.
    repetitions = [
        line
        for line in out.splitlines()
        if line.startswith((" ", "\t")) and line.strip().startswith(("ok ", "not ok "))
    ]
    assert len(repetitions) == done
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert len(cases) == done


def test_sigint_at_random_moments_always_reports(tmp_path):
    require_kvm()
    rng = random.Random(7)
    for attempt in range(3):
        out_dir = tmp_path / str(attempt)
        out_dir.mkdir()
        process, junit, report = start_run(out_dir)
        wait_for_banner(process)
        time.sleep(rng.uniform(0.0, 2.0))
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, (attempt, err[-2000:])
        assert "interrupted by SIGINT after" in out and "Traceback" not in err
        assert json.loads(report.read_text())["interrupted"].startswith("interrupted by SIGINT")
        ET.parse(junit)
