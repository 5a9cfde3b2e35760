"""Findings: where KVM deviates from a CPU manual, from a run under ``sdm`` or ``apm``.

A run under an architectural profile gives mismatches: fields where KVM did not do what the
manual says. ``collect`` explains each one by an architectural switch
(``reference.architecture.ARCH_RULES``): it replays the trace on the model alone with that
switch set back to KVM's behaviour, and the switch explains the mismatch if that replay
predicts exactly what KVM showed. A mismatch no single switch explains (nor all of them at
once) stays *unexplained*: KVM then differs from the model of KVM too, which a run under the
kernel's own profile reports as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reference import GUEST
from reference import architecture as arch

from .engine import MISSING, HostContext, run_trace
from .result import Mismatch, Status


@dataclass(frozen=True)
class Occurrence:
    """One observed deviation: a trace's step and field, the manual's value and KVM's."""

    trace: str
    location: str  # file:line of the step
    step: int  # 1-based
    vcpu: int | None
    field: str
    manual: object
    kvm: object


@dataclass
class Finding:
    switch: str
    rule: arch.ArchRule
    cite: arch.Cite
    occurrences: list = field(default_factory=list)

    @property
    def traces(self) -> list[str]:
        return sorted({o.trace for o in self.occurrences})


@dataclass
class FindingsReport:
    profile: str
    vendor: str
    findings: list  # Finding, in ARCH_RULES order, only those observed
    unexplained: list  # Occurrence
    errors: list  # (trace name, message)
    traces: int = 0
    compared: int = 0
    unspecified: int = 0
    guest: int = 0
    kvm_base: str = "mainline"  # whose KVM switches (ioctl behaviour) the profile carried

    @property
    def exit_code(self) -> int:
        """0: every deviation is a known finding; 1: something unexplained or an error."""
        return 1 if self.unexplained or self.errors else 0


def _predictions(trace, profile, host: HostContext) -> dict:
    """The model's predictions for every step under ``profile`` (no KVM): {index: dict}."""
    model_host = HostContext(
        "reference", flavour=host.flavour, smm=host.smm, x2apic=host.x2apic, cpuid=host.cpuid
    )
    result = run_trace(trace, profile, model_host, timeline=True)
    return {record.index: record.predicted for record in result.timeline}


def _explains(predictions: dict, m: Mismatch) -> bool:
    predicted = predictions.get(m.step)
    if predicted is None:
        return False
    default = "none" if m.field == "report" else MISSING
    want = predicted.get((m.vcpu, m.field), default)
    if want is arch.UNSPECIFIED or want is GUEST:
        return False
    return not (want != m.observed)


def collect(results, traces, profile, host: HostContext) -> FindingsReport:
    """Findings of a run's ``results`` under the architectural ``profile``."""
    if not arch.is_architectural(profile):
        raise ValueError(f"findings need an architectural profile (sdm, apm), not {profile.name}")
    by_key = {(t.path, t.name): t for t in traces}
    on = [s for s in arch.ARCH_SWITCHES if getattr(profile, s)]
    findings = {s: Finding(s, arch.ARCH_RULES[s], profile.cite(s)) for s in on}
    report = FindingsReport(profile.label, profile.vendor, [], [], [], kvm_base=profile.kvm_base)
    for result in results:
        report.traces += 1
        report.compared += result.compared
        report.unspecified += result.unspecified
        report.guest += result.not_compared
        if result.status is Status.ERROR:
            report.errors.append((result.name, result.message))
            continue
        if not result.mismatches:
            continue
        trace = by_key[(result.path, result.name)]
        variants = {}
        for m in result.mismatches:
            o = Occurrence(
                result.name, m.location, m.step + 1, m.vcpu, m.field, m.expected, m.observed
            )
            for s in [*on, "*"]:
                if s not in variants:
                    changed = on if s == "*" else [s]
                    variants[s] = _predictions(trace, arch.kvm_variant(profile, changed), host)
                if _explains(variants[s], m):
                    if s == "*":
                        report.unexplained.append(o)  # only all switches together: say so
                    else:
                        findings[s].occurrences.append(o)
                    break
            else:
                report.unexplained.append(o)
    report.findings = [f for f in findings.values() if f.occurrences]
    return report
