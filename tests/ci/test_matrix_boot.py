"""The boot tooling without booting: module resolution, the initramfs, QEMU and guest command
lines, kernel resolution and the profile chosen for each kernel of the matrix."""

import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmtest.host import default_profile
from kvmtest.matrix import boot as mb
from kvmtest.matrix import cli as matrix
from tests.conftest import require_kvm


def fake_module(path: Path, depends: str, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"\x7fELF....\0license=GPL\0depends=" + depends.encode() + b"\0name=x\0"
    if compress:
        path.with_name(path.name + ".xz").write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ))
    else:
        path.write_bytes(data)


@pytest.fixture
def module_tree(tmp_path):
    root = tmp_path / "lib" / "modules" / "6.12.100+deb12-amd64"
    kernel = root / "kernel"
    fake_module(kernel / "virt/lib/irqbypass.ko", "", compress=True)
    fake_module(kernel / "arch/x86/kvm/kvm.ko", "irqbypass", compress=True)
    fake_module(kernel / "drivers/crypto/ccp/ccp.ko", "", compress=True)
    fake_module(kernel / "arch/x86/kvm/kvm-amd.ko", "kvm,ccp", compress=True)
    fake_module(kernel / "arch/x86/kvm/kvm-intel.ko", "kvm", compress=True)
    fake_module(kernel / "fs/netfs/netfs.ko", "", compress=True)
    fake_module(kernel / "net/9p/9pnet.ko", "", compress=True)
    fake_module(kernel / "net/9p/9pnet_virtio.ko", "9pnet", compress=True)
    fake_module(kernel / "fs/9p/9p.ko", "9pnet,netfs", compress=True)
    (root / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    return root


def test_module_depends():
    assert mb.module_depends(b"xx\0depends=kvm,ccp\0name=kvm_amd\0") == ["kvm", "ccp"]
    assert mb.module_depends(b"\0depends=\0") == []
    assert mb.module_depends(b"nodepends=1\0") == []


def test_resolve_modules_dependencies_first(module_tree):
    paths, missing = mb.resolve_modules(module_tree)
    names = [mb.module_name(p) for p in paths]
    assert missing == []  # virtio_pci is built in
    assert names.index("irqbypass") < names.index("kvm") < names.index("kvm_amd")
    assert names.index("ccp") < names.index("kvm_amd")
    assert names.index("9pnet") < names.index("9pnet_virtio") < names.index("9p")
    assert names.count("kvm") == 1
    assert all(p.name.endswith(".ko.xz") for p in paths)


def test_resolve_modules_without_a_tree():
    paths, missing = mb.resolve_modules(None)
    assert paths == [] and set(missing) == set(mb.GUEST_MODULES)


@pytest.mark.skipif(
    not (shutil.which("cpio") and Path("/bin/busybox").exists()), reason="needs cpio, busybox"
)
def test_initramfs_contents(module_tree, tmp_path):
    kernel = mb.Kernel(tmp_path / "vmlinuz", module_tree)
    path, _ = mb.build_initramfs(kernel, cache=tmp_path / "cache")
    again, _ = mb.build_initramfs(kernel, cache=tmp_path / "cache")
    assert again == path  # cached
    listing = subprocess.run(
        f"gzip -dc {path} | cpio -t --quiet", shell=True, capture_output=True, text=True
    ).stdout.split()
    assert {"init", "bin/busybox", "modules.order", "modules/kvm_amd.ko"} <= set(listing)


def test_init_script_loads_modules_mounts_and_powers_off():
    init = mb.INIT_SCRIPT
    assert init.startswith("#!/bin/busybox sh")
    assert "insmod" in init and "modules.order" in init
    assert "hostroot /host" in init and "ro," in init
    assert 'results "/host$out"' in init
    assert 'chroot /host /bin/sh "$out/guest.sh"' in init
    assert init.rstrip().endswith("poweroff -f")


def test_guest_script_runs_this_checkout(tmp_path):
    script = mb.guest_script(tmp_path, ["-k", "msi"], "linux-6.1", python="/venv/bin/python")
    root = Path(mb.__file__).resolve().parents[2]
    assert f"cd {root}" in script
    assert "/venv/bin/python -m kvmtest run --format ktap" in script
    assert f"--junit-xml {tmp_path / 'junit.xml'}" in script
    assert "--profile linux-6.1 --require-kvm -k msi" in script
    assert f"--json-file {tmp_path / 'run.json'}" in script
    assert '| tee "$out/ktap.txt"' in script and 'echo $? > "$out/exit-code"' in script


def test_guest_script_streams_ktap_to_the_console(tmp_path):
    """Run the guest's script here, as the guest would (minus the boot): its stdout, which is
    the guest's console, carries the KTAP as it is produced; ktap.txt holds the same; the exit
    code is kvmtest's and the matrix reads run.json."""
    require_kvm()
    script = tmp_path / "guest.sh"
    script.write_text(mb.guest_script(tmp_path, ["-k", "msi-init-sipi"], "mainline"))
    console = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=300)
    assert console.returncode == 0, console.stderr
    lines = console.stdout.splitlines()
    assert lines[0] == "KTAP version 1" and any(x.startswith("ok 1 ") for x in lines)
    assert (tmp_path / "ktap.txt").read_text() == console.stdout
    assert (tmp_path / "exit-code").read_text().strip() == "0"
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["schema_version"] == 1 and report["backend"] == "kvm"
    assert report["host"]["backend_decided_by"].startswith("probe: ")  # how the flavour was chosen
    outcome = matrix.outcome_from_dir({"kernel": "k", "release": "r", "profile": "p",
                                       "exit_code": 0}, tmp_path)  # fmt: skip
    assert outcome.traces and set(outcome.traces.values()) == {"pass"}
    assert outcome.backend == report["host"]["backend"]


def test_qemu_command_tcg_emulates_svm(tmp_path):
    kernel = mb.Kernel(tmp_path / "vmlinuz-6.1.0-50-amd64", None)
    command = mb.initramfs_command(kernel, tmp_path / "i.cpio.gz", tmp_path, "tcg", 2, "2G")
    assert command[:5] == ["qemu-system-x86_64", "-accel", "tcg,thread=single", "-cpu", "max"]
    assert any("mount_tag=hostroot" in a and "readonly=on" in a for a in command)
    assert any(f"path={tmp_path},mount_tag=results" in a for a in command)
    assert f"kvmtest.out={tmp_path}" in command[-1]
    assert mb.qemu_cpu_args("kvm") == ["-accel", "kvm", "-cpu", "host"]


def test_vng_command(tmp_path, monkeypatch):
    monkeypatch.setattr(mb, "vng_executable", lambda: "vng")
    monkeypatch.setattr(mb, "ensure_debian_packages", lambda packages=None: None)
    kernel = mb.Kernel(tmp_path / "bzImage", None, "6.13.0")
    command = mb.vng_command(kernel, tmp_path, "tcg", 2, "2G")
    assert command[:3] == ["vng", "--run", str(tmp_path / "bzImage")]
    assert "--disable-kvm" in command and "--qemu-opts=-accel tcg,thread=single" in command
    assert command[command.index("--rwdir") + 1] == str(tmp_path)
    assert command[-2] == "--exec" and "guest.sh" in command[-1]


def test_image_release_from_bzimage_header(tmp_path):
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x100).to_bytes(2, "little")  # version string at 0x300
    data[0x300:0x320] = b"6.13.0-rc1+ (dev@box) #1 SMP\0\0\0\0"
    image = tmp_path / "bzImage"
    image.write_bytes(bytes(data))
    assert mb.image_release(image) == "6.13.0-rc1+"
    assert mb.Kernel(image).release == "6.13.0-rc1+"


def test_debian_kernels_get_their_profiles():
    """The pinned kernels of the matrix, each judged by the profile of its release."""
    releases = {
        "debian-5.10": ("bullseye", "5.10.0-32-amd64", "linux-5.10"),
        "debian-6.1": ("bookworm", "6.1.0-50-amd64", "linux-6.1"),
        "debian-6.12": ("trixie", "6.12.117+deb13-amd64", "linux-6.12"),
        "debian-7.2": ("sid", "7.2.13+deb14-amd64", "mainline"),
    }
    assert set(matrix.DEBIAN_KERNELS) == set(releases)
    for alias, (suite, release, profile) in releases.items():
        kernel = matrix.DEBIAN_KERNELS[alias]
        assert kernel.suite == suite and kernel.version
        assert release in kernel.packages[0]
        assert default_profile(release) == profile
    assert matrix.DEFAULT_MATRIX == [*releases, "host"]
    assert matrix.SUITES == sorted(s for s, _, _ in releases.values())


def test_host_archive_from_deb822_and_one_line_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    none = tmp_path / "none.list"
    assert mb.host_archive((d,), none) == (
        "http://mirror.example/debian",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [signed-by=/k.gpg] http://old.example/debian bullseye main\n")
    found = mb.host_archive((tmp_path / "empty",), one_line)
    assert found == ("http://old.example/debian", "/k.gpg")
    with pytest.raises(mb.BootError, match="no Debian archive"):
        mb.host_archive((tmp_path / "empty",), none)


def test_private_apt_configuration_never_touches_the_hosts(tmp_path, monkeypatch):
    monkeypatch.setattr(mb, "host_archive", lambda: ("http://mirror.example/debian", "/k.gpg"))
    conf = mb.private_apt(["sid", "bullseye", "sid"], tmp_path)
    assert conf == tmp_path / "apt" / "apt.conf"
    text = conf.read_text()
    assert 'Dir::Etc::SourceList "/dev/null";' in text
    assert f'Dir::Etc::SourceParts "{tmp_path / "apt" / "sources.list.d"}";' in text
    assert f'Dir::State::Lists "{tmp_path / "apt" / "lists"}";' in text
    sources = (tmp_path / "apt" / "sources.list.d" / "kvmtest.sources").read_text()
    assert "URIs: http://mirror.example/debian" in sources
    assert "Suites: bullseye sid" in sources and "Signed-By: /k.gpg" in sources
    assert "/etc/apt" not in text


def test_unpacked_kernel_layouts(tmp_path):
    old = tmp_path / "old"
    (old / "boot").mkdir(parents=True)
    (old / "boot" / "vmlinuz-6.12.117+deb13-amd64").write_bytes(b"")
    (old / "usr" / "lib" / "modules" / "6.12.117+deb13-amd64").mkdir(parents=True)
    kernel = mb.unpacked_kernel(old, "debian-6.12")
    assert kernel.release == "6.12.117+deb13-amd64"
    assert kernel.modules == old / "usr" / "lib" / "modules" / "6.12.117+deb13-amd64"
    new = tmp_path / "new" / "usr" / "lib" / "modules" / "7.2.13+deb14-amd64"
    new.mkdir(parents=True)
    (new / "vmlinuz").write_bytes(b"")
    kernel = mb.unpacked_kernel(tmp_path / "new", "debian-7.2")
    assert (kernel.image, kernel.modules, kernel.release) == (new / "vmlinuz", new, new.name)
    with pytest.raises(mb.BootError, match="no /boot/vmlinuz"):
        mb.unpacked_kernel(tmp_path, "nothing")


def test_a_kernel_build_tree_is_a_kernel(tmp_path):
    """`kvmtest matrix boot path/to/linux`, as `vng --run .`: bzImage and kernel.release."""
    tree = tmp_path / "linux"
    (tree / "arch" / "x86" / "boot").mkdir(parents=True)
    (tree / "Makefile").write_text("")
    with pytest.raises(mb.BootError, match="no arch/x86/boot/bzImage.*O=DIR"):
        matrix.resolve_kernel(str(tree))
    (tree / "arch" / "x86" / "boot" / "bzImage").write_bytes(b"")
    (tree / "include" / "config").mkdir(parents=True)
    (tree / "include" / "config" / "kernel.release").write_text("6.1.176\n")
    kernel = matrix.resolve_kernel(str(tree))
    assert kernel.image == tree / "arch" / "x86" / "boot" / "bzImage"
    assert (kernel.release, kernel.label, kernel.modules) == ("6.1.176", "6.1.176", None)
    assert default_profile(kernel.release) == "linux-6.1"
    (tree / "modules.order").write_text("arch/x86/kvm/kvm.ko\n")  # a modular build
    assert matrix.resolve_kernel(str(tree)).modules == tree
    assert matrix.resolve_kernel(str(tree), release="6.1.99").release == "6.1.99"


def test_run_arguments_after_dashes():
    """`ci/boot-kernel IMAGE -- RUN-ARGS`: what follows -- goes to kvmtest run as it is."""
    import argparse

    parser = argparse.ArgumentParser()
    matrix.add_parser(parser.add_subparsers(dest="command"))
    argv, after = matrix.split_after_dashes(
        ["matrix", "boot", "bzImage", "--out", "r", "--", "-v", "--repeat", "2", "--", "x"]
    )
    assert after == ["-v", "--repeat", "2", "--", "x"]
    args = parser.parse_args(argv)
    args.after_dashes = after
    assert (args.kernel, args.out) == ("bzImage", "r")
    assert matrix.run_arguments(args) == ["--timeout", "600", "-v", "--repeat", "2", "--", "x"]
    assert matrix.split_after_dashes(["matrix", "boot", "k"]) == (["matrix", "boot", "k"], [])


def test_boot_kernel_script_passes_run_args_after_dashes(tmp_path):
    """The documented form reaches the parser: a missing image fails as such, not as usage."""
    script = Path(__file__).resolve().parents[2] / "ci" / "boot-kernel"
    result = subprocess.run(
        [str(script), str(tmp_path / "bzImage"), "--out", str(tmp_path / "r"), "--", "-v"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "no such kernel image" in result.stderr and "unrecognized" not in result.stderr


def test_run_arguments_forwarded():
    import argparse

    parser = argparse.ArgumentParser()
    matrix.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["matrix", "boot", "debian-6.12", "-k", "msi", "--tag", "x2apic", "--repeat", "2"]
        + ["--run-args", "--jobs 1 -v", "--trace", "t.yaml"]
    )
    assert args.kernel == "debian-6.12"
    assert matrix.run_arguments(args) == [
        "-k",
        "msi",
        "--tag",
        "x2apic",
        "--timeout",
        "600",
        "--repeat",
        "2",
        "--jobs",
        "1",
        "-v",
        str(Path("t.yaml").resolve()),
    ]


def test_unknown_kernel_is_a_clean_error(tmp_path, capsys):
    code = matrix.standalone(["boot", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert code == 1
    assert "no such kernel image" in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "kvmtest.matrix", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "boot" in result.stdout


def test_boot_error_results_parse(tmp_path):
    import xml.etree.ElementTree as ET

    from kvmtest.matrix import summary as ms

    mb.write_boot_error(tmp_path, "debian-6.1", "the guest wrote no exit code # see console.log")
    assert ms.parse_ktap((tmp_path / "ktap.txt").read_text()) == {"boot": ms.ERROR}
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.find("testcase/error") is not None
