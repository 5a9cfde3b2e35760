"""`kvmtest matrix`: validate a kernel (patch) by booting it and running the suite inside it.

    kvmtest matrix boot KERNEL [-k P]    boot one kernel under QEMU, run `kvmtest run` in it
    kvmtest matrix run [--kernel K]      the matrix: Debian 5.10, 6.1, 6.12, 7.2, the host kernel
    kvmtest matrix summary DIR           re-print a matrix run's summary table

KERNEL is a kernel build tree (``kvmtest matrix boot .`` in it, as ``vng --run .``: its
``arch/x86/boot/bzImage`` and ``include/config/kernel.release``), a kernel image
(``arch/x86/boot/bzImage``, ``/boot/vmlinuz-*``; modules from ``--modules`` or found next to it),
a Debian package (``linux-image-6.1.0-50-amd64``, fetched with ``apt-get download`` through
kvmtest's own apt configuration and unpacked under the cache, never installed) or an alias of
a pinned Debian kernel (``debian-5.10``, ``debian-6.1``, ``debian-6.12``, ``debian-7.2``).
In a matrix, ``host`` runs the suite on this machine's own kernel without booting anything.

Results per kernel (DIR/<kernel>/): ``run.json`` (kvmtest's JSON report, which the summary is
built from), ``ktap.txt`` (also streamed to the guest's console), ``junit.xml``, ``stderr.txt``,
``exit-code``, ``console.log``, and ``result.json`` (the kernel's summary row). ``matrix.json``
holds every row. All JSON files carry a ``schema_version``. The exit code is the guest's
`kvmtest run` exit code (0 pass, 1 fail, 2 usage, 4 all skipped); 1 when the kernel did not
boot or the guest reported nothing.

Also runnable without the CLI wiring: ``python -m kvmtest.matrix ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from kvmtest.host import default_profile
from kvmtest.matrix import boot as mb
from kvmtest.matrix import summary as ms

# Debian kernels of the matrix, pinned (suite, packages, version) so that a matrix run is
# reproducible; fetched through kvmtest's own apt configuration (boot.private_apt), never the
# host's sources. Bump deliberately: the archive drops old versions.
DEBIAN_KERNELS = {
    # 5.10.223, Debian 11 (bullseye, LTS)
    "debian-5.10": mb.DebianKernel("bullseye", ("linux-image-5.10.0-32-amd64",), "5.10.223-1"),
    # 6.1.176, Debian 12 (bookworm)
    "debian-6.1": mb.DebianKernel("bookworm", ("linux-image-6.1.0-50-amd64",), "6.1.176-1"),
    # 6.12.117, Debian 13 (trixie)
    "debian-6.12": mb.DebianKernel("trixie", ("linux-image-6.12.117+deb13-amd64",), "6.12.117-1"),
    # 7.2.13, Debian unstable (sid): the image and the modules are separate packages
    "debian-7.2": mb.DebianKernel(
        "sid",
        ("linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"),
        "7.2.13-1",
    ),
}
SUITES = sorted({k.suite for k in DEBIAN_KERNELS.values()})
DEFAULT_MATRIX = [*DEBIAN_KERNELS, "host"]
EXIT_FAIL = 1
SCHEMA_VERSION = 1  # of result.json and matrix.json: bumped when a key goes or changes meaning


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `matrix` (with `boot`, `run`, `summary`) to kvmtest's subcommands."""
    matrix = subparsers.add_parser(
        "matrix",
        help="boot kernels under QEMU and run the suite inside them (kernel-patch validation)",
        description="Boot a kernel under QEMU (nested KVM where the host offers it, otherwise TCG "
        "with -cpu max, which emulates SVM), load KVM inside it, run `kvmtest run` there with "
        "the profile chosen for that kernel, and bring back KTAP, JUnit XML and the exit code. "
        "See docs/kernel-matrix.md.",
    )
    actions = matrix.add_subparsers(dest="matrix_command", metavar="ACTION")

    boot = actions.add_parser(
        "boot",
        help="boot one kernel and run the suite inside it",
        description="Boot KERNEL (a built kernel tree, an image, a Debian linux-image package or "
        f"an alias: {', '.join(DEBIAN_KERNELS)}) and run `kvmtest run` inside it. Exit code: "
        "the guest's kvmtest exit code, 1 if nothing came back.",
    )
    boot.add_argument("kernel", metavar="KERNEL")
    boot.add_argument("--modules", metavar="DIR", help="the kernel's module tree lib/modules/REL")
    boot.add_argument("--release", help="kernel release (default: from the modules or image)")
    boot.add_argument(
        "--out", metavar="DIR", default="kvmtest-results", help="results (./kvmtest-results)"
    )
    _common_options(boot)

    run = actions.add_parser(
        "run",
        help="the kernel matrix: boot each kernel, run the suite, print the summary",
        description="Run the suite on each kernel of the matrix (default: "
        f"{', '.join(DEFAULT_MATRIX)}; host is this machine's own kernel) and print a summary: "
        "kernel by trace "
        "outcome, with the profile that judged each kernel. Exit 1 unless every kernel passed.",
    )
    run.add_argument(
        "--kernel",
        dest="kernels",
        action="append",
        metavar="K",
        help=f"a kernel of the matrix (repeatable; default: {' '.join(DEFAULT_MATRIX)})",
    )
    run.add_argument(
        "--out", metavar="DIR", default="kernel-matrix", help="results directory (kernel-matrix)"
    )
    run.add_argument("--all-traces", action="store_true", help="show every trace in the grid")
    _common_options(run)

    summary = actions.add_parser(
        "summary",
        help="print the summary of a finished matrix run",
        description="Re-render the summary table from DIR/matrix.json.",
    )
    summary.add_argument("out", metavar="DIR")
    summary.add_argument("--all-traces", action="store_true", help="show every trace in the grid")
    return matrix


def _common_options(parser) -> None:
    parser.add_argument(
        "--method",
        choices=("initramfs", "vng"),
        default="initramfs",
        help="initramfs: busybox + 9p (fast, default); vng: virtme-ng",
    )
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto (default): KVM where the host offers nested virtualisation, else TCG",
    )
    parser.add_argument("--profile", help="model profile (default: chosen from the release)")
    parser.add_argument("--cpus", type=int, default=2, help="guest vCPUs (2)")
    parser.add_argument("--memory", default="2G", help="guest memory (2G)")
    parser.add_argument(
        "--boot-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="kill the guest after this long (3600)",
    )
    parser.add_argument(
        "--console", action="store_true", help="copy the guest console to stderr as it runs"
    )
    parser.add_argument(
        "-k", dest="patterns", action="append", default=[], help="passed to kvmtest run"
    )
    parser.add_argument("--tag", dest="tags", action="append", default=[], help="as kvmtest run")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="kvmtest run's per-trace timeout (600: emulated KVM is slow)",
    )
    parser.add_argument("--jobs", "-j", type=int, help="kvmtest run's traces at once (its default)")
    parser.add_argument("--repeat", type=int, help="kvmtest run's repeat count")
    parser.add_argument(
        "--trace",
        dest="traces",
        action="append",
        default=[],
        metavar="PATH",
        help="trace file or directory instead of the built-in corpus (repeatable; the guest "
        "sees the host's files)",
    )
    parser.add_argument(
        "--run-args",
        default="",
        metavar="'ARGS'",
        help="more arguments for kvmtest run, as one shell-quoted string",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(after_dashes=[])  # `-- RUN-ARGS`: split off by split_after_dashes


def split_after_dashes(argv: list) -> tuple[list, list]:
    """(the matrix command's own arguments, the kvmtest run arguments after ``--``).

    ``kvmtest matrix boot IMAGE --out DIR -- -v --repeat 5``: argparse cannot hand a
    subcommand what follows ``--``, so the entry points split it off first and set
    ``args.after_dashes``."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


def run_arguments(args) -> list:
    """The `kvmtest run` arguments (besides format, JUnit file and profile) for each kernel."""
    result = []
    for pattern in args.patterns:
        result += ["-k", pattern]
    for tag in args.tags:
        result += ["--tag", tag]
    result += ["--timeout", f"{args.timeout:g}"]
    if args.jobs:
        result += ["--jobs", str(args.jobs)]
    if args.repeat:
        result += ["--repeat", str(args.repeat)]
    result += shlex.split(args.run_args)
    result += list(getattr(args, "after_dashes", None) or [])
    return result + [str(Path(t).resolve()) for t in args.traces]


def resolve_kernel(spec: str, modules: str | None = None, release: str | None = None):
    """A Kernel from an alias, a Debian package name, a kernel build tree or an image path."""
    if spec in DEBIAN_KERNELS and not os.path.exists(spec):
        kernel = mb.fetch_debian_kernel(DEBIAN_KERNELS[spec], suites=SUITES)
        kernel.label = spec
        return kernel
    if re.fullmatch(r"linux-image-[\w.+~-]+", spec) and not os.path.exists(spec):
        kernel = mb.fetch_debian_kernel(spec, suites=SUITES)
        kernel.label = spec
        return kernel
    if os.path.isdir(spec):
        return mb.kernel_from_tree(Path(spec), release)
    image = Path(spec)
    if not image.is_file():
        raise mb.BootError(
            f"{spec}: no such kernel image, kernel build tree, Debian package or alias "
            f"({', '.join(DEBIAN_KERNELS)})"
        )
    module_dir = Path(modules) if modules else mb.find_modules_for(image)
    return mb.Kernel(image, module_dir, release or "", label=_label(image, release))


def _label(image: Path, release: str | None) -> str:
    rel = release or mb.guess_release(image, None)
    return rel or image.name


def boot_one(args, spec: str, out_dir: Path, modules=None, release=None) -> ms.KernelOutcome:
    kernel = resolve_kernel(spec, modules, release)
    result = mb.boot(
        kernel,
        out_dir,
        run_arguments(args),
        profile=args.profile,
        method=args.method,
        accel=args.accel,
        cpus=args.cpus,
        memory=args.memory,
        timeout=args.boot_timeout,
        console=sys.stderr if args.console else None,
    )
    return outcome_from_dir(result.to_json(), out_dir)


def run_host(args, out_dir: Path) -> ms.KernelOutcome:
    """The host kernel's row: `kvmtest run` on this machine, no boot."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    release = platform.release()
    profile = args.profile or default_profile(release)
    command = [sys.executable, "-m", "kvmtest", "run", "--format", "ktap"]
    command += ["--junit-xml", str(out_dir / "junit.xml"), "--json-file", str(out_dir / "run.json")]
    command += ["--profile", profile, "--require-kvm"]
    command += run_arguments(args)
    mb.say(f"running on the host kernel {release} (profile {profile})")
    start = time.monotonic()
    (out_dir / "run.json").unlink(missing_ok=True)
    with open(out_dir / "ktap.txt", "w") as ktap, open(out_dir / "stderr.txt", "w") as err:
        code = subprocess.run(command, stdout=ktap, stderr=err, cwd=mb.project_root()).returncode
    (out_dir / "exit-code").write_text(f"{code}\n")
    elapsed = round(time.monotonic() - start, 1)
    data = {
        "kernel": "host",
        "release": release,
        "profile": profile,
        "method": "host",
        "exit_code": code,
        "suite_seconds": elapsed,
        "total_seconds": elapsed,
    }
    return outcome_from_dir(data, out_dir)


def outcome_from_dir(data: dict, out_dir: Path) -> ms.KernelOutcome:
    """A summary row from a boot's result data and kvmtest's JSON report in its directory.

    Without a report (the guest died before the end of the run) the streamed KTAP says which
    traces finished, and the banner on stderr which vendor module ran them.
    """
    outcome = ms.KernelOutcome.from_json(data)
    report = _read_json(out_dir / "run.json")
    if report is not None:
        from kvmtest.report.markdown import markdown_from_report

        outcome.traces = ms.traces_from_report(report)
        outcome.backend = ms.backend_from_report(report)
        (out_dir / "summary.md").write_text(markdown_from_report(report) + "\n")
    else:
        outcome.traces = ms.parse_ktap(_read(out_dir / "ktap.txt"))
        outcome.backend = ms.backend_from_banner(_read(out_dir / "stderr.txt"))
        if outcome.traces:
            outcome.notes.append("no run.json: statuses from the KTAP the guest streamed")
    if outcome.exit_code == mb.EXIT_NO_RESULT:
        outcome.exit_code = None  # nothing came back: shown as "-", counted as a failure
    return outcome


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "kvmtest-report" else None


def matrix_document(outcomes) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kernels": [o.to_json() for o in outcomes]}


def read_matrix(data) -> list:
    """The rows of a matrix.json: {"schema_version": 1, "kernels": [...]}, or an older bare
    list of rows."""
    rows = data.get("kernels", []) if isinstance(data, dict) else data
    return [ms.KernelOutcome.from_json(row) for row in rows]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _exit_code(outcome: ms.KernelOutcome) -> int:
    return EXIT_FAIL if outcome.exit_code is None else outcome.exit_code


def cmd_boot(args) -> int:
    out_dir = Path(args.out)
    outcome = boot_one(args, args.kernel, out_dir, args.modules, args.release)
    row = {"schema_version": SCHEMA_VERSION, **outcome.to_json()}
    (out_dir.resolve() / "result.json").write_text(json.dumps(row, indent=2) + "\n")
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(ms.render_summary([outcome]))
        print(f"\nKTAP: {out_dir / 'ktap.txt'}\nJUnit XML: {out_dir / 'junit.xml'}")
        print(f"JSON: {out_dir / 'run.json'}")
    return _exit_code(outcome)


def cmd_run(args) -> int:
    kernels = args.kernels or DEFAULT_MATRIX
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for spec in kernels:
        out_dir = root / re.sub(r"[^\w.+-]", "_", spec)
        try:
            if spec == "host":
                outcome = run_host(args, out_dir)
            else:
                outcome = boot_one(args, spec, out_dir)
        except (mb.BootError, subprocess.CalledProcessError) as exc:
            mb.say(f"{spec}: {exc}")
            outcome = ms.KernelOutcome(spec, "", args.profile or "?", notes=[str(exc)])
        outcomes.append(outcome)
        (root / "matrix.json").write_text(json.dumps(matrix_document(outcomes), indent=2) + "\n")
    text = ms.render_summary(outcomes, all_traces=args.all_traces)
    (root / "summary.txt").write_text(text + "\n")
    if args.json:
        print(json.dumps(matrix_document(outcomes), indent=2))
    else:
        print(text)
        print(f"\nResults: {root}/<kernel>/ktap.txt, junit.xml; summary: {root}/summary.txt")
    return 0 if all(_exit_code(o) == 0 for o in outcomes) else EXIT_FAIL


def cmd_summary(args) -> int:
    path = Path(args.out) / "matrix.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"kvmtest matrix summary: {path}: {exc}", file=sys.stderr)
        return 2
    print(ms.render_summary(read_matrix(data), args.all_traces))
    return 0


def main(args) -> int:
    """Entry point for `kvmtest matrix` (args from the parser add_parser built)."""
    action = getattr(args, "matrix_command", None)
    if action is None:
        print("kvmtest matrix: choose an action: boot, run or summary", file=sys.stderr)
        return 2
    try:
        if action == "boot":
            return cmd_boot(args)
        if action == "run":
            return cmd_run(args)
        return cmd_summary(args)
    except mb.BootError as exc:
        print(f"kvmtest matrix: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("kvmtest matrix: interrupted", file=sys.stderr)
        return 130


def standalone(argv=None) -> int:
    """`python -m kvmtest.matrix ...` until the subcommand is wired into kvmtest's CLI."""
    parser = argparse.ArgumentParser(prog="kvmtest")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "matrix":
        argv.insert(0, "matrix")
    argv, after = split_after_dashes(argv)
    args = parser.parse_args(argv)
    args.after_dashes = after
    return main(args)


if __name__ == "__main__":
    sys.exit(standalone())
