"""The example CI definitions (ci/github-actions.yml, ci/gitlab-ci.yml) cannot run here: check
that they parse and contain the steps the patch-validation workflow needs."""

import subprocess
from pathlib import Path

import pytest
import yaml

CI = Path(__file__).resolve().parents[2] / "ci"


def load(name):
    return yaml.safe_load((CI / name).read_text())


def joined(commands) -> str:
    return "\n".join(commands if isinstance(commands, list) else [commands])


def test_github_actions_workflow():
    workflow = load("github-actions.yml")
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    steps = job["steps"]
    uses = [step.get("uses", "") for step in steps]
    assert sum(u.startswith("actions/checkout@") for u in uses) == 2
    kvmtest_checkout = next(s for s in steps if s.get("with", {}).get("path") == "kvmtest")
    assert "repository" in kvmtest_checkout["with"]
    script = "\n".join(step.get("run", "") for step in steps)
    assert "merge_config.sh -m .config kvmtest/ci/kvm.config" in script
    assert "make olddefconfig" in script
    assert "bzImage" in script
    assert "kvmtest/ci/boot-kernel arch/x86/boot/bzImage --out kvmtest-results" in script
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    paths = upload["with"]["path"]
    assert "kvmtest-results/ktap.txt" in paths and "kvmtest-results/junit.xml" in paths
    assert "kvmtest-results/run.json" in paths and "kvmtest-results/summary.md" in paths
    summary = next(s for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert summary["if"] == "always()"
    assert "kvmtest-results/summary.md" in summary["run"]


def test_gitlab_ci_job():
    config = load("gitlab-ci.yml")
    job = config["kvmtest"]
    assert job["stage"] in config["stages"]
    assert job["image"].startswith("debian:")
    script = joined(job["before_script"]) + "\n" + joined(job["script"])
    assert "$KVMTEST_GIT_URL" in script
    assert "merge_config.sh -m .config kvmtest/ci/kvm.config" in script
    assert "make olddefconfig" in script
    assert "kvmtest/ci/boot-kernel arch/x86/boot/bzImage --out kvmtest-results" in script
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    assert "kvmtest-results/ktap.txt" in artifacts["paths"]
    assert "kvmtest-results/junit.xml" in artifacts["paths"]
    assert artifacts["reports"]["junit"] == "kvmtest-results/junit.xml"
    assert "kvmtest-results/summary.md" in artifacts["paths"]
    assert "cat kvmtest-results/summary.md" in joined(job["after_script"])


def test_kvm_config_fragment():
    lines = [
        line
        for line in (CI / "kvm.config").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    options = dict(line.split("=", 1) for line in lines)
    assert all(name.startswith("CONFIG_") for name in options)
    for needed in (
        "CONFIG_KVM",
        "CONFIG_KVM_AMD",
        "CONFIG_KVM_INTEL",
        "CONFIG_VIRTIO_PCI",
        "CONFIG_NET_9P_VIRTIO",
        "CONFIG_9P_FS",
        "CONFIG_DEVTMPFS",
        "CONFIG_BLK_DEV_INITRD",
        "CONFIG_SERIAL_8250_CONSOLE",
    ):
        assert options[needed] == "y", needed


@pytest.mark.parametrize("script", ["boot-kernel", "kernel-matrix"])
def test_wrappers_are_executable_shell(script):
    path = CI / script
    assert path.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(path)], check=True)
    assert "-m kvmtest.matrix" in path.read_text()
