"""The kvmtest command line. Subcommands set their own exit codes (kselftest style)."""

import argparse
import sys

from kvmtest import __version__

# `kvmtest run`'s exit codes, kselftest style; the README's commands table says the same.
RUN_EXIT_CODES = """exit codes:
  0    every judged trace passed (at least one was judged)
  1    a mismatch or an error; also --require-kvm / --backend kvm where KVM is unusable,
       and a broken pipe (stdout's reader left before the end)
  2    bad usage, or a malformed or unreadable trace file
  4    nothing was judged: every trace skipped, including --backend auto without usable
       KVM (kselftest's skip); with --backend reference, every trace with nothing to check
  130  interrupted (Ctrl-C)
"""


def build_parser() -> argparse.ArgumentParser:
    from .profiles import add_profile_options

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

    run = commands.add_parser(
        "run",
        help="replay traces against this host's KVM and the reference model",
        description="Replay trace files (default: the built-in corpus) against real KVM and the "
        "reference model, and report every difference.",
        epilog=RUN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("paths", nargs="*", metavar="PATH", help="trace files or directories")
    run.add_argument(
        "--backend",
        choices=("auto", "kvm", "reference"),
        default="auto",
        help="kvm: real VMs; reference: the model alone, checked against the traces' pinned "
        "expectations; auto (default): kvm where usable, otherwise nothing is judged and "
        "every trace is reported as skipped (exit 4)",
    )
    run.add_argument(
        "--require-kvm",
        action="store_true",
        help="KVM must be usable: without it every trace is an error (exit 1)",
    )
    add_profile_options(run)
    _selection_options(run)
    run.add_argument(
        "--repeat", type=_positive, default=1, metavar="N", help="run each trace N times"
    )
    run.add_argument(
        "--jobs", "-j", type=_positive, default=8, metavar="N", help="traces run at once (8)"
    )
    run.add_argument(
        "--timeout",
        type=_bounded(0.001, 86400.0),
        default=60.0,
        metavar="SECONDS",
        help="per-trace timeout, 0.001 to 86400 (60)",
    )
    run.add_argument(
        "--jitter",
        type=_bounded(0.0, 1e6),
        default=200.0,
        metavar="MICROSECONDS",
        help="concurrent blocks: random delay before each step, up to this, 0 to 1e6 (200)",
    )
    run.add_argument(
        "--seed", type=int, metavar="N", help="seed for those delays (repetition r uses N + r)"
    )
    run.add_argument(
        "--format",
        choices=("text", "ktap", "json", "markdown"),
        default="text",
        help="stdout format (ktap is streamed: each result as it completes; markdown: a "
        "summary for CI job pages)",
    )
    run.add_argument("--junit-xml", metavar="FILE", help="also write JUnit XML to FILE")
    run.add_argument(
        "--json-file", metavar="FILE", help="also write the JSON report to FILE (any --format)"
    )
    run.add_argument("--verbose", "-v", action="store_true", help="more detail per trace")
    run.add_argument(
        "--findings",
        action="store_true",
        help="with --profile sdm or apm: report each deviation from the CPU manual as a "
        "finding (manual section, KVM source, impact) instead of per-trace results; exit 1 "
        "only for a deviation no finding explains, or an error (docs/findings.md)",
    )

    explore = commands.add_parser(
        "explore",
        help="enumerate every interleaving of a trace's concurrent block on the model",
        description="Enumerate every interleaving of the concurrent block of each TRACE over "
        "the model's atomic steps, print the reachable outcomes with the number of schedules "
        "reaching each, and check that no INIT is lost. Exit 1 if a property is violated "
        "(a shortest violating schedule is printed), 2 for bad input.",
    )
    explore.add_argument("traces", nargs="+", metavar="TRACE")
    add_profile_options(explore, "mainline")
    explore.add_argument(
        "--flavour", choices=("vmx", "svm", "pvm"), help="register flavour (default: this host's)"
    )
    explore.add_argument(
        "--svg",
        metavar="FILE",
        help="also draw the outcomes and a shortest schedule to each as SVG (one TRACE only)",
    )

    model = commands.add_parser(
        "model",
        help="show the reference model: transition table, profile switches, or state graph",
        description="Print what the reference model does, generated from the model itself: "
        "the transition table of a profile (markdown), the switches of every profile, or the "
        "mp_state graph as Graphviz dot (pipe it to `dot -Tsvg`).",
    )
    add_profile_options(model, "mainline")
    model.add_argument(
        "--format", choices=("table", "profiles", "dot"), default="table", help="what to print"
    )

    from kvmtest.cli import fuzz as fuzz_command

    fuzz_command.add_parsers(commands, _positive)

    from kvmtest.cli import show as show_command
    from kvmtest.matrix import cli as matrix_command
    from kvmtest.mutate import cli as mutate_command
    from kvmtest.record import cli as record_command

    show_command.add_parser(commands)
    record_command.add_parser(commands)
    mutate_command.add_parser(commands)

    matrix_command.add_parser(commands)

    listing = commands.add_parser(
        "list",
        help="list the traces (name, tags, rules covered)",
        description="List trace files (default: the built-in corpus) with their tags and the "
        "rule numbers of docs/semantics.md that each one checks.",
    )
    listing.add_argument("paths", nargs="*", metavar="PATH")
    _selection_options(listing)
    return parser


def _selection_options(parser) -> None:
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only traces whose name contains PATTERN or matches it as a glob (repeatable)",
    )
    parser.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TAG",
        help="only traces carrying TAG (repeatable: all must match)",
    )
    parser.add_argument(
        "--rule",
        dest="rules",
        action="append",
        default=[],
        metavar="N",
        help="only traces that pin rule N of docs/semantics.md (22, d7.3; repeatable: any)",
    )


def _model(args) -> int:
    from reference import describe

    from .profiles import resolve_profile

    profile = resolve_profile(args)
    if args.format == "dot":
        print(describe.state_graph_dot(profile), end="")
    elif args.format == "profiles":
        print(describe.profile_table(), end="")
    else:
        print(describe.transition_table(profile), end="")
    return 0


def _bounded(low: float, high: float):
    """An argparse type: a finite number in [low, high] (inf, nan and 1e300 are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # also false for nan
            raise argparse.ArgumentTypeError(f"{text!r} is not between {low:g} and {high:g}")
        return value

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["record"]:  # the VMM starts before the rest of kvmtest is imported
        from kvmtest.record.cli import record_main

        try:
            return record_main(argv)
        except KeyboardInterrupt:
            from .errors import EXIT_INTERRUPTED

            print("kvmtest: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    from .errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

    parser = build_parser()
    after = []
    if argv[:1] == ["matrix"]:  # `kvmtest matrix boot K -- RUN-ARGS`
        from kvmtest.matrix.cli import split_after_dashes

        argv, after = split_after_dashes(argv)
    args = parser.parse_args(argv)
    if after:
        args.after_dashes = after
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "doctor":
            from kvmtest.cli import doctor

            return doctor.main(args)
        if args.command == "matrix":
            from kvmtest.matrix import cli as matrix

            return matrix.main(args)
        if args.command in ("record", "check", "replay"):
            from kvmtest.record import cli as record

            return record.main(args)
        if args.command == "mutate":
            from kvmtest.mutate import cli as mutate

            return mutate.main(args)
        if args.command == "model":
            return _model(args)
        if args.command == "show":
            from kvmtest.cli import show

            return show.main(args)
        if args.command == "explore":
            from kvmtest.cli import explore

            return explore.main(args)
        if args.command in ("fuzz", "diff-profiles"):
            from kvmtest.cli import fuzz

            return fuzz.main(args) if args.command == "fuzz" else fuzz.diff_profiles(args)
        from kvmtest.cli import run as run_commands

        if args.command == "run":
            return run_commands.run(args)
        if args.command == "list":
            return run_commands.list_traces(args)
    except UsageError as exc:  # every command's bad usage or input: one line, EXIT_USAGE
        print(f"kvmtest {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kvmtest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kvmtest ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE
