"""The `run` and `list` subcommands: glue between the runner and the reporters."""

import os
import signal
import sys
import threading
import time

import reference
from kvmtest import report
from kvmtest import suite as runner
from kvmtest.cli.profiles import resolve_profile

EXIT_USAGE = 2


def _profile(args, backend):
    """--profile / --set, or the profile covering the kernel under test."""
    return resolve_profile(args, backend.host.get("kernel", ""))


def _check_writable(path: str | None, option: str) -> None:
    """Refuse an output file that cannot be written before the run, not after it."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise runner.UsageError(f"{option} {path}: cannot write there")


def _write_reports(summary, args) -> bool:
    """JUnit and JSON files; a write that fails anyway (disk full) is one line on stderr and
    False."""
    written = True
    for path, write in ((args.junit_xml, report.write_junit), (args.json_file, report.write_json)):
        if path:
            try:
                write(summary, path)
            except OSError as exc:
                print(f"kvmtest run: cannot write {path}: {exc.strerror}", file=sys.stderr)
                written = False
    return written


def run(args) -> int:
    _check_writable(args.junit_xml, "--junit-xml")
    _check_writable(args.json_file, "--json-file")
    started = runner.utc_now()
    stop = _StopOnSignals()  # from here on a signal ends in a report, even of 0 traces
    try:
        return _run(args, stop, started)
    finally:
        stop.restore()


def _run(args, stop, started) -> int:
    backend = runner.choose_backend(args.backend, args.require_kvm)
    backend.context.jitter = args.jitter / 1e6
    backend.context.seed = args.seed
    profile = _profile(args, backend)
    findings = getattr(args, "findings", False)
    if findings and (not reference.is_architectural(profile) or args.format == "ktap"):
        raise runner.UsageError("--findings needs --profile sdm or apm and a non-ktap --format")
    traces, load_errors = runner.load_traces(args.paths)
    for error in load_errors:
        print(f"kvmtest run: {error}", file=sys.stderr)
    chosen = runner.select(traces, args.patterns, args.tags, args.rules)
    if not chosen and not load_errors:
        raise runner.UsageError("no trace matches the selection")
    label = profile.label
    print(f"kvmtest: {backend.banner}; profile {label}", file=sys.stderr)
    judged, not_judged = backend.judged(label)
    stream = None
    if args.format == "ktap":
        stream = report.KtapStream(
            sys.stdout,
            len(chosen) + len(load_errors),
            repeats=1 if backend.unusable else args.repeat,
            nested="KSFT_TAP_LEVEL" in os.environ,
            preamble=report.ktap.preamble_lines(judged, not_judged),
        )
        stream.start()
    start = time.perf_counter()
    try:
        if backend.unusable:
            results = runner.unjudged_results(chosen, label, backend)
            for result in results:
                if stream is not None:
                    stream.add(result)
        else:
            with report.Progress(len(chosen) * args.repeat) as progress:
                results = runner.run_all(
                    chosen,
                    profile,
                    backend.context,
                    repeat=args.repeat,
                    jobs=args.jobs,
                    timeout=args.timeout,
                    progress=progress,
                    on_result=None if stream is None else stream.add,
                    timeline=args.verbose,
                    stop=stop.event,
                )
        stop.restore()
        errors = [runner.load_error_result(e, label, backend.name) for e in load_errors]
        for result in errors:
            if stream is not None:
                stream.add_group([result])
        results += errors
        summary = runner.summarize(
            results,
            backend.host,
            label,
            backend.name,
            time.perf_counter() - start,
            judged=judged,
            not_judged=not_judged,
            started=started,
            finished=runner.utc_now(),
            seed=args.seed,
            jitter=args.jitter / 1e6,
            bases=runner.path_bases(args.paths),
        )
        summary.bad_input = bool(load_errors)  # the reports' exit_code is the process's
        if stop.signal:
            planned = len(chosen) * args.repeat
            done = len(results) - len(errors)
            summary.interrupted = (
                f"interrupted by {signal.Signals(stop.signal).name} after {done} of {planned} "
                "traces"
            )
            summary.interrupt_signal = stop.signal
        if findings:
            return _report_findings(summary, chosen, profile, backend, args)
        if stream is not None:
            stream.finish(summary)
        elif args.format == "json":
            print(report.render_json(summary))
        elif args.format == "markdown":
            print(report.render_markdown(summary))
        else:
            print(report.render_text(summary, verbose=args.verbose))
        written = _write_reports(summary, args)
    finally:
        stop.restore()
        if backend.context.kvm is not None:
            backend.context.kvm.close()
    if stop.signal:
        print(f"kvmtest run: {summary.interrupted}", file=sys.stderr)
    if not written and summary.exit_code == 0:
        return 1  # the run passed but its report is missing: a CI must not read that as a pass
    return summary.exit_code


def _report_findings(summary, chosen, profile, backend, args) -> int:
    """--findings: the deviations from the manual, explained (kvmtest.trace.findings)."""
    from kvmtest.report import findings as render
    from kvmtest.trace.findings import collect

    found = collect(summary.results, chosen, profile, backend.context)
    show = {"json": render.render_json, "markdown": render.render_markdown}
    print(show.get(args.format, render.render_text)(found, summary.bases))
    written = _write_reports(summary, args)
    code = summary.exit_code if summary.bad_input or summary.interrupt_signal else found.exit_code
    return code or (0 if written else 1)


class _StopOnSignals:
    """SIGINT and SIGTERM during a run set an event instead of killing the process: no trace
    starts after it, those in flight are cancelled and torn down, and every completed result
    is still reported. A second signal of either kind exits at once (the default action)."""

    def __init__(self):
        self.event = threading.Event()
        self.signal = 0
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for signo in (signal.SIGINT, signal.SIGTERM):
                self._old[signo] = signal.signal(signo, self._handle)

    def _handle(self, signo, frame) -> None:
        if self.signal:
            self.restore()
            signal.raise_signal(signo)
            return
        self.signal = signo
        self.event.set()

    def restore(self) -> None:
        for signo, handler in self._old.items():
            signal.signal(signo, handler)
        self._old = {}


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
