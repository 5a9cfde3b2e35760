"""`kvmtest fuzz` and `kvmtest diff-profiles`: the command-line side of kvmtest.fuzz."""

import sys

from kvmtest import suite as runner
from kvmtest.cli.errors import EXIT_FAIL, EXIT_PASS
from kvmtest.cli.profiles import add_profile_options, resolve_profile


def add_parsers(commands, positive) -> None:
    fuzz = commands.add_parser(
        "fuzz",
        help="random traces on KVM and the model; divergences shrunk to minimal traces",
        description="Generate random INIT/SIPI traces, run each on this host's KVM and on the "
        "model (or, with --backend reference, check the model against its own invariants), "
        "confirm every divergence by re-running it, shrink it to a minimal trace and write it "
        "to DIR as YAML with its text report. Reproducible from --seed. A divergence already "
        "judged on this kind of host (kvmtest/fuzz/known.py, docs/fuzzing.md) is counted apart, "
        "not shrunk again. Exit 0 when no other divergence was found, 1 otherwise.",
    )
    fuzz.add_argument("--seed", type=int, default=0, help="the run's seed (0)")
    limit = fuzz.add_mutually_exclusive_group()
    limit.add_argument("--budget", type=positive, metavar="N", help="traces to run (1000)")
    limit.add_argument("--time", type=float, metavar="SECONDS", help="run for this long")
    add_profile_options(fuzz)
    fuzz.add_argument("--backend", choices=("kvm", "reference"), default="kvm")
    fuzz.add_argument("-o", dest="outdir", metavar="DIR", help="write shrunk traces here")
    fuzz.add_argument("--jobs", "-j", type=positive, default=32, metavar="N", help="at once (32)")
    fuzz.add_argument("--no-coverage", action="store_true", help="skip the model coverage runs")
    fuzz.add_argument(
        "--shrink",
        metavar="FILE",
        help="no search: run this trace (a fuzzer's unshrunk file, or any trace), and if it "
        "diverges confirm and shrink it as the search does; the list of every divergence a "
        "search found is DIR/divergences.tsv",
    )

    diff = commands.add_parser(
        "diff-profiles",
        help="the shortest traces on which two model profiles disagree",
        description="Breadth-first search over small traces for the shortest ones on which "
        "profiles A and B predict differently (no KVM needed): a kernel fingerprint.",
    )
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--max-steps", type=positive, default=3, help="longest trace searched (3)")
    diff.add_argument("--examples", type=positive, default=6, help="differences shown (6)")
    diff.add_argument("--markdown", action="store_true", help="print markdown")


def main(args) -> int:
    profile = resolve_profile(args)
    backend = runner.choose_backend(args.backend, args.backend == "kvm")
    if args.shrink:
        return _shrink(args.shrink, profile, backend, args.outdir)
    from kvmtest.fuzz.run import fuzz, render

    last = [0.0]

    def progress(done, report):
        import time

        now = time.monotonic()
        if now - last[0] > 5:
            last[0] = now
            print(f"kvmtest fuzz: {done} traces, {report.statuses}", file=sys.stderr)

    print(f"kvmtest fuzz: {backend.banner}; profile {profile.label}", file=sys.stderr)
    report = fuzz(
        args.seed,
        profile,
        backend.context,
        budget=args.budget,
        time_limit=args.time,
        jobs=args.jobs,
        outdir=args.outdir,
        coverage=not args.no_coverage,
        progress=progress,
    )
    print(render(report))
    return EXIT_FAIL if report.findings or report.repeated else EXIT_PASS


def _shrink(path, profile, backend, outdir) -> int:
    from kvmtest.fuzz.run import FuzzReport, render, shrink_file
    from kvmtest.trace import TraceError, load_trace

    try:
        trace = load_trace(path)
    except (TraceError, OSError) as exc:
        raise runner.UsageError(str(exc)) from None
    print(f"kvmtest fuzz: {backend.banner}; profile {profile.label}", file=sys.stderr)
    finding = shrink_file(trace, profile, backend.context, outdir)
    if finding is None:
        print(f"{trace.name}: passes here, nothing to shrink")
        return EXIT_PASS
    report = FuzzReport(0, profile.label, backend.context.backend, traces=1, findings=[finding])
    print(render(report).split("\n", 4)[-1])
    return EXIT_FAIL


def diff_profiles(args) -> int:
    import reference
    from kvmtest.fuzz.diff import diff_profiles as search
    from kvmtest.fuzz.diff import render

    try:
        a, b = reference.get_profile(args.a), reference.get_profile(args.b)
    except reference.ModelError as exc:
        raise runner.UsageError(str(exc)) from None
    found = search(a, b, max_steps=args.max_steps, examples=args.examples)
    print(render(a, b, found, markdown=args.markdown))
    return EXIT_PASS
