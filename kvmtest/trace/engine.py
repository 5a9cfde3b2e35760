"""Replaying one trace: the simulated system predicts, KVM performs, every difference is a
Mismatch.

For each operation the sequential scheduler (kvmtest.sim.schedule) runs first and returns what
it predicts, keyed (vcpu, field); the kvm side (kvmtest.exec.kvm) then performs the operation,
settles by what it observes (never by the prediction) and returns what it saw under the same
keys. A key on either side only is a mismatch. Values the model does not know (GUEST: the guest
ran code) are not compared, and counted. With the reference backend only the model runs, and
the trace's pinned expectations (observe.expect) are what it is checked against.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import reference
from kvmtest import ops as f
from kvmtest.guest import GuestError
from kvmtest.kvm import KvmError
from kvmtest.sim.explore import ExploreError, Explorer, Outcome
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.signals import signal_of
from kvmtest.sim.system import System
from reference import GUEST

from .dump import step_mapping
from .manuals import Specify
from .result import Mismatch, Status, StepRecord, TraceResult

MISSING = "absent"
_NOTHING = object()


@dataclass
class HostContext:
    """What the engine needs to know about the host (from host.probe, or defaults without KVM)."""

    backend: str  # "kvm" or "reference"
    flavour: str = "vmx"
    smm: bool = False
    x2apic: bool = True
    split_irqchip: bool = True
    cpuid: object = None  # kvmtest.kvm.Cpuid from KVM_GET_SUPPORTED_CPUID
    kvm: object = None  # an open kvmtest.kvm.Kvm for the kvm backend
    jitter: float = 0.0002  # concurrent blocks: random delay before each step, up to (s)
    seed: int | None = None  # for the delays; None: a fresh seed every run

    @property
    def cpuid_1_eax(self):
        if self.cpuid is None:
            return None
        leaf = self.cpuid.find(1)
        return None if leaf is None else leaf.eax


def missing_requirement(trace: f.Trace, host: HostContext) -> str | None:
    have = {"smm": host.smm, "x2apic": host.x2apic, "split-irqchip": host.split_irqchip}
    if trace.setup.apic == "x2apic" and not host.x2apic:
        return "x2APIC is not offered to guests here"
    if trace.setup.irqchip == "split" and not host.split_irqchip:
        return "KVM_CAP_SPLIT_IRQCHIP is absent"
    for requirement in trace.requires:
        if not have[requirement]:
            return f"this host's KVM lacks {requirement}"
    return None


def profile_label(profile) -> str:
    """How a profile is named in reports: its name, plus any --set changes."""
    profile = reference.get_profile(profile)
    return getattr(profile, "label", profile.name)


class _Judge:
    """Compares predictions with observations for one trace and keeps the counts."""

    def __init__(self, trace: f.Trace, result: TraceResult):
        self.trace = trace
        self.result = result

    def compare(self, index: int, step, expected: dict, observed: dict) -> None:
        result = self.result
        if expected == observed:  # the common case, compared in C: no GUEST value can be equal
            result.compared += len(expected)
            return
        differ = []
        skipped = 0
        for key, want in expected.items():  # the common case first: no sort, no set
            if want is GUEST:
                result.not_compared += 1  # the guest ran code: the model does not know
                skipped += 1
                continue
            if want is reference.UNSPECIFIED:
                result.unspecified += 1  # an architectural profile: the manuals do not say
                skipped += 1
                continue
            got = observed.get(key, _NOTHING)
            if got is _NOTHING:
                got = "none" if key[1] == "report" else MISSING
            if want != got:
                differ.append((key, want, got))
        extra = 0
        for key, got in observed.items():
            if key not in expected:
                extra += 1
                differ.append((key, "none" if key[1] == "report" else MISSING, got))
        result.compared += len(expected) - skipped + extra
        for (vcpu, field), want, got in sorted(differ, key=lambda d: _key_order(d[0])):
            if want != got:
                result.mismatches.append(
                    Mismatch(index, self.trace.location(step), vcpu, field, want, got)
                )

    def check_pins(self, index: int, step, predicted: dict) -> None:
        """observe.expect: hand-written values that the model's prediction must equal."""
        for vcpu, pins in step.expect.items():
            for name, pinned in pins.items():
                value = predicted.get((vcpu, name), MISSING)
                self.result.pins_checked += 1
                if value != pinned:
                    self.result.mismatches.append(
                        Mismatch(
                            index,
                            self.trace.location(step),
                            vcpu,
                            name + Mismatch.PIN_SUFFIX,
                            pinned,
                            value,
                        )
                    )


def _key_order(key):
    vcpu, field = key
    return (-1 if vcpu is None else vcpu, field)


class Cancelled(Exception):
    """The runner gave up on this trace (its deadline passed, or the run was interrupted)."""


def run_trace(
    trace: f.Trace,
    profile,
    host: HostContext,
    repeat: int = 0,
    timeline: bool = False,
    cancel: threading.Event | None = None,
) -> TraceResult:
    """Replay `trace` under `profile` (a name or a reference.Profile); never raises for a
    problem in the trace or the host. With `timeline`, the result keeps a StepRecord of both
    sides for every step (what `kvmtest show` draws). Setting `cancel` stops the replay at the
    next step (and the kvm side's waits at once); the VM is torn down as after any trace."""
    start = time.perf_counter()
    profile = reference.get_profile(profile)
    result = TraceResult.of(trace, profile_label(profile), host.backend, repeat)
    if not trace.applies_to(profile.name):
        result.status, result.message = Status.SKIP, f"does not apply to profile {profile.name}"
        return result
    reason = missing_requirement(trace, host)
    if reason:
        result.status, result.message = Status.SKIP, reason
        return result
    real = None
    index, step = 0, None
    judge = _Judge(trace, result)
    cached = None if timeline else _cached_predictions(trace, profile, host)
    predictions: list = []
    try:
        system = model = None
        if cached is None:
            system = System(trace.setup, profile, host.flavour, host.cpuid_1_eax, host.smm)
            model = Sequential(system)
        if host.backend == "kvm":
            from kvmtest.exec.batch import BatchSide, batchable
            from kvmtest.exec.kvm import KvmSide

            # A host-driven trace's ioctls in one C call (kvmtest.exec.batch); `show` draws
            # every step from KvmSide, which can also say where each thread is.
            side = BatchSide if not timeline and batchable(trace) else KvmSide
            real = side(host.kvm, trace, host.cpuid, cancel)
        check_pins = profile.name in trace.pinned_profiles
        spec = Specify(profile, trace.setup) if reference.is_architectural(profile) else None
        for index, step in enumerate(trace.steps):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled by the runner")
            if step.kind == "concurrently":
                _concurrent(trace, index, step, system, real, profile, host, result, check_pins)
                break  # the block's outcome includes the steps after it
            if cached is not None:
                predicted = cached[index]
            else:
                if spec is not None:
                    spec.before(system.machine, step)
                predicted = model.perform(step)
                if spec is not None:
                    predicted = spec.apply(system.machine, step, predicted)
            predictions.append(predicted)
            if check_pins and step.kind == "observe":
                judge.check_pins(index, step, predicted)
            observed = None
            if real is not None:
                observed = real.perform(step)
                observed.update(real.settle())
                judge.compare(index, step, predicted, observed)
            if timeline:
                result.timeline.append(
                    _record(trace, index, step, system, predicted, observed, real)
                )
        if cached is None and not timeline:
            _store_predictions(trace, profile, host, predictions)
    except Cancelled as exc:
        _error(result, trace, index, step, str(exc))
    except reference.ModelError as exc:
        _error(result, trace, index, step, f"model: {exc}")
    except ExploreError as exc:
        _error(result, trace, index, step, f"explore: {exc}")
    except (KvmError, GuestError, TimeoutError) as exc:
        _error(result, trace, index, step, f"kvm: {exc}")
    except Exception as exc:  # a harness bug: report it, keep the run going
        _error(result, trace, index, step, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if real is not None:
            try:
                real.close()
            except Exception as exc:
                if result.status is not Status.ERROR:
                    _error(result, trace, index, step, f"closing the VM: {exc}")
    if result.status is Status.PASS and result.mismatches:
        result.status = Status.FAIL
    if result.status is Status.PASS and real is None and not result.pins_checked:
        # Reference only and no pinned value under this profile: the model ran, nothing judged.
        result.status = Status.SKIP
        explored = f" ({result.message})" if result.message else ""
        result.message = f"nothing to check without KVM: no pinned values for {profile.name}"
        result.message += explored
    result.elapsed = time.perf_counter() - start
    return result


def _record(trace, index, step, system, predicted, observed, real) -> StepRecord:
    return StepRecord(
        index,
        trace.location(step),
        step_mapping(step),
        step.thread,
        system.view(),
        predicted,
        observed,
        real.thread_positions(observed) if real is not None else None,
        signal_of(step, trace.setup),
    )


_CACHE_SIZE = 4096  # entries per cache and process: a fuzzer's stream of new traces is bounded
_EXPLORATIONS: OrderedDict = OrderedDict()
_EXPLORATIONS_LOCK = threading.Lock()
_PREDICTIONS: OrderedDict = OrderedDict()  # id(trace), profile, host facts -> (trace, [dict])
_PREDICTIONS_LOCK = threading.Lock()


def _remember(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _cached_predictions(trace, profile, host):
    """The sequential predictions of an earlier run of this very trace object (--repeat, a
    fuzzer's re-runs), or None. The entry keeps the trace alive, so its id is not reused."""
    key = (id(trace), profile, host.flavour, host.cpuid_1_eax, host.smm)
    with _PREDICTIONS_LOCK:
        entry = _PREDICTIONS.get(key)
    if entry is None or entry[0] is not trace:
        return None
    return entry[1]


def _store_predictions(trace, profile, host, predictions) -> None:
    key = (id(trace), profile, host.flavour, host.cpuid_1_eax, host.smm)
    with _PREDICTIONS_LOCK:
        _remember(_PREDICTIONS, key, (trace, predictions))


def _explore(trace, profile, system, host):
    """The block's allowed outcomes, explored once per (trace, profile, host facts) and cached:
    --repeat runs the same exploration thousands of times otherwise. `system`: the model after
    the steps before the block, or None when the predictions came from the cache."""
    key = (
        trace.path,
        trace.name,
        repr(trace.steps),
        profile,
        host.flavour,
        host.cpuid_1_eax,
        host.smm,
    )
    with _EXPLORATIONS_LOCK:
        cached = _EXPLORATIONS.get(key)
    if cached is None:
        if system is None:  # evicted meanwhile: replay the model up to the block
            system = System(trace.setup, profile, host.flavour, host.cpuid_1_eax, host.smm)
            model = Sequential(system)
            for step in trace.steps:
                if step.kind == "concurrently":
                    break
                model.perform(step)
        explorer = Explorer(trace, profile, host.flavour, host.smm, host.cpuid_1_eax)
        cached = explorer.run(prefix=system)
        with _EXPLORATIONS_LOCK:
            _remember(_EXPLORATIONS, key, cached)
    return cached


def _concurrent(trace, index, block, system, real, profile, host, result, check_pins) -> None:
    """A concurrent block: the model's allowed outcomes against what KVM shows this time."""
    exploration = _explore(trace, profile, system, host)
    _check_outcome_pins(trace, index, block, profile, exploration, result)
    if real is None:
        shown = "; ".join(f"{n} x {label}" for label, n in exploration.outcomes.items())
        result.message = f"{exploration.interleavings} schedules explored: {shown}"
        if check_pins:  # under the profiles the trace vouches for, properties must hold
            result.pins_checked += 1
            for label, broken in exploration.violations.items():
                result.mismatches.append(
                    Mismatch(
                        index,
                        trace.location(block),
                        None,
                        "property " + ", ".join(broken),
                        "holds",
                        label,
                    )
                )
        return
    rng = random.Random(host.seed + result.repeat if host.seed is not None else None)
    reports = set(real.run_block(block, rng, host.jitter))
    observed: dict = {}
    for step in trace.steps[index + 1 :]:
        out = real.perform(step)
        for (vcpu, name), value in real.settle().items():
            if name == "report":
                reports.add((vcpu, value))
        if step.kind == "observe":
            observed.update(out)
    reports = frozenset(reports)
    result.compared += 1
    match = next(
        (label for label, o in exploration.allowed.items() if o.matches(reports, observed)), None
    )
    if match is None:
        shown = Outcome(
            reports,
            tuple(
                (v, n, x)
                for (v, n), x in sorted(observed.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1]))
            ),
        ).label()
        result.outcomes = {shown: 1}
        result.allowed = {label: True for label in exploration.outcomes} | {shown: False}
        result.mismatches.append(
            Mismatch(
                index,
                trace.location(block),
                None,
                "outcome",
                frozenset(exploration.outcomes),
                shown,
            )
        )
    else:
        result.outcomes = {match: 1}
        result.allowed = {label: True for label in exploration.outcomes}


def _check_outcome_pins(trace, index, block, profile, exploration, result) -> None:
    """`outcomes:` pinned for this profile: the explorer's outcome set must equal it."""
    pinned = trace.pinned_outcomes(profile.name)
    if pinned is None:
        return
    result.pins_checked += 1
    explored = frozenset(exploration.outcomes)
    field = "outcome" + Mismatch.PIN_SUFFIX
    location = trace.location(block)
    differences = [("not pinned", label) for label in sorted(explored - pinned)]
    differences += [(label, "not explored") for label in sorted(pinned - explored)]
    for expected, observed in differences:
        result.mismatches.append(Mismatch(index, location, None, field, expected, observed))


def _error(result, trace, index, step, message: str) -> None:
    where = trace.location(step) if step is not None else trace.path
    result.status = Status.ERROR
    result.message = f"{where}: step {index + 1}: {message}"
