"""`kvmtest fuzz`: random traces judged by the model on real KVM (or the model against itself),
each divergence confirmed, shrunk and written as a ready regression trace.

The search runs on kvmtest.pool (forked processes, threads in each): every child generates its
own traces from (seed, index), so nothing but a few numbers crosses a pipe per trace. A
divergence (FAIL or ERROR) comes back by index; the parent regenerates that trace, re-runs it
CONFIRM times and shrinks it only if it fails every time with the same signature (the field
or error of its first mismatch); otherwise it is reported as flaky, with the trace, never
dropped. Coverage is the model's: one trace in COVERAGE_EVERY is replayed on the model under
the profile and under one profile switch flipped (the switches in turn), which says which
switches the traces could see, and which mp_state transitions they went through.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import reference
from kvmtest import pool
from kvmtest.exec.kvm import REPORT_TIMEOUT
from kvmtest.suite import run_one
from kvmtest.trace.dump import dump_trace
from kvmtest.trace.engine import run_trace
from kvmtest.trace.result import RunSummary, Status

from . import known
from .gen import random_trace
from .predict import predict
from .shrink import shrink, size

# Seconds a trace may take: a hung trace is an ERROR, not the end of the search. A step whose
# vCPU thread runs guest code that never reports costs the settle bound (2 s), a block's step
# as much, so a trace gets that per step, twice over for a loaded host, and at least a minute:
# a flat 60 s timed out an honest 22-step trace under load (seed 13, trace 12219; 34.6 s
# alone), a flat 20 s one of about 20 steps before (seed 7, trace 1139).
TRACE_TIMEOUT = 60.0
STEP_TIMEOUT = 2 * REPORT_TIMEOUT


def trace_timeout(trace) -> float:
    return max(TRACE_TIMEOUT, STEP_TIMEOUT * (size(trace) + 2))


CONFIRM = 3  # runs a divergence must fail, every time, to count as reproducible
COVERAGE_EVERY = 4
SHRINK_BUDGET = 120  # candidates tried per divergence (each run CONFIRM times)
SHRINK_SECONDS = 40.0  # and at most this long per divergence
MAX_SHRUNK = 4  # distinct divergences shrunk per run; the rest are counted


def trace_seed(seed: int, index: int) -> int:
    return (seed << 32) + index


def flips(profile: reference.Profile) -> list[tuple[str, object]]:
    """One other value per switch (what coverage asks: would this switch change a prediction?)."""
    out = []
    for name, sw in reference.SWITCHES.items():
        current = getattr(profile, name)
        values = {getattr(p, name) for p in reference.PROFILES.values()} - {current}
        if sw.kind == "bool":
            values = {not current}
        elif sw.kind == "enum":
            values = set(sw.choices) - {current}
        if values:
            out.append((name, sorted(values, key=repr)[0]))
    return out


def signature(result, trace=None) -> str:
    """What tells divergences apart: the field of the first mismatch and the kind of operation
    it was seen at, or the error message."""
    if result.status is Status.FAIL:
        m = result.mismatches[0]
        at = ""
        if trace is not None and m.step < len(trace.steps):
            at = f" at {trace.steps[m.step].kind}"
        return f"mismatch {m.field}{at}"
    return f"{result.status.name.lower()} {result.message.split(': ', 3)[-1][:80]}"


@dataclass
class Finding:
    seed: int
    signature: str
    verdict: str  # "reproducible", "flaky"
    trace: object
    shrunk: object = None
    tried: int = 0
    runs: list = field(default_factory=list)  # statuses of the confirmation runs
    seen: str = ""  # the first difference as the search's own run saw it
    result: object = None
    files: tuple = ()


@dataclass
class FuzzReport:
    seed: int
    profile: str
    backend: str
    traces: int = 0
    elapsed: float = 0.0
    statuses: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)
    repeated: dict = field(default_factory=dict)  # signature -> divergences not shrunk again
    known: dict = field(default_factory=dict)  # known.KNOWN key -> traces counted under it
    first_seen: dict = field(default_factory=dict)  # signature not shrunk -> (seed, file or None)
    switches_seen: set = field(default_factory=set)
    switches_sampled: set = field(default_factory=set)
    transitions: set = field(default_factory=set)
    kinds: dict = field(default_factory=dict)
    unrelated: int = 0  # divergences `relevant` turned down

    @property
    def rate(self) -> float:
        return self.traces / self.elapsed if self.elapsed else 0.0


class _Task:
    """What a child does with one index: generate, run, and sometimes measure coverage."""

    def __init__(self, seed, profile, context, flipped):
        self.seed, self.profile, self.context, self.flipped = seed, profile, context, flipped

    def __call__(self, index: int):
        trace = random_trace(trace_seed(self.seed, index), profile=self.profile)
        result = run_one(trace, self.profile, self.context, timeout=trace_timeout(trace))
        status = result.status
        if self.context.backend == "reference":  # nothing pinned: the model against itself
            broken = _model_invariants(trace, self.profile, self.context)
            status = broken or (Status.ERROR if status is Status.ERROR else Status.PASS)
        coverage = None
        if index % COVERAGE_EVERY == 0 and self.flipped:
            coverage = self._coverage(trace, index)
        kinds = tuple(sorted({s.kind for s in trace.steps}))
        sig = signature(result, trace) if status in (Status.FAIL, Status.ERROR) else None
        if status is Status.FAIL and self.context.backend == "kvm":
            key = known.classify(trace, result, self.profile, self.context)
            if key is not None:
                sig = f"known {key}"
        if not isinstance(status, Status):  # a broken invariant (reference backend)
            sig, status = status, Status.FAIL
        seen = _first_difference(result) if sig is not None else None
        return status.name, sig, coverage, kinds, seen

    def _coverage(self, trace, index):
        host = self.context
        name, value = self.flipped[(index // COVERAGE_EVERY) % len(self.flipped)]
        facts = (host.flavour, host.cpuid_1_eax, host.smm)
        base, transitions = predict(trace, self.profile, *facts)
        other, _ = predict(trace, replace(self.profile, **{name: value}), *facts)
        return name, base != other, transitions


def _first_difference(result) -> str:
    """The first mismatch (or the message) as this run saw it: a flaky divergence's re-runs
    may all pass, and this line is then all there is to look at."""
    if result.status is Status.FAIL and result.mismatches:
        m = result.mismatches[0]
        vcpu = "vm-wide" if m.vcpu is None else f"vcpu {m.vcpu}"
        return (
            f"step {m.step + 1} {vcpu} {m.field}: expected (model) {m.expected!r}, "
            f"observed (KVM) {m.observed!r}"
        )[:400]
    return (result.message or result.status.name)[:400]


def _model_invariants(trace, profile, host):
    """The model against itself (the reference backend): a signature string if broken."""
    from kvmtest.trace.load import parse_trace

    text = dump_trace(trace)
    if parse_trace(text, "<fuzz>") != trace:
        return "invariant dump/load round trip"
    outputs, _ = predict(trace, profile, host.flavour, host.cpuid_1_eax, host.smm)
    if outputs and outputs[-1][0][0] == "refused":
        message = outputs[-1][0][1]
        if "busy with" not in message:  # the documented refusal: a command on a busy vCPU
            return f"invariant model refused a valid trace: {message[:60]}"
    again, _ = predict(trace, profile, host.flavour, host.cpuid_1_eax, host.smm)
    if again != outputs:
        return "invariant replay is not deterministic"
    return None


def confirm(trace, profile, context, sig, runs=CONFIRM):
    """(every run failed with `sig`, statuses, the last result)."""
    statuses, last = [], None
    for _ in range(runs):
        last = run_one(trace, profile, context, timeout=trace_timeout(trace))
        ok = last.status in (Status.FAIL, Status.ERROR) and signature(last, trace) == sig
        if context.backend == "reference":
            ok = (last.status is Status.ERROR and signature(last) == sig) or (
                _model_invariants(trace, profile, context) == sig
            )
        statuses.append("fails" if ok else last.status.name.lower())
    return all(s == "fails" for s in statuses), statuses, last


def fuzz(
    seed: int,
    profile,
    context,
    *,
    budget: int | None = None,
    time_limit: float | None = None,
    jobs: int = 16,
    processes: int | None = None,
    outdir: str | None = None,
    coverage: bool = True,
    progress=None,
    relevant=None,
    max_shrunk: int = MAX_SHRUNK,
) -> FuzzReport:
    """Run the search; `relevant(trace)`, if given, must hold for a divergence to be shrunk
    (and for every shrink step): e.g. "the flipped switch changes the model's prediction"."""
    profile = reference.get_profile(profile)
    report = FuzzReport(seed, profile.label, context.backend)
    if budget is None and time_limit is None:
        budget = 1000
    flipped = flips(profile) if coverage else []
    task = _Task(seed, profile, context, flipped)
    processes = pool.default_processes(jobs) if processes is None else processes
    threads = -(-jobs // max(1, processes))
    divergent: list = []
    start = time.perf_counter()
    submitted = done = 0

    def more() -> bool:
        if budget is not None and submitted >= budget:
            return False
        return time_limit is None or time.perf_counter() - start < time_limit

    with pool.Pool(task, processes, threads) as workers:
        while more() and submitted < 2 * jobs:
            workers.submit(submitted, submitted)
            submitted += 1
        while done < submitted:
            index, value = workers.get()
            done += 1
            if isinstance(value, pool.PoolError):
                value = ("ERROR", f"crash {value}", None, (), str(value))
            status, sig, cov, kinds, seen = value
            report.statuses[status] = report.statuses.get(status, 0) + 1
            for kind in kinds:
                report.kinds[kind] = report.kinds.get(kind, 0) + 1
            if sig is not None and sig.startswith("known "):
                key = sig.split(" ", 1)[1]
                report.known[key] = report.known.get(key, 0) + 1
            elif sig is not None:
                divergent.append((index, sig, seen))
            if cov is not None:
                name, changed, transitions = cov
                report.switches_sampled.add(name)
                if changed:
                    report.switches_seen.add(name)
                report.transitions |= transitions
            if progress is not None:
                progress(done, report)
            if more():
                workers.submit(submitted, submitted)
                submitted += 1
    report.traces = done
    report.elapsed = time.perf_counter() - start
    if outdir:
        _write_divergences(seed, divergent, outdir)
    shrunk_signatures: set = set()
    for index, sig, seen in divergent:
        if sig in shrunk_signatures or len(report.findings) >= max_shrunk:
            report.repeated[sig] = report.repeated.get(sig, 0) + 1
            kept = _keep_unshrunk(seed, index, profile, outdir)
            if sig not in report.first_seen and sig not in shrunk_signatures:
                report.first_seen[sig] = kept
            continue
        if relevant is not None and not relevant(
            random_trace(trace_seed(seed, index), profile=profile)
        ):
            report.unrelated += 1
            continue
        shrunk_signatures.add(sig)
        finding = _investigate(seed, index, sig, profile, context, outdir, relevant, seen)
        report.findings.append(finding)
    return report


DIVERGENCES = "divergences.tsv"


def _write_divergences(seed, divergent, outdir) -> None:
    """Every divergence of the search, one line each (trace seed, signature, what the run saw):
    the report shrinks only the first of each signature, and this list is what is left to
    judge (`kvmtest fuzz --shrink DIR/fuzz-S-unshrunk.yaml` shrinks any of them)."""
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, DIVERGENCES), "w") as out:
        out.write("trace_seed\tsignature\tfirst_difference\n")
        for index, sig, seen in divergent:
            clean = (seen or "").replace("\t", " ").replace("\n", " ")
            out.write(f"{trace_seed(seed, index)}\t{sig}\t{clean}\n")


def _keep_unshrunk(seed, index, profile, outdir) -> tuple:
    """(trace seed, file): a divergence not shrunk still leaves its whole trace to look at."""
    path = None
    if outdir:
        trace = random_trace(trace_seed(seed, index), profile=profile)
        os.makedirs(outdir, exist_ok=True)
        path = os.path.join(outdir, f"{trace.name}-unshrunk.yaml")
        with open(path, "w") as out:
            out.write(dump_trace(trace))
    return trace_seed(seed, index), path


def shrink_file(trace, profile, context, outdir=None) -> Finding | None:
    """`kvmtest fuzz --shrink FILE`: a trace that diverges (a fuzzer's unshrunk file, or any
    trace) confirmed and shrunk as the search does it; None if it passes."""
    result = run_one(trace, profile, context, timeout=trace_timeout(trace))
    if result.status not in (Status.FAIL, Status.ERROR):
        return None
    sig = signature(result, trace)
    name = trace.name if trace.name.startswith("fuzz-") else f"fuzz-{trace.name}"
    description = f"{trace.name} ({trace.path or 'a trace'}), shrunk; {sig}"
    seen = _first_difference(result)
    return _examine(None, trace, name, description, sig, profile, context, outdir, seen=seen)


def _investigate(seed, index, sig, profile, context, outdir, relevant=None, seen="") -> Finding:
    trace = random_trace(trace_seed(seed, index), profile=profile)
    description = f"kvmtest fuzz --seed {seed}: trace {index}, shrunk; {sig}"
    name = f"fuzz-{seed}-{index}"
    return _examine(
        trace_seed(seed, index),
        trace,
        name,
        description,
        sig,
        profile,
        context,
        outdir,
        relevant,
        seen,
    )


def _examine(
    seed, trace, name, description, sig, profile, context, outdir, relevant=None, seen=""
) -> Finding:
    """Confirm a divergence (CONFIRM runs, same signature), shrink it if it reproduces, and
    write what was found to `outdir`."""
    seen = seen or ""
    if sig.startswith("crash"):  # re-running it here could take the fuzzer down with it
        finding = Finding(seed, sig, "crashed", trace, seen=seen)
        if outdir:
            os.makedirs(outdir, exist_ok=True)
            path = os.path.join(outdir, f"{trace.name}-crashed.yaml")
            with open(path, "w") as out:
                out.write(dump_trace(trace))
            finding.files = (path,)
        return finding
    reproducible, runs, last = confirm(trace, profile, context, sig)
    finding = Finding(seed, sig, "flaky", trace, runs=runs, result=last, seen=seen)
    if reproducible:
        finding.verdict = "reproducible"

        def fails(candidate) -> bool:
            if relevant is not None and not relevant(candidate):
                return False
            ok, _, last = confirm(candidate, profile, context, sig)
            # never shrink a new divergence into a judged one
            return ok and known.classify(candidate, last, profile, context) is None

        finding.shrunk, finding.tried = shrink(
            trace, fails, budget=SHRINK_BUDGET, seconds=SHRINK_SECONDS
        )
        finding.shrunk = replace(finding.shrunk, name=name, description=description)
        finding.result = run_trace(finding.shrunk, profile, context)
    if outdir:
        finding.files = write_finding(finding, profile, context, outdir)
    return finding


def write_finding(finding: Finding, profile, context, outdir) -> tuple:
    from kvmtest import report as reports

    os.makedirs(outdir, exist_ok=True)
    trace = finding.shrunk or finding.trace
    stem = os.path.join(outdir, f"{trace.name}{'' if finding.shrunk else '-flaky'}")
    with open(stem + ".yaml", "w") as out:
        out.write(dump_trace(trace))
    result = finding.result or run_trace(trace, profile, context)
    summary = RunSummary(
        results=[result], host={}, profile=profile.label, backend=context.backend, elapsed=0.0
    )
    with open(stem + ".txt", "w") as out:
        out.write(f"{finding.verdict}: {finding.signature}; confirmation runs: {finding.runs}\n")
        if finding.seen:
            out.write(f"the search's own run saw: {finding.seen}\n")
        out.write(reports.render_text(summary, verbose=True) + "\n")
    return (stem + ".yaml", stem + ".txt")


def render(report: FuzzReport) -> str:
    lines = [
        f"kvmtest fuzz --seed {report.seed}: {report.traces} traces in {report.elapsed:.1f} s "
        f"({report.rate:.0f} traces/s), backend {report.backend}, profile {report.profile}",
        "statuses: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(report.statuses.items())),
        "steps generated: " + ", ".join(f"{k} {v}" for k, v in sorted(report.kinds.items())),
        f"coverage (model): {len(report.transitions)} mp_state transitions; "
        f"{len(report.switches_seen)} of {len(report.switches_sampled)} sampled switches would "
        "have changed a prediction"
        + (f": {', '.join(sorted(report.switches_seen))}" if report.switches_seen else ""),
    ]
    unseen = sorted(report.switches_sampled - report.switches_seen)
    if unseen:
        lines.append(f"  switches no sampled trace could see: {', '.join(unseen)}")
    for finding in report.findings:
        what = finding.shrunk or finding.trace
        lines.append(
            f"{finding.verdict.upper()} divergence ({finding.signature}), "
            + (f"seed {finding.seed}: " if finding.seed is not None else f"{finding.trace.name}: ")
            + f"{size(finding.trace)} steps"
            + (
                f" -> {size(finding.shrunk)} after {finding.tried} candidates"
                if finding.shrunk
                else ""
            )
            + (f"; runs {finding.runs}" if finding.verdict == "flaky" else "")
            + (f"; written to {finding.files[0]}" if finding.files else "")
        )
        if finding.verdict == "flaky" and finding.seen:
            lines.append(f"  the search's own run saw: {finding.seen}")
        if not finding.files:
            lines.append("  " + dump_trace(what).replace("\n", "\n  ").rstrip())
    for sig, n in sorted(report.repeated.items()):
        first = report.first_seen.get(sig)
        where = ""
        if first is not None:
            where = f"; first: seed {first[0]}" + (f", {first[1]}" if first[1] else "")
        lines.append(f"  and {n} more divergences with signature {sig!r} (not shrunk again{where})")
    for key, n in sorted(report.known.items()):
        lines.append(
            f"known divergence {key}: {n} traces diverged first there (the rest of each was "
            f"not judged): {known.judgement(key)}"
        )
    if not report.findings:
        lines.append("no new divergence" if report.known else "no divergence")
    return "\n".join(lines)
