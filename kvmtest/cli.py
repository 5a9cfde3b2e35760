"""The kvmtest command line. Subcommands set their own exit codes (kselftest style)."""

import argparse
import sys

from kvmtest import __version__

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmtest",
        description="Conformance tester for Linux KVM's x86 INIT and SIPI handling.",
    )
    parser.add_argument("--version", action="version", version=f"kvmtest {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    doctor = commands.add_parser(
        "doctor",
        help="describe this host's KVM and say whether full conformance mode is possible",
        description="Kernel, KVM API version, vendor backend, capabilities, x2APIC, permissions "
        "and a verdict. Exit 0 when full conformance mode is possible, 1 when only "
        "reference-only mode is.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--device", default=None, help="KVM device (default /dev/kvm)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "doctor":
            from kvmtest import doctor

            return doctor.main(args)
    except KeyboardInterrupt:
        print("kvmtest: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE
