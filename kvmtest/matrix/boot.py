"""Boot a kernel under QEMU, load KVM inside it, and run `kvmtest run` there.

Two boot paths, both sharing the host's root filesystem read-only into the guest over virtio-9p
so that the guest runs *this* checkout's Python and virtual environment:

- ``initramfs`` (fast): a busybox-static initramfs whose ``/init`` loads the kernel's own
  modules (KVM, 9p, virtio-pci), mounts the host root and a writable results share, and
  ``chroot``s into the host root to run the suite.
- ``vng``: virtme-ng, the way kernel developers boot a freshly built tree
  (``vng --run arch/x86/boot/bzImage``).

The guest streams KTAP to its console as each trace completes (what a LAVA-style CI reads from
the serial line; the host keeps it in ``console.log``) and writes the same KTAP (``ktap.txt``),
kvmtest's JSON report (``run.json``, what the matrix reads), JUnit XML (``junit.xml``),
kvmtest's stderr (``stderr.txt``) and the exit code (``exit-code``) into the results
directory, which is mounted in the guest at the same path as on the host. QEMU uses hardware
virtualisation where the host offers nested KVM and otherwise single-threaded TCG with
``-cpu max`` (which emulates SVM, so the guest kernel's ``kvm_amd`` offers a working
``/dev/kvm``).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmtest.host import default_profile

CACHE_DIR = Path(os.environ.get("KVMTEST_CACHE", Path.home() / ".cache" / "kvmtest"))
DEBIAN_PACKAGES = {  # Debian package -> the commands it provides
    "qemu-system-x86": "qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "cpio": "cpio",
    "xz-utils": "xz",
}
# Modules the guest needs, in the order they are wanted; dependencies are loaded first.
# The guest's /init loads only the vendor module matching its CPU (svm or vmx flag).
GUEST_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "kvm_amd", "kvm_intel"]
OPTIONAL_MODULES = {"kvm_intel", "kvm_amd"}
# Exit code reported when the guest never wrote one (boot failure, panic, timeout).
EXIT_NO_RESULT = 3
EXIT_ERROR = 1


class BootError(Exception):
    """The kernel could not be prepared or booted (not a test failure)."""


@dataclass
class Kernel:
    """A bootable kernel: its image, its module tree (may be None) and its release."""

    image: Path
    modules: Path | None = None
    release: str = ""
    label: str = ""

    def __post_init__(self):
        self.image = Path(self.image)
        if self.modules is not None:
            self.modules = Path(self.modules)
        if not self.release:
            self.release = guess_release(self.image, self.modules)
        if not self.label:
            self.label = self.release or self.image.name


@dataclass
class BootResult:
    kernel: str
    release: str
    profile: str
    method: str
    accel: str
    exit_code: int
    out_dir: Path
    boot_seconds: float | None = None
    suite_seconds: float | None = None
    total_seconds: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def ktap(self) -> Path:
        return self.out_dir / "ktap.txt"

    @property
    def junit(self) -> Path:
        return self.out_dir / "junit.xml"

    @property
    def report(self) -> Path:
        return self.out_dir / "run.json"

    def to_json(self) -> dict:
        return {
            "kernel": self.kernel,
            "release": self.release,
            "profile": self.profile,
            "method": self.method,
            "accel": self.accel,
            "exit_code": self.exit_code,
            "out_dir": str(self.out_dir),
            "ktap": str(self.ktap),
            "junit": str(self.junit),
            "json": str(self.report),
            "boot_seconds": self.boot_seconds,
            "suite_seconds": self.suite_seconds,
            "total_seconds": self.total_seconds,
            "notes": self.notes,
        }


def say(message: str) -> None:
    print(f"kvmtest matrix: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Host set-up


def ensure_debian_packages(packages=None) -> None:
    """Install the Debian packages the boot needs (as root with apt-get), idempotently."""
    wanted = packages or DEBIAN_PACKAGES
    missing = [
        pkg
        for pkg, tool in wanted.items()
        if not (os.path.exists(tool) if tool.startswith("/") else shutil.which(tool))
    ]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BootError(f"missing Debian packages: apt-get install {' '.join(missing)}")
    say(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def nested_kvm_available() -> bool:
    """Whether the host's KVM can run a guest that itself uses KVM (nested VMX/SVM)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    for module in ("kvm_intel", "kvm_amd"):
        try:
            value = Path(f"/sys/module/{module}/parameters/nested").read_text().strip()
        except OSError:
            continue
        if value in ("Y", "y", "1"):
            return True
    return False


def choose_accel(accel: str) -> str:
    if accel == "auto":
        return "kvm" if nested_kvm_available() else "tcg"
    return accel


def qemu_cpu_args(accel: str) -> list:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # Multi-threaded TCG froze the guest every few minutes (QEMU 7.2): one thread it is.
    return ["-accel", "tcg,thread=single", "-cpu", "max"]


# --------------------------------------------------------------------------------------------
# Debian kernels


@dataclass(frozen=True)
class DebianKernel:
    """A pinned Debian kernel: its suite, its packages (the first holds the image) and their
    version. 7.x splits the kernel (``linux-binary-*``) from its modules (``linux-modules-*``);
    older suites ship one ``linux-image-*`` package with both."""

    suite: str
    packages: tuple
    version: str

    @property
    def label(self) -> str:
        return self.packages[0]


def host_archive(sources_dirs=("/etc/apt/sources.list.d",), sources_list="/etc/apt/sources.list"):
    """(URI, Signed-By) of the machine's own main Debian archive entry (the one whose suites are
    plain codenames, not -security or -updates), from its deb822 .sources files or its one-line
    sources.list. The private apt configuration uses the same mirror, never a hard-coded one."""
    stanzas = []
    for directory in sources_dirs:
        for path in sorted(Path(directory).glob("*.sources")):
            text = path.read_text(errors="replace")
            for block in re.split(r"\n\s*\n", text):
                fields = {}
                for line in block.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" in fields.get("types", "").split() and fields.get("uris"):
                    stanzas.append(fields)
    try:
        lines = Path(sources_list).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        match = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
        if match:
            options = match[1] or ""
            signed = re.search(r"signed-by=(\S+?)\]?(\s|$)", options)
            stanzas.append(
                {
                    "uris": match[2],
                    "suites": match[3],
                    "components": match[4],
                    "signed-by": signed[1] if signed else "",
                }
            )
    for fields in stanzas:
        suites = fields.get("suites", "").split()
        if "main" in fields.get("components", "").split() and any("-" not in s for s in suites):
            return fields["uris"].split()[0], fields.get("signed-by", "")
    raise BootError(
        "no Debian archive in the machine's apt sources (/etc/apt/sources.list.d/*.sources or "
        "/etc/apt/sources.list) to fetch kernels from"
    )


def private_apt(suites, cache: Path = CACHE_DIR) -> Path:
    """An apt configuration of kvmtest's own under ``cache/apt``: a sources file listing
    ``suites`` of the machine's archive, and an apt.conf pointing apt at it and at its own
    package lists and cache (``apt-get -c apt.conf update``). The host's sources, lists and
    cache are never touched."""
    root = cache / "apt"
    uri, signed_by = host_archive()
    sources = root / "sources.list.d"
    for sub in (sources, root / "lists" / "partial", root / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    stanza = ["Types: deb", f"URIs: {uri}", f"Suites: {' '.join(sorted(set(suites)))}"]
    stanza.append("Components: main")
    if signed_by:
        stanza.append(f"Signed-By: {signed_by}")
    text = "# written by kvmtest (kvmtest/matrix/boot.py private_apt)\n" + "\n".join(stanza) + "\n"
    path = sources / "kvmtest.sources"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        (root / "lists" / ".updated").unlink(missing_ok=True)
    conf = root / "apt.conf"
    conf.write_text(
        "// written by kvmtest: its own sources, lists and cache; the host's stay untouched\n"
        'Dir::Etc::SourceList "/dev/null";\n'
        f'Dir::Etc::SourceParts "{sources}";\n'
        f'Dir::State::Lists "{root / "lists"}";\n'
        f'Dir::Cache "{root / "cache"}";\n'
        'APT::Sandbox::User "root";\n'
    )
    return conf


def apt_get(conf: Path, *args, cwd=None, check=True):
    command = ["apt-get", "-c", str(conf), "-q", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise BootError(f"{shlex.join(command)} failed: {result.stderr.strip()[-500:]}")
    return result


def fetch_debian_kernel(kernel: DebianKernel | str, cache: Path = CACHE_DIR, suites=None) -> Kernel:
    """`apt-get download` a pinned Debian kernel through kvmtest's private apt configuration
    and unpack it under the cache (never install). A bare package name is fetched from the
    host's own apt sources, as before."""
    if isinstance(kernel, str):
        kernel = DebianKernel("", (kernel,), "")
    root = cache / "kernels" / kernel.label
    stamp = root / ".unpacked"
    if not stamp.exists():
        debs = cache / "kernels" / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        ensure_debian_packages({"dpkg": "dpkg-deb"})
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            wanted = [p for p in kernel.packages if not sorted(debs.glob(f"{p}_*.deb"))]
            if wanted:
                raise BootError(f"fetching {', '.join(wanted)} needs apt-get (and root)")
        conf = private_apt(suites or [kernel.suite or _host_codename()], cache)
        files = []
        for package in kernel.packages:
            pattern = f"{package}_{kernel.version or '*'}_*.deb".replace(":", "%3a")
            found = sorted(debs.glob(pattern))
            if not found:
                lists = conf.parent / "lists" / ".updated"
                if not lists.exists():
                    say(f"apt-get update (kvmtest's own sources: {conf.parent})")
                    apt_get(conf, "update")
                    lists.touch()
                pin = f"{package}={kernel.version}" if kernel.version else package
                say(f"apt-get download {pin}")
                if apt_get(conf, "download", pin, cwd=debs, check=False).returncode != 0:
                    apt_get(conf, "update")  # stale lists: once more with fresh ones
                    result = apt_get(conf, "download", pin, cwd=debs, check=False)
                    if result.returncode != 0:
                        raise BootError(
                            f"apt-get download {pin} failed: is it still in the archive "
                            f"({kernel.suite or 'the host suite'})? {result.stderr.strip()[-300:]}"
                        )
                found = sorted(debs.glob(pattern))
            if not found:
                raise BootError(f"apt-get download {package} produced no .deb")
            files.append(found[-1])
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for deb in files:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        stamp.touch()
    return unpacked_kernel(root, kernel.label)


def _host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    match = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
    if not match:
        raise BootError("cannot tell this machine's Debian suite (/etc/os-release)")
    return match[1]


def unpacked_kernel(root: Path, label: str) -> Kernel:
    """The image and module tree of an unpacked Debian kernel: /boot/vmlinuz-REL with
    /lib/modules/REL (up to 6.x), or /usr/lib/modules/REL/vmlinuz (7.x, merged /usr)."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if images:
        release = images[0].name[len("vmlinuz-") :]
        for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
            if (base / release).is_dir():
                return Kernel(images[0], base / release, release, label=label)
        return Kernel(images[0], None, release, label=label)
    for base in (root / "usr" / "lib" / "modules", root / "lib" / "modules"):
        for image in sorted(base.glob("*/vmlinuz")):
            return Kernel(image, image.parent, image.parent.name, label=label)
    raise BootError(f"{label}: no /boot/vmlinuz-* or /usr/lib/modules/*/vmlinuz in the package")


def kernel_from_tree(tree: Path, release: str | None = None) -> Kernel:
    """A built kernel tree, as ``vng --run .`` takes it: ``arch/x86/boot/bzImage`` and the
    release from ``include/config/kernel.release`` (both in the output directory of an
    ``O=`` build). A modular build's tree is also its module tree (``modules.order``)."""
    tree = Path(tree)
    image = tree / "arch" / "x86" / "boot" / "bzImage"
    if not image.is_file():
        hint = ""
        if (tree / "Makefile").is_file() and not (tree / ".config").exists():
            hint = " (built with O=DIR? give that output directory)"
        raise BootError(f"{tree}: no arch/x86/boot/bzImage: build it first (make bzImage){hint}")
    release_file = tree / "include" / "config" / "kernel.release"
    found = release or _read_text(release_file) or image_release(image)
    if not found:
        raise BootError(f"{tree}: no include/config/kernel.release; pass --release")
    order = tree / "modules.order"
    modules = tree if order.is_file() and _read_text(order) else None
    return Kernel(image, modules, found, label=found)


def guess_release(image: Path, modules: Path | None) -> str:
    """The kernel release: the module directory's name, or the version string in the image."""
    if modules is not None and modules.name and modules.name[0].isdigit():
        return modules.name
    if image.name.startswith("vmlinuz-"):
        return image.name[len("vmlinuz-") :]
    return image_release(image)


def image_release(image: Path) -> str:
    """The release from a bzImage's setup header (the kernel_version string), or ''."""
    try:
        data = image.read_bytes()[:0x10000]
    except OSError:
        return ""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return ""
    offset = int.from_bytes(data[0x20E:0x210], "little") + 0x200
    end = data.find(b"\0", offset)
    text = data[offset:end].decode("ascii", "replace") if end > offset else ""
    return text.split(" ")[0]


def find_modules_for(image: Path) -> Path | None:
    """Modules next to an image: a Debian tree (../lib/modules/REL) or /lib/modules/REL."""
    release = guess_release(image, None)
    candidates = [image.parent.parent / "lib" / "modules" / release]
    candidates.append(Path("/lib/modules") / release)
    for candidate in candidates:
        if release and candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Modules


def module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        result = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        return result.stdout
    return data


def module_depends(data: bytes) -> list:
    """The `depends=` entry of a module's .modinfo section."""
    start = 0
    while True:
        index = data.find(b"depends=", start)
        if index < 0:
            return []
        if index == 0 or data[index - 1] == 0:
            end = data.find(b"\0", index)
            value = data[index + len("depends=") : end].decode("ascii", "replace")
            return [d.replace("-", "_") for d in value.split(",") if d]
        start = index + 1


def index_modules(modules: Path) -> dict:
    index = {}
    for path in sorted(modules.rglob("*.ko*")):
        if ".ko" in path.name:
            index.setdefault(module_name(path), path)
    return index


def builtin_modules(modules: Path) -> set:
    try:
        text = (modules / "modules.builtin").read_text()
    except OSError:
        return set()
    return {module_name(Path(line.strip())) for line in text.splitlines() if line.strip()}


def resolve_modules(modules: Path | None, wanted=GUEST_MODULES) -> tuple[list, list]:
    """(paths in load order with dependencies first, names not found as modules).

    A name missing from the tree is assumed built in (a kernel built with the config fragment
    has everything `=y`); the caller reports it.
    """
    if modules is None or not modules.is_dir():
        return [], list(wanted)
    index = index_modules(modules)
    builtin = builtin_modules(modules)
    order, seen, missing = [], set(), []

    def visit(name, stack=()):
        if name in seen or name in stack:
            return
        path = index.get(name)
        if path is None:
            if name not in builtin:
                missing.append(name)
            seen.add(name)
            return
        for dep in module_depends(read_module(path)):
            visit(dep, (*stack, name))
        seen.add(name)
        order.append(path)

    for name in wanted:
        visit(name)
    return order, missing


# --------------------------------------------------------------------------------------------
# The initramfs

INIT_SCRIPT = r"""#!/bin/busybox sh
# kvmtest's guest init: modules, host root over 9p (read-only), results share, run, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "kvmtest-init: up $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /modules.order); do
    case $m in  # the vendor module matching the CPU only
    kvm_amd.ko) grep -qw svm /proc/cpuinfo || continue ;;
    kvm_intel.ko) grep -qw vmx /proc/cpuinfo || continue ;;
    esac
    insmod "/modules/$m" 2>/dev/null || echo "kvmtest-init: insmod $m failed"
done
out=$(sed -n 's/.*kvmtest\.out=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host; then
    echo "kvmtest-init: cannot mount the host root"; poweroff -f
fi
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "/host$out"
[ -e /host/dev/kvm ] || echo "kvmtest-init: no /dev/kvm in the guest"
echo "kvmtest-init: running $(cut -d' ' -f1 /proc/uptime)s"
echo "$(cut -d' ' -f1 /proc/uptime)" > "/host$out/boot-seconds"
chroot /host /bin/sh "$out/guest.sh"
echo "kvmtest-init: done $(cut -d' ' -f1 /proc/uptime)s"
sync
umount "/host$out"
poweroff -f
"""


def busybox_path() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            return Path(candidate)
    raise BootError("busybox not found (Debian: apt-get install busybox-static)")


def build_initramfs(kernel: Kernel, cache: Path = CACHE_DIR) -> tuple[Path, list]:
    """A cached gzip'd cpio initramfs for this kernel; returns (path, modules not found)."""
    paths, missing = resolve_modules(kernel.modules)
    busybox = busybox_path()
    key = hashlib.sha256()
    key.update(INIT_SCRIPT.encode())
    key.update(busybox.read_bytes())
    for path in paths:
        stat = path.stat()
        key.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache / "initramfs" / f"{kernel.release or 'kernel'}-{key.hexdigest()[:16]}.cpio.gz"
    if target.exists():
        return target, missing
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvmtest-initramfs-") as staging:
        root = Path(staging)
        for sub in ("bin", "proc", "sys", "dev", "modules", "host"):
            (root / sub).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        names = []
        for path in paths:
            name = module_name(path) + ".ko"
            (root / "modules" / name).write_bytes(read_module(path))
            names.append(name)
        (root / "modules.order").write_text("\n".join(names) + "\n")
        init = root / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        listing = subprocess.run(
            ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
        ).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            cwd=root,
            input=listing,
            capture_output=True,
            check=True,
        ).stdout
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_bytes(gzip.compress(archive, compresslevel=6))
    partial.rename(target)
    return target, missing


# --------------------------------------------------------------------------------------------
# The command run inside the guest


def project_root() -> Path:
    """The checkout (or install) this kvmtest was imported from: the package's parent."""
    return Path(__file__).resolve().parents[2]


def guest_script(out_dir: Path, run_args: list, profile: str, python: str | None = None) -> str:
    """The shell script the guest runs (in the host root, chrooted): kvmtest run, results out."""
    python = python or sys.executable
    out = shlex.quote(str(out_dir))
    command = [
        python,
        "-m",
        "kvmtest",
        "run",
        "--format",
        "ktap",
        "--junit-xml",
        str(out_dir / "junit.xml"),
        "--json-file",
        str(out_dir / "run.json"),
        "--profile",
        profile,
        "--require-kvm",
        *run_args,
    ]
    return "\n".join(
        [
            "#!/bin/sh",
            "# written by kvmtest matrix: runs inside the booted kernel",
            f"out={out}",
            'mkdir -p "$out/tmp"',
            'export TMPDIR="$out/tmp" HOME="$out/tmp" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1',
            f"cd {shlex.quote(str(project_root()))}",
            "modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null || true",
            'uname -r > "$out/release"',
            'start=$(cut -d" " -f1 /proc/uptime)',
            "# KTAP to the console as each result completes, and to ktap.txt; the exit code is",
            "# kvmtest's, not tee's (POSIX sh has no pipefail)",
            f'{{ {shlex.join(command)} 2> "$out/stderr.txt"; echo $? > "$out/exit-code"; }} \\',
            '    | tee "$out/ktap.txt"',
            'end=$(cut -d" " -f1 /proc/uptime)',
            'echo "$start $end" > "$out/suite-uptime"',
            "sync",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------
# Booting


def boot(
    kernel: Kernel,
    out_dir: Path,
    run_args=(),
    profile: str | None = None,
    method: str = "initramfs",
    accel: str = "auto",
    cpus: int = 2,
    memory: str = "2G",
    timeout: float = 3600.0,
    console=None,
    cache: Path = CACHE_DIR,
) -> BootResult:
    """Boot `kernel`, run the suite inside it, and collect the results into `out_dir`."""
    ensure_debian_packages()
    out_dir = Path(out_dir).resolve()
    if " " in str(out_dir):
        raise BootError(f"the results directory may not contain spaces: {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("ktap.txt", "junit.xml", "run.json", "exit-code", "stderr.txt", "boot-seconds"):
        (out_dir / stale).unlink(missing_ok=True)
    profile = profile or default_profile(kernel.release)
    accel = choose_accel(accel)
    result = BootResult(
        kernel.label, kernel.release, profile, method, accel, EXIT_NO_RESULT, out_dir
    )
    script = out_dir / "guest.sh"
    script.write_text(guest_script(out_dir, list(run_args), profile))
    script.chmod(0o755)
    if method == "initramfs":
        initramfs, missing = build_initramfs(kernel, cache)
        if missing:
            absent = sorted(set(missing) - OPTIONAL_MODULES)
            if absent:
                result.notes.append(f"modules not found (assumed built in): {', '.join(absent)}")
        command = initramfs_command(kernel, initramfs, out_dir, accel, cpus, memory)
    elif method == "vng":
        command = vng_command(kernel, out_dir, accel, cpus, memory)
    else:
        raise BootError(f"unknown boot method {method!r}")
    (out_dir / "qemu-command.txt").write_text(shlex.join(command) + "\n")
    say(f"booting {kernel.label} ({method}, {accel}, profile {profile})")
    start = time.monotonic()
    timed_out = run_console(command, out_dir / "console.log", timeout, console)
    result.total_seconds = round(time.monotonic() - start, 1)
    if timed_out:
        result.notes.append(f"timed out after {timeout:.0f} s; the guest was killed")
    result.exit_code = _read_int(out_dir / "exit-code", EXIT_NO_RESULT)
    boot_seconds = _read_float(out_dir / "boot-seconds")
    uptimes = _read_text(out_dir / "suite-uptime").split()
    if len(uptimes) == 2:
        suite_start, suite_end = float(uptimes[0]), float(uptimes[1])
        result.suite_seconds = round(suite_end - suite_start, 1)
        boot_seconds = boot_seconds if boot_seconds is not None else suite_start
    result.boot_seconds = round(boot_seconds, 1) if boot_seconds is not None else None
    try:
        (out_dir / "tmp").rmdir()  # the guest's TMPDIR, when it left nothing behind
    except OSError:
        pass
    if not (out_dir / "exit-code").exists():
        result.notes.append("the guest wrote no exit code: see console.log")
    if not _read_text(out_dir / "ktap.txt"):
        if (out_dir / "exit-code").exists():
            code = result.exit_code
            result.notes.append(f"kvmtest run exited {code} without KTAP: see stderr.txt")
        write_boot_error(out_dir, kernel.label, "; ".join(result.notes))
    return result


def write_boot_error(out_dir: Path, kernel: str, reason: str) -> None:
    """KTAP and JUnit XML saying the boot itself failed, so CI always has results to publish."""
    from xml.sax.saxutils import quoteattr

    reason = " ".join(reason.replace("#", " ").split())
    (out_dir / "ktap.txt").write_text(
        f"KTAP version 1\n1..1\n# {kernel}: {reason}\nnot ok 1 boot # ERROR {reason}\n"
    )
    (out_dir / "junit.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name={quoteattr("kvmtest-boot " + kernel)} tests="1" '
        'failures="0" errors="1" skipped="0">'
        f'<testcase classname="kvmtest.boot" name="boot"><error message={quoteattr(reason)}/>'
        "</testcase></testsuite></testsuites>\n"
    )


def initramfs_command(kernel, initramfs, out_dir, accel, cpus, memory) -> list:
    return [
        "qemu-system-x86_64",
        *qemu_cpu_args(accel),
        "-smp",
        str(cpus),
        "-m",
        memory,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel.image),
        "-initrd",
        str(initramfs),
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={out_dir},mount_tag=results,security_model=none,multidevs=remap",
        "-append",
        f"console=ttyS0 quiet panic=-1 kvmtest.out={out_dir}",
    ]


def vng_executable() -> str:
    beside = Path(sys.executable).parent / "vng"
    if beside.exists():
        return str(beside)
    found = shutil.which("vng")
    if found:
        return found
    say("installing virtme-ng into this environment (pip install virtme-ng)")
    pip = [sys.executable, "-m", "pip", "install", "-q", "virtme-ng"]
    if subprocess.run(pip).returncode != 0 or not beside.exists():
        raise BootError("virtme-ng is not installed and pip could not install it")
    return str(beside)


def vng_command(kernel, out_dir, accel, cpus, memory) -> list:
    ensure_debian_packages({"udev": "udevadm", "kmod": "depmod"})
    command = [vng_executable(), "--run", str(kernel.image), "--user", "root"]
    command += ["--cpus", str(cpus), "--memory", memory, "--rwdir", str(out_dir)]
    if accel == "kvm":
        command += ["--qemu-opts=-cpu host"]
    else:
        # vng adds `-machine q35 -cpu max` without KVM; one TCG thread (see qemu_cpu_args).
        command += ["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]
    guest = (
        f'echo "$(cut -d" " -f1 /proc/uptime)" > {shlex.quote(str(out_dir))}/boot-seconds; '
        f"sh {shlex.quote(str(out_dir / 'guest.sh'))}"
    )
    return [*command, "--exec", guest]


def run_console(command: list, log: Path, timeout: float, console=None) -> bool:
    """Run QEMU (or vng) with its console going to `log` (and `console`); True on timeout."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # vng runs virtme-run from its own bin directory (the virtual environment's)
            env=dict(
                os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
            ),
        )
        deadline = time.monotonic() + timeout
        timed_out = False
        os.set_blocking(process.stdout.fileno(), False)
        while True:
            chunk = process.stdout.read(65536)
            if chunk:
                sink.write(chunk)
                sink.flush()
                if console is not None:
                    console.write(chunk.decode("utf-8", "replace"))
                    console.flush()
            elif process.poll() is not None:
                break
            else:
                time.sleep(0.1)
            if time.monotonic() > deadline:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
        rest = process.stdout.read() or b""
        sink.write(rest)
    return timed_out


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_int(path: Path, default: int) -> int:
    try:
        return int(_read_text(path))
    except ValueError:
        return default


def _read_float(path: Path):
    try:
        return float(_read_text(path))
    except ValueError:
        return None
