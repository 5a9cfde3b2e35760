"""Running the mutants: the baseline first, then each mutant in its own interpreter.

The baseline (the unmutated model) predicts every trace and replays the whole corpus on KVM;
every trace must pass, or the ones that do not are left out of the judging (and said so). A
mutant is then judged by its worker:

* **killed**: some corpus trace FAILs on KVM under the mutant;
* **killed by crash**: no FAIL, but an ERROR (the mutated model raised, hung or broke import);
* **survived**: its predictions differ on some corpus trace, yet KVM passed every one (the
  difference is not compared: GUEST values, or an outcome set that still allows KVM's);
* **not exercised by the corpus**: its predictions equal the baseline's on every corpus trace
  (it survives by construction, no KVM run needed) but differ on a probe trace;
* **needs SMM**: it differs only on traces that need SMM, which this host's KVM lacks;
* **equivalent**: identical predictions on the corpus and on every probe trace; the argument
  says whether the mutated line ever runs under the host's profile.

score = killed (incl. by crash) / (killed + survived + not exercised); needs-SMM and equivalent
mutants are listed, never counted silently.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import probes as probe_traces

KILLED, CRASH, SURVIVED, UNEXERCISED, NEEDS_SMM, EQUIVALENT = (
    "killed",
    "killed by crash",
    "survived",
    "not exercised by the corpus",
    "needs SMM",
    "equivalent",
)
CATEGORIES = (KILLED, CRASH, SURVIVED, UNEXERCISED, NEEDS_SMM, EQUIVALENT)
COUNTED = (KILLED, CRASH, SURVIVED, UNEXERCISED)


@dataclass
class Verdict:
    mutant: object  # Mutant
    category: str
    reason: str
    elapsed: float = 0.0


@dataclass
class Campaign:
    profile: str
    host: dict
    corpus: list
    probes: int
    verdicts: list = field(default_factory=list)
    baseline_failures: dict = field(default_factory=dict)
    before: list = field(default_factory=list)  # verdicts judged on the original corpus only
    before_corpus: int = 0
    elapsed: float = 0.0
    command: str = ""

    def count(self, category: str, verdicts=None) -> int:
        verdicts = self.verdicts if verdicts is None else verdicts
        return sum(1 for v in verdicts if v.category == category)

    def score_of(self, verdicts) -> float | None:
        judged = sum(self.count(c, verdicts) for c in COUNTED)
        if not judged:
            return None
        return (self.count(KILLED, verdicts) + self.count(CRASH, verdicts)) / judged

    @property
    def score(self) -> float | None:
        return self.score_of(self.verdicts)


def host_facts(context) -> dict:
    eax = context.cpuid_1_eax
    return {
        "flavour": context.flavour,
        "cpuid_1_eax": eax,
        "smm": context.smm,
        "x2apic": context.x2apic,
        "split_irqchip": context.split_irqchip,
    }


def _worker(spec: dict, timeout: float) -> tuple[dict | None, str]:
    """Run one worker; (answer, "") or (None, why it gave none)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kvmtest.mutate.worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=_checkout(),
        )
    except subprocess.TimeoutExpired:
        return None, f"the worker did not finish in {timeout:g} s"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the worker exited {done.returncode}: {tail[:200]}"
    return json.loads(done.stdout), ""


def _checkout() -> str:
    """The directory holding the kvmtest package (and tests/ in a checkout: the probes)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prepare(corpus_paths, count: int, strategies: int, tmpdir: str) -> tuple[str, int]:
    sys.path.insert(0, _checkout())
    batch = probe_traces.directed(count) + probe_traces.from_strategies(strategies)
    path = os.path.join(tmpdir, "probes.pickle")
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)
    return path, len(batch)


def baseline(spec: dict, timeout: float) -> dict:
    answer, why = _worker(dict(spec, mutant={"kind": "none"}, coverage=True, kvm=True), timeout)
    if answer is None:
        raise RuntimeError(f"the unmutated model: {why}")
    return answer


def never_runs(mutant, covered: set) -> bool:
    """A code mutant inside a function whose line never ran in the baseline (corpus, SMM
    traces as if with SMM, probes): it cannot change any of those predictions."""
    if mutant.kind != "code" or mutant.function == "<module>":
        return False
    path = mutant.where.rsplit(":", 1)[0]
    return not any(p.endswith(path) and line == mutant.line for p, line in covered)


def judge(mutant, answer: dict | None, why: str, base: dict, only=None) -> Verdict:
    """The verdict; with `only` (trace names), as if the corpus held just those traces (the
    worker replays them first, so a FAIL among them is found if there is one)."""
    if answer is None:
        return Verdict(mutant, CRASH, why)
    if only is not None:
        full = answer["differs"]
        answer = dict(answer)
        answer["kvm"] = {n: r for n, r in answer["kvm"].items() if n in only}
        answer["differs"] = {n: s for n, s in full.items() if n in only}
        if full and not answer["differs"]:  # it differs on a trace outside `only`
            answer["probe_differs"] = [sorted(full)[0] + " (outside this corpus)"]
    kvm = {n: r for n, r in answer["kvm"].items() if n not in base["failing"]}
    failed = {n: r for n, r in kvm.items() if r["status"] == "fail"}
    errors = {n: r for n, r in kvm.items() if r["status"] == "error"}
    if failed:
        name, r = sorted(failed.items())[0]
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        return Verdict(mutant, KILLED, f"{name}: {r['mismatch']}{more}")
    if errors:
        name, r = sorted(errors.items())[0]
        return Verdict(mutant, CRASH, f"{name}: {r['message'][:200]}")
    differs = {n: s for n, s in answer["differs"].items() if n not in base["failing"]}
    if differs:
        shown = ", ".join(f"{n} (step {s + 1})" for n, s in sorted(differs.items())[:3])
        return Verdict(
            mutant, SURVIVED, f"predicts differently on {shown}, yet KVM passed every one"
        )
    if answer["smm_differs"]:
        return Verdict(mutant, NEEDS_SMM, "differs only on " + ", ".join(answer["smm_differs"]))
    if answer["probe_differs"]:
        names = answer["probe_differs"]
        return Verdict(
            mutant,
            UNEXERCISED,
            f"identical on every corpus trace; differs on probe trace {names[0]}",
        )
    n = base["probes"]
    return Verdict(
        mutant, EQUIVALENT, f"identical predictions on every corpus trace and {n} probe traces"
    )


def run(
    mutants,
    *,
    profile: str,
    context,
    corpus_paths=(),
    before=None,
    probes: int = 100,
    strategies: int = 50,
    jobs: int = 1,
    timeout: float = 120.0,
    progress=None,
) -> Campaign:
    start = time.perf_counter()
    facts = host_facts(context)
    with tempfile.TemporaryDirectory(prefix="kvmtest-mutate-") as tmpdir:
        probe_path, nr_probes = prepare(corpus_paths, probes, strategies, tmpdir)
        spec = {
            "profile": profile,
            "host": facts,
            "corpus": list(corpus_paths),
            "probes": probe_path,
        }
        base = baseline(spec, timeout * 4)
        failing = {n: r for n, r in base["kvm"].items() if r["status"] != "pass"}
        campaign = Campaign(profile, facts, sorted(base["corpus"]), nr_probes)
        campaign.baseline_failures = failing
        covered = set()
        for item in base["lines"]:
            path, _, line = item.rpartition(":")
            covered.add((path, int(line)))
        prior = {"corpus": base["corpus"], "smm": base["smm"], "probes": base["probes"]}
        context_base = {"failing": failing, "probes": nr_probes, "profile": profile}
        mspec = dict(spec, baseline=prior, kvm=True, first=sorted(before or ()))
        before_names = set(before or ()) & set(base["corpus"])
        campaign.before_corpus = len(before_names)

        def one(mutant) -> Verdict:
            t0 = time.perf_counter()
            if never_runs(mutant, covered):
                verdict = Verdict(
                    mutant,
                    EQUIVALENT,
                    f"line {mutant.line} never runs under {profile} on this host (corpus, "
                    f"SMM traces and {nr_probes} probes): code of other kernels or vendors",
                )
                if progress is not None:
                    progress(verdict)
                return verdict, verdict
            answer, why = _worker(dict(mspec, mutant=mutant.spec), timeout)
            verdict = judge(mutant, answer, why, context_base)
            verdict.elapsed = time.perf_counter() - t0
            earlier = judge(mutant, answer, why, context_base, only=before_names)
            if progress is not None:
                progress(verdict)
            return verdict, earlier

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            pairs = list(pool.map(one, mutants))
        campaign.verdicts = [now for now, _ in pairs]
        if before:
            campaign.before = [then for _, then in pairs]
    campaign.elapsed = time.perf_counter() - start
    return campaign
