"""The pytest plugin end to end: pytest run in a subprocess, xdist with real gateways (popen,
and ssh to an sshd started here on 127.0.0.1)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmtest.suite import corpus_dir
from tests.conftest import REQUIRE_KVM, require_kvm

CI = REQUIRE_KVM or os.environ.get("CI") == "true"
PYTHON = sys.executable

TRACE = """\
name: {name}
rules: [1]
tags: [msi]
setup:
  vcpus: 2
steps:
  - msi: {{dest: 1, delivery: init}}
  - observe:
      vcpu: 1
      expect: {{mp_state: {state}}}
"""


def pytest_run(tmp_path, *args, timeout=600, isolated=True):
    """pytest in a subprocess in tmp_path, with an empty ini file there so that the project's
    settings stay out. Not `isolated` for ssh gateways: xdist wants every path argument
    under its (deprecated) rsync roots, so none is given and tmp_path is the rootdir."""
    ini = tmp_path / "pytest.ini"
    if not ini.exists():
        ini.write_text("[pytest]\n")
    where = ["-c", str(ini), "--rootdir", str(tmp_path)] if isolated else []
    return subprocess.run(
        [PYTHON, "-m", "pytest", *where, "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=timeout,
    )


def traces_dir(tmp_path) -> Path:
    root = tmp_path / "traces"
    root.mkdir()
    (root / "good.yaml").write_text(TRACE.format(name="good", state="INIT_RECEIVED"))
    (root / "wrong-pin.yaml").write_text(TRACE.format(name="wrong-pin", state="RUNNABLE"))
    (root / "other-project.yaml").write_text("name: not a trace\nversion: 3\n")
    (root / "compose.yml").write_text("services:\n  web:\n    image: nginx\n")
    return root


def test_inactive_unless_asked(tmp_path):
    traces_dir(tmp_path)
    result = pytest_run(tmp_path, "--collect-only", "-q", "traces")
    assert result.returncode == 5, result.stdout + result.stderr  # no tests collected
    assert "good" not in result.stdout


def test_claims_only_trace_files(tmp_path):
    traces_dir(tmp_path)
    result = pytest_run(tmp_path, "--kvmtest", "--collect-only", "-q", "traces")
    assert result.returncode == 0, result.stdout + result.stderr
    items = [line for line in result.stdout.splitlines() if "::" in line]
    assert items == ["traces/good.yaml::good", "traces/wrong-pin.yaml::wrong-pin"]


def test_builtin_corpus_when_no_path(tmp_path):
    result = pytest_run(tmp_path, "--kvmtest", "--collect-only", "-q")
    items = [line for line in result.stdout.splitlines() if "::" in line]
    assert len(items) == len(list(Path(corpus_dir()).glob("*.yaml"))), result.stdout
    assert items == sorted(items)  # sorted: every xdist worker collects the same order


def test_mismatch_report_skips_and_junit(tmp_path):
    traces_dir(tmp_path)
    junit = tmp_path / "junit.xml"
    result = pytest_run(
        tmp_path,
        "--kvmtest",
        "--kvmtest-backend",
        "reference",
        "-rs",
        f"--junitxml={junit}",
        "traces",
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 1 passed" in out
    # repr_failure is the text report's diff
    assert "FAIL   wrong-pin" in out and "mp_state (model vs pin)" in out
    assert "pinned (trace)    RUNNABLE (0)" in out and "Traceback" not in out
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"good", "wrong-pin"}
    props = {p.get("name"): p.get("value") for p in cases["good"].iter("property")}
    assert props["backend"] == "reference" and props["profile"]
    # under a profile the trace pins nothing for, the model alone has nothing to check
    skipped = pytest_run(
        tmp_path, "--kvmtest", "--kvmtest-backend", "reference", "--kvmtest-profile",
        "linux-3.9", "-rs", "traces",
    )  # fmt: skip
    assert skipped.returncode == 0 and "2 skipped" in skipped.stdout, skipped.stdout
    assert "traces/good.yaml:1: nothing to check without KVM" in skipped.stdout


def test_markers_select(tmp_path):
    result = pytest_run(tmp_path, "--kvmtest", "--collect-only", "-q", "-m", "race")
    items = [line for line in result.stdout.splitlines() if "::" in line]
    assert items and all("concurrent" in i or "race" in i for i in items), items
    strict = pytest_run(tmp_path, "--kvmtest", "--collect-only", "-q", "--strict-markers")
    assert strict.returncode == 0, strict.stdout + strict.stderr


def test_xdist_popen_spreads_traces(tmp_path):
    require_kvm()
    result = pytest_run(tmp_path, "--kvmtest", "-n", "2", "-v", "-k", "msi")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    workers = set(re.findall(r"\[(gw\d+)\]", result.stdout))
    assert workers == {"gw0", "gw1"}, result.stdout
    assert re.search(r"\d+ passed", result.stdout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 with a throwaway host key and client key; yields an ssh_config."""
    daemon = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(daemon) or not shutil.which("ssh"):
        if CI:
            pytest.fail("sshd/ssh missing (dev.sh installs openssh-server)", pytrace=False)
        pytest.skip("sshd or ssh is not installed (Debian: apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log in as root")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    port = _free_port()
    process = subprocess.Popen(
        [daemon, "-D", "-e", "-f", "/dev/null", "-p", str(port), "-h", str(keys / "host")]
        + ["-o", "ListenAddress=127.0.0.1", "-o", f"AuthorizedKeysFile={keys}/authorized_keys"]
        + ["-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password"]
        + ["-o", "UsePAM=no", "-o", f"PidFile={keys}/sshd.pid"],
        stderr=open(keys / "sshd.log", "w"),
    )
    config = keys / "ssh_config"
    config.write_text(
        "".join(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
            f"  IdentityFile {keys}/client\n  IdentitiesOnly yes\n  BatchMode yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            for alias in ("kvmhost-a", "kvmhost-b")
        )
    )
    try:
        for _ in range(100):
            probe = subprocess.run(
                ["ssh", "-F", str(config), "kvmhost-a", "true"], capture_output=True
            )
            if probe.returncode == 0:
                break
            if process.poll() is not None:
                pytest.fail(f"sshd exited: {(keys / 'sshd.log').read_text()}")
            time.sleep(0.1)
        else:
            pytest.fail(f"cannot log in to the test sshd: {probe.stderr.decode()}")
        yield config
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_xdist_dist_each_over_two_ssh_gateways(tmp_path, sshd):
    require_kvm()
    gateways = []
    for alias in ("kvmhost-a", "kvmhost-b"):
        # chdir: where xdist puts its rsync'd copy of pytest (default: ~/pyexecnetcache)
        spec = f"ssh={alias}//ssh_config={sshd}//python={PYTHON}//chdir={tmp_path}/{alias}"
        gateways += ["--tx", spec]
    result = pytest_run(
        tmp_path,
        "--kvmtest",
        "--dist",
        "each",
        *gateways,
        "-v",
        "-k",
        "msi-init-sipi",
        isolated=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "[gw0]" in out and "[gw1]" in out, out
    passed = int(re.search(r"(\d+) passed", out).group(1))
    collected = pytest_run(tmp_path, "--kvmtest", "--collect-only", "-q", "-k", "msi-init-sipi")
    items = [line for line in collected.stdout.splitlines() if "::" in line]
    assert passed == 2 * len(items)  # every host ran every trace


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m")
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm to hide")
def test_without_kvm_traces_skip_or_fail(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    base = (
        f"mount --bind /dev/null /dev/kvm && exec {PYTHON} -m pytest -c {tmp_path}/pytest.ini "
        f"--rootdir {tmp_path} -p no:cacheprovider --kvmtest -k msi-init-sipi -rs"
    )
    env = {k: v for k, v in os.environ.items() if k != "KVMTEST_REQUIRE_KVM"}
    hidden = subprocess.run(
        ["unshare", "-m", "sh", "-c", base], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert hidden.returncode == 0 and " skipped" in hidden.stdout, hidden.stdout
    assert "passed" not in hidden.stdout and "not judged: KVM is not usable" in hidden.stdout
    required = subprocess.run(
        ["unshare", "-m", "sh", "-c", base + " --kvmtest-backend kvm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert required.returncode == 1 and " failed" in required.stdout, required.stdout
    assert "KVM is not usable" in required.stdout
