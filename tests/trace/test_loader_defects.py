"""One regression test per defect of the "Reliability" issue's loader part: each input here once
gave a traceback, an abort, a hang, a silently dropped check, or an error without a line."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kvmtest.suite import load_traces
from kvmtest.trace.errors import TraceError
from kvmtest.trace.load import load_trace, parse_trace

STEPPER = "setup: {vcpus: 2, guest: stepper}\n"


def error_of(text: str) -> TraceError:
    with pytest.raises(TraceError) as err:
        parse_trace(text, "t.yaml")
    assert err.value.path == "t.yaml" and err.value.line >= 1
    assert len(str(err.value)) < 400, str(err.value)[:1000]
    return err.value


def sandboxed(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `code` in a child with 1 GiB of address space: a regression hangs or dies there."""

    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def load_in_child(path: str) -> str:
    code = textwrap.dedent(f"""
        from kvmtest.trace.errors import TraceError
        from kvmtest.trace.load import load_trace
        try:
            load_trace({path!r})
        except TraceError as exc:
            print("TraceError", exc.line, exc.reason)
        else:
            print("loaded")
    """)
    try:
        result = sandboxed(code, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} hangs")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


# --- tracebacks instead of a clean error --------------------------------------------------------


def test_mixed_key_types_in_a_mapping():
    err = error_of("name: a\n1: x\nsteps: [{observe: 0}]\n")
    assert err.line == 2 and "unknown key 1" in err.reason


@pytest.mark.parametrize("fields", ["[[rip]]", "[rip, 1]", "[{a: 1}]"])
def test_unhashable_or_mixed_observe_fields(fields):
    err = error_of(f"name: a\nsteps:\n  - observe: {{vcpu: 0, fields: {fields}}}\n")
    assert err.line == 3


def test_empty_vcpus_with_expect():
    err = error_of("name: a\nsteps:\n  - observe: {vcpus: [], expect: {mp_state: 0}}\n")
    assert err.line == 3 and "empty list of vCPUs" in err.reason


def test_integer_beyond_python_int_string_limit():
    err = error_of("name: a\nsteps:\n  - observe: " + "9" * 5000 + "\n")
    assert err.line == 3 and "more than 30 digits" in err.reason


def test_sexagesimal_integer_is_bounded_too():
    err = error_of("name: a\nsteps:\n  - observe: 1" + ":59" * 3000 + "\n")
    assert "digits" in err.reason


@pytest.mark.parametrize("value", ["2001-13-45", "!!timestamp zz", "2001-02-30 25:61:00"])
def test_invalid_timestamps(value):
    err = error_of(f"name: a\ndescription: {value}\nsteps: [{{observe: 0}}]\n")
    assert err.line == 2


@pytest.mark.parametrize("value", ["!!int zz", "!!float zz", "!!bool maybe"])
def test_bad_tags(value):
    err = error_of(f"name: a\nsteps:\n  - observe: {value}\n")
    assert err.line == 3


def test_deep_nesting_is_an_error_not_a_recursion_error():
    err = error_of("name: a\nsteps: " + "[" * 1000 + "]" * 1000 + "\n")
    assert "nest" in err.reason and err.line == 2


def test_deep_nesting_in_block_style():
    text = "name: a\nsteps:\n" + "".join("  " * i + "- \n" for i in range(1, 400)) + "\n"
    assert "nest" in error_of(text).reason


LEVELS = ["&a [x, x, x, x, x, x, x, x, x]"] + [
    f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
]
BOMB = f"name: [{', '.join(LEVELS)}]\nsteps: [{{observe: 0}}]\n"  # 9**9 strings


def test_alias_bomb_is_refused_before_it_expands():
    assert len(BOMB.encode()) < 600
    err = error_of(BOMB)
    assert "aliases expand beyond" in err.reason


def test_alias_bomb_in_a_child_stays_small(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    out = load_in_child(str(path))
    assert out.startswith("TraceError") and len(out) < 400


def test_error_messages_quote_a_bounded_excerpt():
    shared = "&x [" + ", ".join(["abcdefghij" * 5] * 50) + "]"
    err = error_of(f"name: [{shared}, *x, *x, *x, *x, *x, *x]\nsteps: [{{observe: 0}}]\n")
    assert "must be lower-case" in err.reason and len(err.reason) < 200


def test_recursive_alias():
    assert "recursive" in error_of("name: &a [*a]\nsteps: [{observe: 0}]\n").reason


# --- lines for every error ---------------------------------------------------------------------


def test_not_utf8_names_the_line_of_the_byte(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(b"name: a\nsteps:\n  - observe: \xff\n")
    with pytest.raises(TraceError) as err:
        load_trace(str(path))
    assert err.value.line == 3 and "not UTF-8" in err.value.reason


def test_unacceptable_character_names_its_line():
    err = error_of("name: a\nsteps:\n  - observe: 0\n  # \x07\n")
    assert err.line == 4 and "unacceptable character #x0007" in err.reason


# --- silently dropped checks -------------------------------------------------------------------


def test_duplicate_step_key_names_both_lines():
    err = error_of("name: a\nsteps: [{observe: 0}]\nsteps: [{observe: 1}]\n")
    assert err.line == 3 and "duplicate key 'steps' (lines 2 and 3)" in err.reason


def test_duplicate_expect_key():
    text = "name: a\nsteps:\n  - observe:\n      vcpu: 1\n      expect: {mp_state: 0}\n"
    err = error_of(text + "      expect: {mp_state: 1}\n")
    assert "duplicate key 'expect' (lines 5 and 6)" in err.reason


def test_true_and_1_are_the_same_key():
    text = "name: a\nsteps:\n  - observe:\n      vcpus: [0, 1]\n"
    err = error_of(text + "      expect: {1: {mp_state: 0}, true: {mp_state: 1}}\n")
    assert "duplicate key" in err.reason


def test_internal_line_key_is_an_unknown_key():
    err = error_of("name: a\nsteps:\n  - observe: {vcpu: 0, __line__: 7}\n")
    assert "unknown key '__line__'" in err.reason
    err = error_of("name: a\nsteps:\n  - {observe: 0, __line__: 1}\n")
    assert "exactly one" in err.reason


@pytest.mark.parametrize(
    "observe, reason",
    [
        ("[]", "empty list of vCPUs"),
        ("{vcpus: []}", "empty list of vCPUs"),
        ("{vcpu: 0, read: []}", "reads nothing"),
        ("{vcpu: 0, fields: []}", "compares nothing"),
        ("{read: [regs]}", "missing key 'vcpu'"),
        ("{vcpu: 0, vcpus: [1]}", "not both"),
    ],
)
def test_empty_observe(observe, reason):
    assert reason in error_of(f"name: a\nsteps:\n  - observe: {observe}\n").reason


@pytest.mark.parametrize("key", ["profiles", "pinned_profiles"])
def test_unknown_profile_names(key):
    err = error_of(f"name: a\n{key}: [mainline, mianline]\nsteps: [{{observe: 0}}]\n")
    assert err.line == 2 and "unknown profile 'mianline'" in err.reason


def test_known_profile_names_load():
    trace = parse_trace(
        "name: a\nprofiles: [linux-6.1]\npinned_profiles: [linux-6.1, mainline]\n"
        "steps: [{observe: 0}]\n"
    )
    assert trace.profiles == ("linux-6.1",) and trace.pinned_profiles == ("linux-6.1", "mainline")


def test_icr_value_with_fields():
    err = error_of(f"name: a\n{STEPPER}steps:\n  - icr: {{vcpu: 0, value: 0x500, dest: 1}}\n")
    assert err.line == 4 and "not both" in err.reason


def test_bool_as_a_vcpu_number():
    text = "name: a\nsteps:\n  - observe:\n      vcpus: [0, 1]\n"
    err = error_of(text + "      expect: {true: {mp_state: 0}}\n")
    assert "key it by vCPU number" in err.reason
    assert "integer" in error_of("name: a\nsteps:\n  - observe: [true]\n").reason


# --- accepted at load time, failing later as an internal error ---------------------------------


@pytest.mark.parametrize("step", ["{observe: 1}", "{set_lapic: 1}", "{nmi: 1}", "{smi: 1}"])
def test_unsupported_step_inside_concurrently(step):
    text = f"""\
name: a
{STEPPER}steps:
  - concurrently:
      - thread: host
        steps: [{step}]
      - thread: 1
        steps: [{{hlt: 1}}]
"""
    err = error_of(text)
    assert err.line == 6 and "cannot run inside a concurrently block" in err.reason


def test_two_concurrently_blocks():
    block = """\
  - concurrently:
      - {thread: host, steps: [{get_mp_state: 1}]}
      - {thread: 1, steps: [{hlt: 1}]}
"""
    err = error_of(f"name: a\n{STEPPER}steps:\n{block}{block}")
    assert err.line == 7
    assert "only one concurrently block per trace (the first is at line 4)" in err.reason


def test_expect_after_a_concurrently_block_is_refused():
    text = f"""\
name: a
{STEPPER}steps:
  - concurrently:
      - {{thread: host, steps: [{{get_mp_state: 1}}]}}
      - {{thread: 1, steps: [{{hlt: 1}}]}}
  - observe: {{vcpu: 1, expect: {{mp_state: 0}}}}
"""
    assert "never checked" in error_of(text).reason


def test_smp_boot_twice():
    text = "name: a\nsetup: {vcpus: 2, guest: smp-boot}\nsteps:\n  - smp_boot: {}\n"
    err = error_of(text + "  - smp_boot: {}\n")
    assert err.line == 5 and "only one smp_boot per trace (the first is at line 4)" in err.reason


# --- files and directories ---------------------------------------------------------------------

GOOD = "name: good\nsteps: [{observe: 0}]\n"


def test_a_bad_file_does_not_abort_a_directory(tmp_path):
    (tmp_path / "a-mixed.yaml").write_text("name: a\n1: x\nsteps: [{observe: 0}]\n")
    (tmp_path / "b-deep.yaml").write_text("name: b\nsteps: " + "[" * 1000 + "\n")
    (tmp_path / "c-dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / "d-loop.yaml").symlink_to(tmp_path / "d-loop.yaml")
    (tmp_path / "z-good.yaml").write_text(GOOD)
    traces, errors = load_traces([str(tmp_path)])
    assert [t.name for t in traces] == ["good"]
    reasons = {os.path.basename(e.path): e.reason for e in errors}
    assert set(reasons) == {"a-mixed.yaml", "b-deep.yaml", "c-dangling.yaml", "d-loop.yaml"}
    assert reasons["c-dangling.yaml"] == "dangling symbolic link"
    assert reasons["d-loop.yaml"] == "symbolic link loop"
    assert all(e.line == 1 or e.line == 2 for e in errors)


def test_missing_path_is_one_error_among_others(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    traces, errors = load_traces([str(tmp_path / "missing.yaml"), str(good)])
    assert [t.name for t in traces] == ["good"] and len(errors) == 1


def test_directory_link_loop_is_reported_and_not_followed(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.yaml").write_text(GOOD)
    (tmp_path / "sub" / "up").symlink_to(tmp_path)
    traces, errors = load_traces([str(tmp_path)])
    assert [t.name for t in traces] == ["good"]
    assert [e.reason for e in errors] == ["symbolic link loop (back to a directory above)"]


def test_unreadable_subdirectory_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    traces, errors = load_traces([str(tmp_path)])
    assert [t.name for t in traces] == ["good"]
    assert len(errors) == 1 and "cannot read directory: Permission denied" in str(errors[0])


def test_unreadable_file_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "t.yaml"
    path.write_text(GOOD)
    real = os.open

    def refuse(name, *args, **kwargs):
        if os.fspath(name) == str(path):
            raise PermissionError(13, "Permission denied", name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(TraceError, match="cannot read: Permission denied"):
        load_trace(str(path))


def test_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert load_in_child(str(fifo)) == "TraceError 1 not a regular file (a FIFO)"


def test_link_to_dev_zero_is_not_read(tmp_path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    assert load_in_child(str(link)) == "TraceError 1 not a regular file (a character device)"


def test_file_size_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(TraceError, match="larger than the 1 MiB limit"):
        load_trace(str(big))


# --- the command line --------------------------------------------------------------------------


def kvmtest(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", *args], capture_output=True, text=True, timeout=120
    )


def test_json_exit_code_is_the_process_exit_code(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\nsteps: []\n")
    (tmp_path / "good.yaml").write_text(GOOD)
    result = kvmtest("run", "--backend", "reference", "--format", "json", str(tmp_path))
    assert result.returncode == 2
    assert json.loads(result.stdout)["exit_code"] == 2


def test_list_and_explore_report_bad_files_cleanly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\nsteps:\n  - observe: {vcpu: 0, fields: [[rip]]}\n")
    race = os.path.join(os.path.dirname(load_traces.__code__.co_filename), "corpus")
    listing = kvmtest("list", str(bad))
    assert listing.returncode == 2 and f"{bad}:3: " in listing.stderr
    assert "Traceback" not in listing.stderr
    explore = kvmtest("explore", str(bad), f"{race}/race-hlt-init-sipi.yaml")
    assert explore.returncode == 2 and f"{bad}:3: " in explore.stderr
    assert "Traceback" not in explore.stderr
    assert "schedules" in explore.stdout or "interleavings" in explore.stdout, explore.stdout
