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
    # the recipe, for real: build the checked-out tree, boot the build tree it leaves
    assert 'kvmtest/ci/build-kernel . --out "$RUNNER_TEMP/kvmtest-build"' in script
    assert 'kvmtest/ci/boot-kernel "$RUNNER_TEMP/kvmtest-build/obj" --out kvmtest-results' in script
    assert "ccache" in script and job["env"]["KVMTEST_BUILD_CC"] == "ccache gcc"
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == ".ccache" and "kvm.config" in cache["with"]["key"]
    assert job["timeout-minutes"] <= 60
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
    assert "kvmtest/ci/build-kernel . --out kvmtest-build" in script
    assert "kvmtest/ci/boot-kernel kvmtest-build/obj --out kvmtest-results" in script
    assert job["variables"]["KVMTEST_BUILD_CC"] == "ccache gcc"
    assert ".ccache" in job["cache"]["paths"]
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
    # tinyconfig + this fragment is the recipe's config: what KVM under TCG and the boot need
    for needed in (
        "CONFIG_PCI",
        "CONFIG_ACPI",
        "CONFIG_INET",
        "CONFIG_FUTEX",
        "CONFIG_TTY",
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


def test_build_kernel_recipe(tmp_path):
    """ci/build-kernel: valid shell, its usage, and the errors before any build starts."""
    path = CI / "build-kernel"
    assert path.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(path)], check=True)
    usage = subprocess.run([str(path), "--help"], capture_output=True, text=True)
    assert usage.returncode == 2 and "SRC [--patch FILE]..." in usage.stderr
    text = path.read_text()
    for step in ("tinyconfig", 'merge_config.sh" -m', "olddefconfig", "patch -s -p1 -R", "O="):
        assert step in text, step
    missing = subprocess.run(
        [str(path), str(tmp_path / "nothing"), "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no such kernel tree or tarball" in missing.stderr
    bad = subprocess.run(
        [str(path), str(tmp_path), "--patch", str(tmp_path / "x.patch")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no such patch" in bad.stderr


@pytest.mark.parametrize("patch", sorted((CI / "patches").glob("*.patch")), ids=lambda p: p.name)
def test_broken_patches_are_marked_and_touch_lapic_c_only(patch):
    text = patch.read_text()
    assert "deliberately broken" in text
    files = {line.split()[1] for line in text.splitlines() if line.startswith(("--- ", "+++ "))}
    assert files == {"a/arch/x86/kvm/lapic.c", "b/arch/x86/kvm/lapic.c"}
