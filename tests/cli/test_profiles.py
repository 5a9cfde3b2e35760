"""--profile and --set on the command line: what-if profiles for run, explore and model, and a
release no profile covers refused with the nearest profiles named."""

import argparse
import json

import pytest

from kvmtest.cli.profiles import add_profile_options, resolve_profile
from kvmtest.suite import UsageError, corpus_dir
from tests.cli.test_run import kvmtest
from tests.conftest import require_kvm


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_profile_options(parser)
    return parser.parse_args(argv)


def test_the_release_chooses_the_profile_and_an_uncovered_one_is_refused():
    assert resolve_profile(parse(), "6.18.44-fc-v595").name == "mainline"
    assert resolve_profile(parse(), "6.1.0-50-amd64").name == "linux-6.1"
    assert resolve_profile(parse(), "5.10.0-32-amd64").name == "linux-5.10"
    with pytest.raises(UsageError, match=r"no profile covers 5\.15.*nearest: linux-5\.10"):
        resolve_profile(parse(), "5.15.0-140-generic")
    chosen = resolve_profile(parse("--profile", "linux-6.1"), "5.15.0-140-generic")
    assert chosen.name == "linux-6.1"


def test_set_changes_one_switch_and_names_the_result():
    profile = resolve_profile(parse("--profile", "mainline", "--set", "image=v2"))
    assert profile.image == "v2" and profile.name == "mainline"
    assert profile.label == "mainline[image=v2]"
    with pytest.raises(UsageError, match="unknown switch 'imagee'"):
        resolve_profile(parse("--set", "imagee=v2"))


def test_run_with_a_changed_switch_is_judged_by_that_profile_on_kvm():
    """image=v2 is Linux 3.10's INIT image (CS base 0 after INIT): this KVM disagrees."""
    require_kvm()
    result = kvmtest("run", "-k", "msi-init-sipi", "--set", "image=v2", "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["profile"] == "mainline[image=v2]"
    failed = {r["name"]: r for r in report["results"] if r["status"] == "fail"}
    fields = {m["field"] for m in failed["msi-init-sipi"]["mismatches"]}
    assert "cs.base" in fields


def test_explore_and_model_take_set_too():
    race = f"{corpus_dir()}/race-hlt-init-sipi.yaml"
    # hlt_checks_pending_events=false and the 3.9 sender: the pre-patch race comes back.
    args = ["--set", "sender_writes_mp_state=true", "--set", "hlt_checks_pending_events=false"]
    lost = kvmtest("explore", race, *args)
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "shortest violating schedule" in lost.stdout
    table = kvmtest("model", "--set", "get_mp_state_processes=false")
    plain = kvmtest("model")
    assert table.returncode == plain.returncode == 0 and table.stdout != plain.stdout
    bad = kvmtest("model", "--set", "image=v9")
    assert bad.returncode == 2 and "valid: v1, v2, v3" in bad.stderr
