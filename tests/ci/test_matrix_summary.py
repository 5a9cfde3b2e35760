"""The matrix summary renders from result data (no boot needed)."""

import json
import os

import pytest

from kvmtest.matrix import cli as matrix
from kvmtest.matrix import summary as ms

KTAP_61 = """KTAP version 1
1..4
ok 1 msi-init-sipi
# msi-logical-sw-disabled-nobody: step 1: result: expected 0, observed -EPERM
not ok 2 msi-logical-sw-disabled-nobody
ok 3 smm-init-latched-sipi-dropped # SKIP KVM_CAP_X86_SMM missing
not ok 4 smp-boot-xapic-8 # ERROR GuestError: no landing page
  KTAP version 1
  # Subtest: nested
  1..1
  not ok 1 repeat-1
# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:1
"""


def test_parse_ktap_top_level_only():
    assert ms.parse_ktap(KTAP_61) == {
        "msi-init-sipi": ms.PASS,
        "msi-logical-sw-disabled-nobody": ms.FAIL,
        "smm-init-latched-sipi-dropped": ms.SKIP,
        "smp-boot-xapic-8": ms.ERROR,
    }


def test_backend_from_banner():
    assert ms.backend_from_banner("kvmtest: kvm: 6.1.0-50-amd64, kvm_amd; profile linux-6.1") == (
        "kvm_amd"
    )
    assert ms.backend_from_banner("") == ""


def outcomes():
    return [
        ms.KernelOutcome(
            "debian-6.1",
            "6.1.0-50-amd64",
            "linux-6.1",
            backend="kvm_amd",
            exit_code=1,
            traces=ms.parse_ktap(KTAP_61),
            boot_seconds=10.4,
            suite_seconds=85.2,
        ),
        ms.KernelOutcome(
            "host",
            "6.18.44-fc-v595",
            "mainline",
            backend="kvm_pvm",
            exit_code=0,
            traces={name: ms.PASS for name in ms.parse_ktap(KTAP_61)},
            suite_seconds=20.0,
        ),
    ]


def test_summary_table():
    text = ms.render_summary(outcomes())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("kernel "))
    for column in ("release", "kvm", "profile", "pass", "fail", "skip", "error", "exit"):
        assert column in header
    row = next(line for line in lines if line.startswith("debian-6.1 "))
    assert row.split()[:9] == [
        "debian-6.1",
        "6.1.0-50-amd64",
        "kvm_amd",
        "linux-6.1",
        "1",
        "1",
        "1",
        "1",
        "1",
    ]
    host = next(line for line in lines if line.startswith("host "))
    assert "mainline" in host and "kvm_pvm" in host
    # The grid lists the traces that did not pass everywhere, one column per kernel.
    grid = text.split("Traces by kernel", 1)[1]
    assert "msi-logical-sw-disabled-nobody  FAIL" in grid
    assert "smp-boot-xapic-8" in grid and "ERROR" in grid
    assert "msi-init-sipi " not in grid


def test_summary_all_pass_and_all_traces():
    clean = [o for o in outcomes() if o.kernel == "host"]
    assert "All 4 traces passed on every kernel." in ms.render_summary(clean)
    assert "msi-init-sipi" in ms.render_summary(clean, all_traces=True)


def test_summary_roundtrip_through_matrix_json(tmp_path, capsys):
    (tmp_path / "matrix.json").write_text(json.dumps([o.to_json() for o in outcomes()]))
    assert matrix.standalone(["summary", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == ms.render_summary(outcomes())


def test_summary_of_a_kernel_that_did_not_boot():
    broken = ms.KernelOutcome("debian-6.12", "", "linux-6.12", notes=["no exit code"])
    text = ms.render_summary([broken])
    assert "debian-6.12" in text and "note: debian-6.12: no exit code" in text


def test_matrix_run_on_the_host_kernel(tmp_path, capsys):
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("the host row needs this machine's /dev/kvm")
    out = tmp_path / "m"
    code = matrix.standalone(["run", "--kernel", "host", "-k", "msi-init-sipi", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    document = json.loads((out / "matrix.json").read_text())
    assert document["schema_version"] == 1
    (row,) = document["kernels"]
    assert row["kernel"] == "host" and row["exit_code"] == 0 and row["traces"]
    assert set(row["traces"].values()) == {ms.PASS}
    assert (out / "host" / "junit.xml").exists()
    assert json.loads((out / "host" / "run.json").read_text())["format"] == "kvmtest-report"
    assert printed.startswith("Kernel matrix")
    assert (out / "summary.txt").read_text().strip() in printed


def test_traces_from_the_json_report():
    report = {
        "format": "kvmtest-report",
        "backend": "kvm",
        "host": {"backend": "kvm_amd"},
        "results": [
            {"name": "a", "status": "pass"},
            {"name": "b", "status": "pass"},
            {"name": "b", "status": "fail"},  # a repeat: the worst wins
            {"name": "c", "status": "skip"},
            {"name": "d", "status": "error"},
        ],
    }
    assert ms.traces_from_report(report) == {"a": "pass", "b": "fail", "c": "skip", "d": "error"}
    assert ms.backend_from_report(report) == "kvm_amd"
    assert ms.backend_from_report({"backend": "none"}) == "none"


def test_matrix_reads_json_not_ktap(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({"format": "kvmtest-report", "backend": "reference", "host": {},
                    "results": [{"name": "x", "status": "skip"}]})
    )  # fmt: skip
    (tmp_path / "ktap.txt").write_text(KTAP_61)  # would say otherwise
    outcome = matrix.outcome_from_dir({"kernel": "k", "release": "", "profile": "p"}, tmp_path)
    assert outcome.traces == {"x": "skip"} and outcome.backend == "reference"
    (tmp_path / "run.json").unlink()  # the guest died before the end: the streamed KTAP
    outcome = matrix.outcome_from_dir({"kernel": "k", "release": "", "profile": "p"}, tmp_path)
    assert outcome.traces["msi-init-sipi"] == ms.PASS and outcome.notes


def test_summary_reads_old_and_new_matrix_json():
    rows = [{"kernel": "k", "release": "6.1", "profile": "linux-6.1"}]
    assert matrix.read_matrix(rows)[0].kernel == "k"
    assert matrix.read_matrix({"schema_version": 1, "kernels": rows})[0].kernel == "k"
