"""The `run` and `list` subcommands: glue between the runner and the reporters."""

import os
import sys
import time

from kvmtest import report
from kvmtest import suite as runner
from kvmtest.cli.profiles import resolve_profile

EXIT_USAGE = 2


def _profile(args, backend):
    """--profile / --set, or the profile covering the kernel under test."""
    return resolve_profile(args, backend.host.get("kernel", ""))


def run(args) -> int:
    if args.jitter < 0:
        raise runner.UsageError("--jitter must not be negative")
    backend = runner.choose_backend(args.backend, args.require_kvm)
    backend.context.jitter = args.jitter / 1e6
    backend.context.seed = args.seed
    profile = _profile(args, backend)
    traces, load_errors = runner.load_traces(args.paths)
    for error in load_errors:
        print(f"kvmtest run: {error}", file=sys.stderr)
    chosen = runner.select(traces, args.patterns, args.tags, args.rules)
    if not chosen and not load_errors:
        raise runner.UsageError("no trace matches the selection")
    label = profile.label
    print(f"kvmtest: {backend.banner}; profile {label}", file=sys.stderr)
    start = time.perf_counter()
    with report.Progress(len(chosen) * args.repeat) as progress:
        results = runner.run_all(
            chosen,
            profile,
            backend.context,
            repeat=args.repeat,
            jobs=args.jobs,
            timeout=args.timeout,
            progress=progress,
            timeline=args.verbose,
        )
    results += [runner.load_error_result(e, label, backend.context.backend) for e in load_errors]
    summary = runner.summarize(
        results, backend.host, label, backend.context.backend, time.perf_counter() - start
    )
    summary.bad_input = bool(load_errors)  # the reports' exit_code is the process's
    if args.format == "ktap":
        print(report.render_ktap(summary, nested="KSFT_TAP_LEVEL" in os.environ))
    elif args.format == "json":
        print(report.render_json(summary))
    else:
        print(report.render_text(summary, verbose=args.verbose))
    if args.junit_xml:
        report.write_junit(summary, args.junit_xml)
    if backend.context.kvm is not None:
        backend.context.kvm.close()
    return summary.exit_code


def list_traces(args) -> int:
    traces, load_errors = runner.load_traces(args.paths)
    for error in load_errors:
        print(f"kvmtest list: {error}", file=sys.stderr)
    chosen = runner.select(traces, args.patterns, args.tags, args.rules)
    width = max((len(t.name) for t in chosen), default=4)
    tag_width = max((len(",".join(t.tags)) for t in chosen), default=4)
    print(f"{'name':<{width}}  {'vcpus':>5}  {'tags':<{tag_width}}  rules")
    for trace in chosen:
        tags, rules = ",".join(trace.tags), runner.trace_rules(trace)
        print(f"{trace.name:<{width}}  {trace.setup.vcpus:>5}  {tags:<{tag_width}}  {rules}")
    print(f"{len(chosen)} traces", file=sys.stderr)
    return EXIT_USAGE if load_errors else 0
