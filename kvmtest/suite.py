"""`kvmtest run`: choose the backend and profile, load and select traces, run them (concurrently
with --jobs), and hand a RunSummary to the reporters.

A VM's set-up is mostly waiting inside the kernel (docs/host-findings.md#cost: the first
memory slot costs milliseconds of wall time and almost no CPU), and cffi releases the GIL, so
traces run on threads. Every trace runs on its own daemon thread with a deadline: a hung trace
is reported as an error and the run goes on.
"""

import datetime
import fnmatch
import os
import queue
import threading
import time
from dataclasses import dataclass
from importlib import resources

from kvmtest import ops as f
from kvmtest import pool
from kvmtest.trace.engine import HostContext, run_trace
from kvmtest.trace.errors import TraceError
from kvmtest.trace.load import find_trace_files, load_trace
from kvmtest.trace.result import RunSummary, Status, TraceResult


class UsageError(Exception):
    """Bad options or unreadable input: exit code 2."""


def corpus_dir() -> str:
    return str(resources.files("kvmtest") / "corpus")


def load_traces(paths) -> tuple[list, list]:
    """(traces, errors): each malformed or unreadable path becomes a TraceError (an ERROR
    result), never a traceback, and never stops the other files from loading."""
    files, errors = find_trace_files(paths or [corpus_dir()])
    traces = []
    for path in files:
        try:
            traces.append(load_trace(path))
        except TraceError as exc:
            errors.append(exc)
        except Exception as exc:  # a loader bug: report it against the file, keep going
            errors.append(
                TraceError(path, 1, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")
            )
    return traces, errors


def select(traces, patterns=(), tags=(), rules=()) -> list:
    """-k PATTERN (substring or glob on the name), --tag TAG (all must match) and --rule N
    (the trace pins one of them: its `rules:` names it)."""
    chosen = []
    for trace in traces:
        if rules and not {str(r) for r in rules} & {str(r) for r in trace.rules}:
            continue
        if patterns and not any(
            p in trace.name or fnmatch.fnmatch(trace.name, p) for p in patterns
        ):
            continue
        if tags and not set(tags) <= set(trace.tags):
            continue
        chosen.append(trace)
    return chosen


@dataclass
class Backend:
    context: HostContext
    banner: str  # shown on stderr: why this backend
    host: dict  # host description for the reports
    # Set when KVM was wanted but is unusable: nothing is replayed, every trace is reported as
    # SKIP (auto fell back: kselftest's skip) or ERROR (--require-kvm / --backend kvm).
    unusable: str | None = None
    required: bool = False

    @property
    def name(self) -> str:
        """The backend the reports name: kvm, reference, or none (nothing was replayed)."""
        return "none" if self.unusable else self.context.backend

    def judged(self, profile: str) -> tuple[str, str]:
        """(what the run judges, what it does not), in words for the reports."""
        if self.unusable:
            return "nothing", f"this kernel's KVM ({self.unusable})"
        if self.context.backend == "reference":
            return (
                f"the model (profile {profile}) against the traces' pinned expectations",
                "this kernel's KVM (--backend reference)",
            )
        return f"this kernel's KVM against the model (profile {profile})", ""


def choose_backend(requested: str, require_kvm: bool) -> Backend:
    """auto: real KVM where usable; otherwise nothing is judged (every trace SKIP, exit 4), or
    with --require-kvm / --backend kvm every trace ERROR (exit 1). reference: the model alone."""
    from kvmtest import host as host_probe

    info = host_probe.probe()
    description = info.to_json()
    if requested == "reference":
        return Backend(
            HostContext("reference", flavour=info.flavour), "reference-only (as asked)", description
        )
    if not info.full_mode:
        reason = f"KVM is not usable: {info.problems[0]}"
        required = requested == "kvm" or require_kvm
        advice = f"; {info.advice[0]}" if info.advice else ""
        if required:
            flag = "--backend kvm" if requested == "kvm" else "--require-kvm"
            banner = f"FAILED: {reason}{advice} ({flag})"
        else:
            banner = f"NOT JUDGED: {reason}{advice}; every trace is reported as skipped (exit 4)"
        return Backend(
            HostContext("reference", flavour=info.flavour),
            banner,
            description,
            unusable=reason,
            required=required,
        )
    from kvmtest.kvm import Kvm

    kvm = Kvm()
    caps = info.capabilities
    context = HostContext(
        "kvm",
        flavour=info.flavour,
        smm=bool(caps.get("KVM_CAP_X86_SMM")),
        x2apic=bool(info.x2apic),
        split_irqchip=bool(caps.get("KVM_CAP_SPLIT_IRQCHIP")),
        cpuid=kvm.get_supported_cpuid(),
        kvm=kvm,
    )
    return Backend(context, f"kvm: {info.kernel}, {info.backend}", description)


def unjudged_results(traces, profile: str, backend: Backend) -> list:
    """What a run reports when KVM was wanted and is unusable: nothing was replayed."""
    status = Status.ERROR if backend.required else Status.SKIP
    if backend.required:
        message = f"{backend.unusable} (KVM required)"
    else:
        message = f"not judged: {backend.unusable}"
    return [
        TraceResult.of(trace, profile, backend.name, status=status, message=message)
        for trace in traces
    ]


def run_all(
    traces,
    profile,
    context,
    *,
    repeat=1,
    jobs=1,
    timeout=60.0,
    progress=None,
    on_result=None,
    timeline=False,
    stop=None,
    processes=None,
) -> list:
    """Run every (trace, repetition); results in corpus order.

    `progress.advance(result)` and `on_result(result)` are called as each result completes (on
    the runner threads, in completion order): the KTAP stream prints from there. With
    `timeline`, each result keeps its StepRecords (run -v, kvmtest show). Setting `stop` (a
    threading.Event: Ctrl-C, SIGTERM) starts no further trace and cancels those in flight; the
    results that completed come back, still in corpus order. The `jobs` traces run at once on
    `processes` forked processes (default: kvmtest.pool.default_processes) of jobs / processes
    threads each.
    """
    work = [(i, r, t) for i, t in enumerate(traces) for r in range(repeat)]
    if processes is None:
        processes = pool.default_processes(jobs)
    if min(processes, len(work)) > 1:
        return _run_in_processes(
            work, profile, context, jobs, timeout, progress, on_result, timeline, stop, processes
        )
    results: dict = {}
    failures: list = []
    lock = threading.Lock()
    pending: queue.Queue = queue.Queue()
    for item in work:
        pending.put(item)

    def worker():
        while stop is None or not stop.is_set():
            try:
                index, rep, trace = pending.get_nowait()
            except queue.Empty:
                return
            try:
                result = _run_with_deadline(trace, profile, context, rep, timeout, timeline, stop)
            except Exception as exc:  # out of threads or memory: this trace's ERROR, run goes on
                result = _harness_error(trace, profile, context, rep, exc)
            if result is None:
                return  # stopped in flight: not a result
            with lock:
                results[(index, rep)] = result
            try:
                if progress is not None:
                    progress.advance(result)
                if on_result is not None:
                    on_result(result)
            except BaseException as exc:  # re-raised on the caller's thread (broken pipe, say)
                with lock:
                    failures.append(exc)

    threads = [
        threading.Thread(target=worker, daemon=True, name=f"trace-runner-{n}")
        for n in range(max(1, min(jobs, len(work))))
    ]
    started = []
    for thread in threads:
        try:
            thread.start()
        except RuntimeError:  # out of threads: those that started do all the work
            break
        started.append(thread)
    if not started:
        worker()  # not even one: the caller's thread does it
    for thread in started:
        while thread.is_alive():
            thread.join(0.1)  # in slices: the main thread stays free to take a signal
    if failures:
        raise failures[0]
    if stop is None or not stop.is_set():
        for i, r, trace in work:  # a runner thread that died still leaves a result behind
            if (i, r) not in results:
                results[(i, r)] = _harness_error(
                    trace, profile, context, r, RuntimeError("its runner thread ended early")
                )
    return [results[(i, r)] for i, r, _ in work if (i, r) in results]


def _run_in_processes(
    work, profile, context, jobs, timeout, progress, on_result, timeline, stop, processes
) -> list:
    """run_all over kvmtest.pool: the same results, in corpus order; progress and on_result
    are called on the caller's thread as results arrive."""

    def one(item):
        _, rep, trace = item
        return _run_with_deadline(trace, profile, context, rep, timeout, timeline)

    processes = min(processes, len(work))
    threads = -(-jobs // processes)
    by_key = {(i, r): t for i, r, t in work}
    results: dict = {}
    with pool.Pool(one, processes, threads) as workers:
        for i, r, trace in work:
            workers.submit((i, r), (i, r, trace))
        for _ in work:
            if stop is not None and stop.is_set():
                break  # the children are stopped by the pool's close; in-flight traces end
            key, result = workers.get()
            if isinstance(result, pool.PoolError) or result is None:
                result = _harness_error(by_key[key], profile, context, key[1], result)
            results[key] = result
            if progress is not None:
                progress.advance(result)
            if on_result is not None:
                on_result(result)
    return [results[(i, r)] for i, r, _ in work if (i, r) in results]


def _harness_error(trace, profile, context, rep, exc) -> TraceResult:
    label = getattr(profile, "label", profile)
    return TraceResult.of(
        trace,
        label,
        context.backend,
        rep,
        status=Status.ERROR,
        message=f"{trace.path}: harness: {type(exc).__name__}: {exc}",
    )


def run_one(trace, profile, context, repeat=0, timeout=60.0) -> TraceResult:
    """One trace, as run_all runs each: with a deadline, never raises."""
    return _run_with_deadline(trace, profile, context, repeat, timeout)


# Seconds a timed-out trace has to tear its VM down (stop its vCPU threads, close fds).
TEARDOWN = 10.0


class _TraceThread:
    """A thread that runs one trace at a time, kept for the next one: starting a thread per
    trace cost about 0.3 ms of CPU (clone, stack, bootstrap) of a 3 ms host-driven trace. A
    thread whose trace never returns is simply never reused."""

    _idle: list = []
    _lock = threading.Lock()

    def __init__(self):
        self._work = threading.Event()
        self.done = threading.Event()
        self._job = None
        self.thread = threading.Thread(target=self._loop, daemon=True, name="trace-runner")
        self.thread.start()

    @classmethod
    def take(cls) -> "_TraceThread":
        with cls._lock:
            if cls._idle:
                return cls._idle.pop()
        return cls()  # may raise RuntimeError (no more threads): run_all makes it an ERROR

    def start(self, job) -> None:
        self.done.clear()
        self._job = job
        self._work.set()

    def _loop(self) -> None:
        while True:
            self._work.wait()
            self._work.clear()
            job, self._job = self._job, None
            try:
                job()
            finally:
                with _TraceThread._lock:  # idle before anyone sees it done
                    _TraceThread._idle.append(self)
                    self.done.set()


def _forget_trace_threads() -> None:
    """In a forked child the parent's trace threads do not exist: none is idle there."""
    _TraceThread._idle = []
    _TraceThread._lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_trace_threads)


def _run_with_deadline(
    trace, profile, context, rep, timeout, timeline=False, stop=None
) -> TraceResult | None:
    """run_trace on a trace thread; at the deadline it is cancelled and waited for while it
    tears its VM down, so a timed-out trace leaves no VM, fd or busy thread behind. When
    `stop` is set meanwhile, the trace is cancelled the same way and None is returned."""
    box = []
    cancel = threading.Event()
    runner = _TraceThread.take()
    start = time.perf_counter()
    runner.start(lambda: box.append(run_trace(trace, profile, context, rep, timeline, cancel)))
    deadline = start + timeout
    while not runner.done.is_set() and time.perf_counter() < deadline:
        if stop is not None and stop.is_set():
            cancel.set()
            runner.done.wait(TEARDOWN)
            return None
        runner.done.wait(min(0.05, max(0.0, deadline - time.perf_counter())))
    if box:
        return box[0]
    cancel.set()
    runner.done.wait(TEARDOWN)
    after = (
        "its VM was torn down"
        if runner.done.is_set()
        else (f"its VM could not be torn down within {TEARDOWN:g} s and is left to the process")
    )
    return TraceResult.of(
        trace,
        getattr(profile, "label", profile),
        context.backend,
        rep,
        status=Status.ERROR,
        message=f"timed out after {timeout:g} s; {after}",
        elapsed=time.perf_counter() - start,
        timed_out=True,
    )


def load_error_result(error: TraceError, profile: str, backend: str) -> TraceResult:
    name = os.path.splitext(os.path.basename(error.path))[0]
    return TraceResult(
        name=name,
        path=error.path,
        status=Status.ERROR,
        profile=profile,
        backend=backend,
        message=str(error),
    )


def summarize(results, host, profile, backend, elapsed, **fields) -> RunSummary:
    return RunSummary(
        results=results, host=host, profile=profile, backend=backend, elapsed=elapsed, **fields
    )


def utc_now() -> str:
    """An ISO 8601 UTC time stamp to the millisecond: 2026-12-01T15:30:19.123Z."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def path_bases(paths) -> tuple:
    """Directories trace paths are reported relative to, first match wins: the one holding the
    kvmtest package (the corpus shows as kvmtest/corpus/NAME.yaml on every host), then the
    parent of each PATH's trace root (PATH itself when a directory, else its directory), most
    specific first, so that the root's own name stays in the path, then the current
    directory."""
    roots = []
    for path in paths or ():
        absolute = os.path.abspath(path)
        root = absolute if os.path.isdir(absolute) else os.path.dirname(absolute)
        roots.append(os.path.dirname(root))
    roots.sort(key=lambda p: (-p.count(os.sep), p))
    bases = [os.path.dirname(os.path.dirname(corpus_dir())), *roots, os.getcwd()]
    return tuple(dict.fromkeys(os.path.abspath(b) for b in bases))


def trace_rules(trace: f.Trace) -> str:
    return ", ".join(trace.rules) or "-"
