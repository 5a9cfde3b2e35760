"""Replaying one trace: the model predicts, KVM performs, every difference is a Mismatch.

For each step the model side runs first and returns what it predicts, keyed (vcpu, field);
the kvm side then performs the step and returns what it saw under the same keys. Values the
model does not know (GUEST: the guest ran code) are not compared. With the reference backend
only the model runs, and the trace's pinned expectations (observe.expect) are what it is
checked against.
"""

import random
import threading
import time
from dataclasses import dataclass

import reference
from kvmtest import ops as f
from kvmtest.guest import GuestError
from kvmtest.kvm import KvmError
from kvmtest.sim.system import ModelSide
from reference import GUEST

from .result import Mismatch, Status, TraceResult

MISSING = "absent"


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


def _outputs(side, step) -> dict:
    """Apply one step to a side; return {(vcpu, field): value}."""
    if isinstance(step, f.Msi):
        return side.msi(step)
    if isinstance(step, f.Observe):
        out = {}
        for vcpu in step.vcpus:
            for name, value in side.observe(vcpu, step.read).items():
                if step.fields is None or name in step.fields:
                    out[(vcpu, name)] = value
        return out
    if isinstance(step, f.GetMpState):
        return side.get_mp_state(step.vcpu)
    if isinstance(step, f.SetMpState):
        return side.set_mp_state(step.vcpu, step.state)
    if isinstance(step, f.SetVcpuEvents):
        return side.set_vcpu_events(step)
    if isinstance(step, f.SetLapic):
        return side.set_lapic(step.vcpu)
    if isinstance(step, f.Smi):
        return side.smi(step.vcpu)
    if isinstance(step, f.Nmi):
        return side.nmi(step.vcpu)
    if isinstance(step, (f.Icr, f.GuestCommand)):
        return side.guest(step)
    if isinstance(step, f.SmpBoot):
        return side.smp_boot(step)
    raise NotImplementedError(f"{step.kind} steps are not replayed yet")


def _compare(trace, index, step, expected: dict, observed: dict) -> list:
    mismatches = []
    for key in sorted(expected.keys() | observed.keys(), key=_key_order):
        vcpu, field = key
        default = "none" if field == "report" else MISSING
        want, got = expected.get(key, default), observed.get(key, default)
        if want is GUEST or want == got:
            continue
        mismatches.append(Mismatch(index, trace.location(step), vcpu, field, want, got))
    return mismatches


def _key_order(key):
    vcpu, field = key
    return (-1 if vcpu is None else vcpu, field)


def _check_pins(trace, index, step, predicted: dict) -> list:
    """observe.expect: hand-written values that the model's prediction must equal."""
    mismatches = []
    for vcpu, pins in step.expect.items():
        for name, pinned in pins.items():
            value = predicted.get((vcpu, name), MISSING)
            if value != pinned:
                mismatches.append(
                    Mismatch(
                        index, trace.location(step), vcpu, f"{name} (model vs pin)", pinned, value
                    )
                )
    return mismatches


def run_trace(trace: f.Trace, profile: str, host: HostContext, repeat: int = 0) -> TraceResult:
    """Replay `trace` under `profile`; never raises for a problem in the trace or the host."""
    start = time.perf_counter()
    result = TraceResult.of(trace, profile, host.backend, repeat)
    if not trace.applies_to(profile):
        result.status, result.message = Status.SKIP, f"does not apply to profile {profile}"
        return result
    reason = missing_requirement(trace, host)
    if reason:
        result.status, result.message = Status.SKIP, reason
        return result
    model = real = None
    index, step = 0, None
    try:
        model = ModelSide(trace, profile, host.flavour, host.cpuid_1_eax, host.smm)
        if host.backend == "kvm":
            from kvmtest.exec.kvm import KvmSide

            real = KvmSide(host.kvm, trace, host.cpuid)
        check_pins = profile in trace.pinned_profiles
        for index, step in enumerate(trace.steps):
            if isinstance(step, f.Concurrently):
                _concurrent(trace, index, step, model, real, profile, host, result, check_pins)
                break  # the block's outcome includes the steps after it
            model.begin_step()
            predicted = _outputs(model, step)
            predicted.update(model.settle())
            if check_pins and isinstance(step, f.Observe):
                result.mismatches += _check_pins(trace, index, step, predicted)
            if real is not None:
                observed = _outputs(real, step)
                observed.update(real.settle(_reports(predicted)))
                result.mismatches += _compare(trace, index, step, predicted, observed)
    except reference.ModelError as exc:
        _error(result, trace, index, step, f"model: {exc}")
    except (KvmError, GuestError, TimeoutError) as exc:
        _error(result, trace, index, step, f"kvm: {exc}")
    except NotImplementedError as exc:
        _error(result, trace, index, step, str(exc))
    except Exception as exc:  # a harness bug: report it, keep the run going
        _error(result, trace, index, step, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        for side in (real, model):
            if side is not None:
                try:
                    side.close()
                except Exception as exc:
                    if result.status is not Status.ERROR:
                        _error(result, trace, index, step, f"closing the VM: {exc}")
    if result.status is Status.PASS and result.mismatches:
        result.status = Status.FAIL
    result.elapsed = time.perf_counter() - start
    return result


_EXPLORATIONS: dict = {}
_EXPLORATIONS_LOCK = threading.Lock()


def _explore(trace, profile, model, host):
    """The block's allowed outcomes, explored once per (trace, profile, host) and cached:
    --repeat runs the same exploration thousands of times otherwise."""
    from kvmtest.sim.explore import Explorer

    key = (trace.path, trace.name, profile, host.flavour, host.cpuid_1_eax)
    with _EXPLORATIONS_LOCK:
        cached = _EXPLORATIONS.get(key)
    if cached is None:
        cached = Explorer(trace, profile, host.flavour).run(prefix=model)
        with _EXPLORATIONS_LOCK:
            _EXPLORATIONS[key] = cached
    return cached


def _concurrent(trace, index, block, model, real, profile, host, result, check_pins) -> None:
    """A concurrent block: the model's allowed outcomes against what KVM shows this time."""
    exploration = _explore(trace, profile, model, host)
    if real is None:
        shown = "; ".join(f"{n} x {label}" for label, n in exploration.outcomes.items())
        result.message = f"{exploration.interleavings} schedules explored: {shown}"
        if check_pins:  # under the profiles the trace vouches for, properties must hold
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
        out = _outputs(real, step)
        for (vcpu, name), value in real.settle({}).items():
            if name == "report":
                reports.add((vcpu, value))
        if isinstance(step, f.Observe):
            observed.update(out)
    reports = frozenset(reports)
    match = next(
        (label for label, o in exploration.allowed.items() if o.matches(reports, observed)), None
    )
    if match is None:
        from kvmtest.sim.explore import Outcome

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


def _reports(predicted: dict) -> dict:
    return {key: value for key, value in predicted.items() if key[1] in ("report", "thread")}


def _error(result, trace, index, step, message: str) -> None:
    where = trace.location(step) if step is not None else trace.path
    result.status = Status.ERROR
    result.message = f"{where}: step {index + 1}: {message}"
