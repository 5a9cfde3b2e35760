"""kvmtest mutate: the AST mutants, the worker's judging, the categories."""

import json
import os
import subprocess
import sys

import pytest

from kvmtest.mutate import ast_mutants, mutants, runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sites_are_numbered_the_same_every_walk_and_every_one_compiles():
    first = ast_mutants.sites("reference.encodings")
    ast_mutants._SITES.clear()
    assert ast_mutants.sites("reference.encodings") == first
    for site in first:
        assert ast_mutants.mutated_code(site.module, site.index) is not None


def test_each_family_of_operators_is_generated():
    operators = {s.operator for s in ast_mutants.all_sites()}
    assert operators == {"delete", "swap", "constant", "condition", "compare"}


def test_no_site_in_error_paths_or_docstrings():
    for site in ast_mutants.sites("reference.machine"):
        assert "ModelError" not in site.description
        assert site.function not in ast_mutants.SKIP_FUNCTIONS


def test_every_switch_of_mainline_is_flipped():
    import reference

    names = {m.spec["set"].split("=")[0] for m in mutants.switch_mutants("mainline")}
    assert names == set(reference.SWITCHES)


def _spec(tmp_path, mutant, baseline=None):
    from kvmtest.mutate import probes

    path = tmp_path / "probes.pickle"
    import pickle

    path.write_bytes(pickle.dumps(probes.directed(5)))
    spec = {
        "profile": "mainline",
        "host": {"flavour": "vmx", "cpuid_1_eax": None, "smm": False, "x2apic": True,
                 "split_irqchip": True},
        "corpus": [],
        "probes": str(path),
        "mutant": mutant,
        "kvm": False,
    }  # fmt: skip
    if baseline is not None:
        spec["baseline"] = baseline
    done = subprocess.run(
        [sys.executable, "-m", "kvmtest.mutate.worker"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(done.stdout)


def _site(description):
    return next(s for s in ast_mutants.sites("reference.machine") if description in s.description)


def test_the_worker_sees_a_rule_mutant_change_the_corpus_predictions(tmp_path):
    base = _spec(tmp_path, {"kind": "none"})
    site = _site("delete `v.pending_init = True`")
    spec = {"kind": "code", "module": site.module, "index": site.index}
    answer = _spec(tmp_path, spec, {k: base[k] for k in ("corpus", "smm", "probes")})
    assert "msi-init-sipi" in answer["differs"]
    assert answer["kvm"] == {}


def test_a_no_op_switch_value_predicts_alike(tmp_path):
    base = _spec(tmp_path, {"kind": "none"})
    same = {"kind": "switch", "set": "image=v3"}  # mainline's own value
    answer = _spec(tmp_path, same, {k: base[k] for k in ("corpus", "smm", "probes")})
    assert answer["differs"] == {} and answer["probe_differs"] == []


def _mutant(kind="code", function="f"):
    return mutants.Mutant("m:1", kind, "d", "reference/machine.py:10", {}, 10, function)


BASE = {"failing": {}, "probes": 5, "profile": "mainline"}


@pytest.mark.parametrize(
    "answer, category",
    [
        (None, runner.CRASH),
        ({"kvm": {"t": {"status": "fail", "mismatch": "x", "message": ""}}, "differs": {"t": 1},
          "smm_differs": [], "probe_differs": []}, runner.KILLED),
        ({"kvm": {"t": {"status": "error", "mismatch": None, "message": "boom"}},
          "differs": {"t": 1}, "smm_differs": [], "probe_differs": []}, runner.CRASH),
        ({"kvm": {"t": {"status": "pass", "mismatch": None, "message": ""}}, "differs": {"t": 1},
          "smm_differs": [], "probe_differs": []}, runner.SURVIVED),
        ({"kvm": {}, "differs": {}, "smm_differs": ["s"], "probe_differs": []}, runner.NEEDS_SMM),
        ({"kvm": {}, "differs": {}, "smm_differs": [], "probe_differs": ["p"]},
         runner.UNEXERCISED),
        ({"kvm": {}, "differs": {}, "smm_differs": [], "probe_differs": []}, runner.EQUIVALENT),
    ],
)  # fmt: skip
def test_categories(answer, category):
    assert runner.judge(_mutant(), answer, "why", BASE).category == category


def test_a_line_that_never_ran_is_equivalent_without_a_worker():
    covered = {("/x/reference/machine.py", 11)}
    assert runner.never_runs(_mutant(), covered)
    assert not runner.never_runs(_mutant(function="<module>"), covered)
    assert not runner.never_runs(_mutant(), {("/x/reference/machine.py", 10)})


def test_score_counts_killed_over_judged():
    campaign = runner.Campaign("mainline", {}, [], 0)
    campaign.verdicts = [
        runner.Verdict(_mutant(), c, "")
        for c in (runner.KILLED, runner.CRASH, runner.SURVIVED, runner.EQUIVALENT)
    ]
    assert campaign.score == pytest.approx(2 / 3)
