"""One mutant in a fresh interpreter: ``python -m kvmtest.mutate.worker < spec.json``.

The spec (JSON on stdin) names the mutant (``{"kind": "none"}``, ``{"kind": "switch", "set":
"name=value"}`` or ``{"kind": "code", "module": ..., "index": ...}``), the host facts the
model needs (flavour, CPUID.1.EAX), the corpus, the probe batch (a pickle) and, for a mutant,
the unmutated model's predictions. The code mutant is installed before ``reference`` is first
imported. The worker predicts every corpus trace (SMM traces as if the host had SMM), the
probes, and replays on KVM only the corpus traces whose prediction differs from the baseline
(the baseline run replays them all). The answer is one JSON object on stdout.
"""

from __future__ import annotations

import json
import pickle
import sys


def _profile(spec):
    import reference

    mutant = spec["mutant"]
    if mutant["kind"] == "switch":
        return reference.apply_switches(spec["profile"], [mutant["set"]])
    return reference.get_profile(spec["profile"])


def _coverage_tracer(lines: set, root: str):
    def local(frame, event, arg):
        if event == "line":
            lines.add((frame.f_code.co_filename, frame.f_lineno))
        return local

    def tracer(frame, event, arg):
        if frame.f_code.co_filename.startswith(root):
            return local
        return None

    return tracer


def main() -> int:
    spec = json.load(sys.stdin)
    mutant = spec["mutant"]
    if mutant["kind"] == "code":
        from .install import install

        install(mutant["module"], mutant["index"])
    lines: set = set()
    if spec.get("coverage"):
        from .ast_mutants import module_path

        root = module_path("reference.machine").rsplit("/", 1)[0] + "/"
        sys.settrace(_coverage_tracer(lines, root))
    answer = run(spec)
    sys.settrace(None)
    if spec.get("coverage"):
        answer["lines"] = sorted(f"{path}:{line}" for path, line in lines)
    json.dump(answer, sys.stdout)
    return 0


def run(spec) -> dict:
    from kvmtest.suite import load_traces
    from kvmtest.trace.engine import missing_requirement

    from .fingerprint import first_difference, predictions

    profile = _profile(spec)
    host = spec["host"]
    flavour, eax = host["flavour"], host["cpuid_1_eax"]
    traces, errors = load_traces(spec["corpus"])
    if errors:
        raise SystemExit(f"corpus: {errors[0]}")
    facts = _Facts(host)
    runnable = [
        t for t in traces if t.applies_to(profile.name) and not missing_requirement(t, facts)
    ]
    smm_only = [
        t for t in traces if t.applies_to(profile.name) and "smm" in t.requires and not facts.smm
    ]
    corpus = {t.name: predictions(t, profile, flavour, eax, facts.smm) for t in runnable}
    smm = {t.name: predictions(t, profile, flavour, eax, True) for t in smm_only}
    with open(spec["probes"], "rb") as fh:
        probes = pickle.load(fh)
    base = spec.get("baseline")
    if base is None:
        probe = [predictions(t, profile, flavour, eax, facts.smm) for t in probes]
        chosen = runnable if spec.get("kvm") else []
        answer = {"corpus": corpus, "smm": smm, "probes": probe}
        answer["kvm"] = _replay(chosen, profile, spec, stop_at_fail=False) if chosen else {}
        return answer
    differs = {}
    for name, steps in corpus.items():
        at = first_difference(base["corpus"][name], steps)
        if at is not None:
            differs[name] = at
    smm_differs = [n for n, s in smm.items() if first_difference(base["smm"][n], s) is not None]
    probe_differs = []
    if not differs:  # the probes only tell "not exercised" from "equivalent": first one wins
        for i, trace in enumerate(probes):
            steps = predictions(trace, profile, flavour, eax, facts.smm)
            if first_difference(base["probes"][i], steps) is not None:
                probe_differs.append(trace.name)
                break
    chosen = [t for t in runnable if t.name in differs] if spec.get("kvm") else []
    first = set(spec.get("first", ()))  # replayed first: tells which corpus killed it
    chosen.sort(key=lambda t: (t.name not in first, t.setup.guest != "none", len(t.steps)))
    answer = {"differs": differs, "smm_differs": smm_differs, "probe_differs": probe_differs}
    answer["kvm"] = _replay(chosen, profile, spec, stop_at_fail=True) if chosen else {}
    return answer


class _Facts:
    """The host facts missing_requirement reads."""

    def __init__(self, host: dict):
        self.smm = host["smm"]
        self.x2apic = host["x2apic"]
        self.split_irqchip = host["split_irqchip"]


def _replay(traces, profile, spec, stop_at_fail: bool) -> dict:
    """Replay on KVM; a mutant needs one FAIL to be killed, so it stops there."""
    from kvmtest.suite import choose_backend, run_one

    backend = choose_backend("kvm", True)
    if backend.unusable:
        raise SystemExit(f"KVM is not usable: {backend.unusable}")
    out = {}
    for trace in traces:
        result = run_one(trace, profile, backend.context, timeout=spec.get("timeout", 30.0))
        first = result.mismatches[0] if result.mismatches else None
        out[trace.name] = {
            "status": result.status.value,
            "message": result.message,
            "mismatch": None
            if first is None
            else f"{first.location} vcpu{first.vcpu} {first.field}: "
            f"model {first.expected!r}, kvm {first.observed!r}"[:300],
        }
        if stop_at_fail and result.status.value == "fail":
            break
    return out


if __name__ == "__main__":
    sys.exit(main())
