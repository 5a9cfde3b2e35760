"""kvmtest record / check / replay: the recorder's filter, the conversion, the checker on
recordings of QEMU (fixtures: no KVM needed), edited recordings it must flag, and live
recordings where QEMU and KVM are there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmtest import ops as f
from kvmtest.record import bpf
from kvmtest.record.check import check_trace
from kvmtest.record.ioctls import BY_NAME, IOCTLS, KVM_RUN, RECORDED
from kvmtest.record.report import render_check
from kvmtest.trace import dump_trace, load_trace, parse_trace

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parent))  # qmp_loop, clients

import clients  # noqa: E402
from clients import CLIENTS  # noqa: E402

RECORDINGS = sorted(FIXTURES.glob("*.yaml"))
X86_64 = bpf.AUDIT_ARCH_X86_64


def test_ioctl_numbers_are_the_kernels():
    assert BY_NAME["KVM_GET_MP_STATE"].request == 0x8004AE98
    assert BY_NAME["KVM_SET_VCPU_EVENTS"].request == 0x4040AEA0
    assert BY_NAME["KVM_SET_SREGS2"].request == 0x4140AECD
    assert KVM_RUN == 0xAE80


def test_each_request_encodes_its_layouts_size():
    from kvmtest.record.ioctls import layout_of

    for info in IOCTLS.values():
        if info.layout is not None:
            size = 8 if info.layout == "kvm_msrs" else layout_of(info).sizeof()
            assert info.size == size, info.name


KVM_IRQ_LINE_STATUS, KVM_CHECK_EXTENSION = 0xC008AE67, 0xAE03


@pytest.mark.parametrize("all_ioctls", [False, True])
def test_the_filter_traces_kvm_ioctls_only(all_ioctls):
    prog = bpf.program(all_ioctls)
    trace, allow = bpf.SECCOMP_RET_TRACE, bpf.SECCOMP_RET_ALLOW
    for request in RECORDED:
        assert bpf.run(prog, 16, X86_64, request) == trace, hex(request)
    assert bpf.run(prog, 16, X86_64, 0xAE01) == trace  # KVM_CREATE_VM
    assert bpf.run(prog, 16, X86_64, 0x5401) == allow  # TCGETS
    assert bpf.run(prog, 0, X86_64, BY_NAME["KVM_GET_MP_STATE"].request) == allow  # read()
    assert bpf.run(prog, 16, 0x40000003, 0xAE98) == allow  # i386
    assert bpf.run(prog, 16, X86_64, KVM_RUN) == (trace if all_ioctls else allow)
    # KVM ioctls no step stands for run without a stop, unless all_ioctls
    for request in (KVM_IRQ_LINE_STATUS, KVM_CHECK_EXTENSION):
        assert bpf.run(prog, 16, X86_64, request) == (trace if all_ioctls else allow)


def test_run_watch_marks_a_vcpu_when_its_kvm_run_shows_a_new_exit():
    from kvmtest.record.tracer import RUN_EXIT_AREA, RunWatch

    area = bytearray(RUN_EXIT_AREA[1])  # the VMM's memory: a zeroed kvm_run from exit_reason

    def read(tgid, address, size):
        start = address - 0x1000 - RUN_EXIT_AREA[0]
        return bytes(area[start : start + size])

    watch = RunWatch()
    watch.add((0, 0), 1, 0)
    del watch.wanted[(0, 0)]  # as the first look leaves it once /proc/1/maps showed the page
    watch.pages[(0, 0)] = (1, 0x1000)
    assert not watch.moved((0, 0), read)  # never ran: the page is as KVM created it
    area[0:4] = (2).to_bytes(4, "little")  # KVM_EXIT_IO
    assert watch.moved((0, 0), read)
    assert not watch.moved((0, 0), read)  # the same exit: nothing new
    area[8 + 3] ^= 1  # the exit union changes (another port)
    assert watch.moved((0, 0), read)
    assert not watch.moved((1, 0), read)  # a vCPU it does not know


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_recordings_load_back_equal_and_check_clean(path):
    trace = load_trace(str(path))
    again = parse_trace(dump_trace(trace))
    assert again == trace
    notes = [(s.at, s.tid, s.result) for s in trace.steps]  # annotations: not in ==
    assert [(s.at, s.tid, s.result) for s in again.steps] == notes
    assert all(s.at is not None and s.tid is not None for s in trace.steps)
    result = check_trace(trace)
    assert result.clean, render_check([result])
    assert result.observations > 0 and result.compared > 0


def test_the_qmp_recording_needs_the_guest_to_explain_the_aps():
    result = check_trace(load_trace(str(FIXTURES / "qemu-smp-bios-qmp-smp4.yaml")))
    assert any("INIT from vCPU 0's guest, SIPI" in a for *_, a in result.explained)


def _edited(path, index, step):
    trace = load_trace(str(path))
    steps = list(trace.steps)
    steps.insert(index, step)
    return parse_trace(dump_trace(trace.__class__(**{**trace.__dict__, "steps": tuple(steps)})))


def test_a_late_set_mp_state_is_flagged():
    path = FIXTURES / "qemu-smp-bios-qmp-smp4.yaml"
    trace = load_trace(str(path))
    after = next(
        i
        for i, s in enumerate(trace.steps)
        if s.kind == "observe" and s.expect.get(1, {}).get("mp_state") == f.MP_STATES["HALTED"]
    )
    edited = _edited(path, after + 1, f.SetMpState(1, f.MP_STATES["UNINITIALIZED"]))
    result = check_trace(edited)
    names = [x.name for x in result.findings]
    assert "late-set-mp-state" in names
    finding = next(x for x in result.findings if x.name == "late-set-mp-state")
    assert finding.step == after + 1 and finding.vcpu == 1
    assert "had already left wait-for-SIPI" in finding.message
    assert "docs/semantics.md#rule-26" in render_check([result])


def _replaced(path, index, step):
    trace = load_trace(str(path))
    steps = list(trace.steps)
    steps[index] = step
    return parse_trace(dump_trace(trace.__class__(**{**trace.__dict__, "steps": tuple(steps)})))


QMP = FIXTURES / "qemu-smp-bios-qmp-smp4.yaml"


def test_every_step_that_is_an_ioctl_has_its_result():
    for path in RECORDINGS:
        trace = load_trace(str(path))
        for step in trace.steps:
            if step.kind == "guest_ran":
                assert step.result is None
            elif step.kind != "set_msrs":  # a set_msrs that SET_SREGS implies has none
                assert step.result is not None, (path.name, step)


def test_a_set_mp_state_the_model_rejects_must_have_failed():
    trace = load_trace(str(QMP))
    at = max(i for i, s in enumerate(trace.steps) if s.kind == "set_mp_state") + 1
    # 7, OPERATING (s390's), is outside x86's whitelist (rule 28)
    step = f.SetMpState(1, 7, at=1.5, tid=42, result=0)
    result = check_trace(_edited(QMP, at, step))
    (finding,) = [x for x in result.findings if x.name == "unexpected-result"]
    assert finding.step == at and finding.vcpu == 1
    assert finding.message == (
        "KVM_SET_MP_STATE(OPERATING) on vCPU 1 returned 0; after what the VMM did before it the "
        "model has it return -EINVAL (-22)"
    )
    assert "docs/semantics.md#rule-28" in render_check([result])
    failed = check_trace(_edited(QMP, at, f.SetMpState(1, 7, result=-22)))
    assert "unexpected-result" not in [x.name for x in failed.findings]


def test_a_refused_ioctl_the_model_accepts_is_flagged_and_undone():
    trace = load_trace(str(QMP))
    at = next(i for i, s in enumerate(trace.steps) if s.kind == "set_mp_state" and s.vcpu == 0)
    old = trace.steps[at]
    edited = _replaced(QMP, at, f.SetMpState(0, old.state, at=old.at, tid=old.tid, result=-16))
    result = check_trace(edited)
    (finding,) = result.findings
    assert finding.name == "unexpected-result" and finding.step == at
    assert finding.message == (
        "KVM_SET_MP_STATE(RUNNABLE) on vCPU 0 returned -EBUSY (-16); after what the VMM did "
        "before it the model has it return 0 (the check goes on as if it had not been made, as "
        "KVM did)"
    )


def test_a_failed_get_is_flagged():
    trace = load_trace(str(QMP))
    at = next(i for i, s in enumerate(trace.steps) if s.kind == "observe" and s.vcpus == (2,))
    old = trace.steps[at]
    failed = f.Observe(old.vcpus, old.read, None, {}, at=old.at, tid=old.tid, result=-14)
    result = check_trace(_replaced(QMP, at, failed))
    (finding,) = result.findings
    assert finding.name == "failed-read" and finding.vcpu == 2
    assert finding.location.endswith(f":{_line_of(QMP, at)}")
    ioctl = {"events": "KVM_GET_VCPU_EVENTS", "mp_state": "KVM_GET_MP_STATE"}[old.read[0]]
    assert finding.message == (
        f"{ioctl} of vCPU 2 failed with -EFAULT (-14); the model has every read of a created "
        "vCPU succeed"
    )


def _line_of(path, index):
    return load_trace(str(path)).steps[index].line


@pytest.mark.parametrize(
    "value, message",
    [("x", "result must be an integer"), (-5000, "result = -5000 is out of range")],
)
def test_a_bad_result_is_a_clear_error(value, message):
    from kvmtest.trace import TraceError

    text = f"name: r\nsetup: {{vcpus: 2}}\nsteps:\n  - nmi: 0\n    result: {value}\n"
    with pytest.raises(TraceError, match=message):
        parse_trace(text, "bad.yaml")


@pytest.mark.parametrize("result, step_result", [(2, 1), (1, 0), (0, None)])
def test_set_msrs_says_whether_kvm_took_apic_base(result, step_result):
    from kvmtest.kvm import layouts as L
    from kvmtest.record.convert import to_trace
    from kvmtest.record.tracer import Event, Recording

    entries = [{"index": 0x10, "reserved": 0, "data": 5}, {"index": 0x1B, "reserved": 0,
               "data": 0xFEE00900}]  # fmt: skip
    msrs = L.kvm_msrs.parse(L.kvm_msrs.build({"nmsrs": 2, "pad": 0, "entries": entries}))
    rec = Recording(["vmm"], vcpus={0: 1})
    rec.events = [
        Event(0.1, 7, "KVM_SET_MSRS", 0, 0, msrs, None, result),
        Event(0.2, 7, "KVM_SET_MP_STATE", 0, 0, L.kvm_mp_state.parse(bytes(4)), None, 0),
    ]
    steps = [s for s in to_trace(rec).steps if s.kind == "set_msrs"]
    if step_result is None:  # KVM stopped before IA32_APIC_BASE: not tried, no step
        assert steps == []
    else:
        (step,) = steps
        assert step.values == (("apic_base", 0xFEE00900),) and step.result == step_result


def test_the_qmp_recording_has_a_round_of_gets_per_query():
    """qmp_loop.py sends ROUNDS register queries; each must be a KVM_GET_REGS on every vCPU
    after the guest ran (docs: why QEMU reads only when its copy is stale)."""
    import qmp_loop

    trace = load_trace(str(QMP))
    assert _register_reads(trace) == [qmp_loop.ROUNDS] * trace.setup.vcpus
    first = next(i for i, s in enumerate(trace.steps) if s.kind == "guest_ran")
    reads = [s for s in trace.steps[first:] if s.kind == "observe" and s.read == ("regs",)]
    times = sorted({round(s.at, 1) for s in reads})
    assert len(times) >= qmp_loop.ROUNDS  # the rounds are apart in time, not one burst


def _register_reads(trace) -> list:
    """KVM_GET_REGS per vCPU after guest code first ran (the reset's reads come before)."""
    first = next(i for i, s in enumerate(trace.steps) if s.kind == "guest_ran")
    reads = [s.vcpus for s in trace.steps[first:] if s.kind == "observe" and s.read == ("regs",)]
    return [reads.count((v,)) for v in range(trace.setup.vcpus)]


DROPPED_SIPI = """\
name: recording-host-bringup
pinned_profiles: []
setup: {vcpus: 2, sync_apic_map: true}
steps:
  - msi: {dest: 1, delivery: init}
  - msi: {dest: 1, delivery: sipi, vector: 0x10}
  - observe: {vcpu: 1, read: [mp_state], expect: {mp_state: RUNNABLE}}
"""


SIPI_LINE = "  - msi: {dest: 1, delivery: sipi, vector: 0x10}\n"


def test_a_dropped_sipi_is_flagged():
    assert check_trace(parse_trace(DROPPED_SIPI)).clean
    dropped = DROPPED_SIPI.replace(SIPI_LINE, "")
    result = check_trace(parse_trace(dropped, "dropped.yaml"))
    (finding,) = result.findings
    assert finding.name == "unexplained-observation"
    assert finding.location == "dropped.yaml:6"
    assert finding.message.startswith(
        "KVM_GET_MP_STATE of vCPU 1 showed mp_state = RUNNABLE; after what the VMM did before "
        "it the model allows only INIT_RECEIVED"
    )


@pytest.mark.parametrize(
    "steps, name",
    [
        (["set_mp_state: {vcpu: 1, state: SIPI_RECEIVED}"], "set-mp-state-sipi-received"),
        (
            ["msi: {dest: 1, delivery: init}", "set_vcpu_events: {vcpu: 1, latched_init: 0}"],
            "cancels-latched-init",
        ),
        (
            ["set_mp_state: {vcpu: 0, state: HALTED}", "set_sregs: {vcpu: 0, cs.selector: 0xf000}"],
            "set-sregs-unhalts-bsp",
        ),
    ],
)
def test_hazards_are_named(steps, name):
    text = "name: h\nsetup: {vcpus: 2}\nsteps:\n" + "".join(f"  - {s}\n" for s in steps)
    result = check_trace(parse_trace(text))
    assert name in [x.name for x in result.findings], render_check([result])


@pytest.mark.parametrize("fmt", ["text", "json", "ktap", "junit"])
def test_every_report_format(fmt):
    result = check_trace(parse_trace(DROPPED_SIPI.replace(SIPI_LINE, "")))
    out = render_check([result], fmt)
    assert "unexplained-observation" in out


def test_kvmtest_check_exit_codes(tmp_path):
    assert _kvmtest("check", str(QMP)).returncode == 0
    dropped = tmp_path / "dropped.yaml"
    dropped.write_text(DROPPED_SIPI.replace(SIPI_LINE, ""))
    done = _kvmtest("check", str(dropped))
    assert done.returncode == 1 and "unexplained-observation" in done.stdout
    missing = _kvmtest("check", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_a_failed_recording_leaves_the_output_as_it_was(tmp_path):
    earlier = tmp_path / "rec.yaml"
    earlier.write_text("an earlier recording\n")
    done = _kvmtest("record", "-o", str(earlier), "--", "true")  # no VM: nothing to write
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip() == "kvmtest record: the VMM created no VM with vCPUs: nothing to write"
    )
    assert earlier.read_text() == "an earlier recording\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rec.yaml"]  # no partial file left
    missing = _kvmtest("record", "-o", str(tmp_path / "no" / "rec.yaml"), "--", "true")
    assert missing.returncode == 2
    assert (
        missing.stderr
        == f"kvmtest record: {tmp_path / 'no' / 'rec.yaml'}: No such file or directory\n"
    )


# ------------------------------------------------------------------ live: QEMU on this host

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None and os.environ.get("KVMTEST_REQUIRE_KVM") != "1",
    reason="qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)",
)


def _kvmtest(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "kvmtest", *args], capture_output=True, text=True, **kwargs
    )


@pytest.mark.kvm
@needs_qemu
@pytest.mark.parametrize("client", CLIENTS)
def test_record_check_replay_a_real_client(tmp_path, kvm, client):
    """(a) SeaBIOS, (b) the smp image as -bios, (c) (b) under a QMP register-query loop:
    recorded, checked clean and replayed clean on this host."""
    import qmp_loop

    out = tmp_path / "rec.yaml"
    done, status = clients.record(client, tmp_path, out)
    assert done.returncode == status, done.stderr
    checked = check_trace(load_trace(str(out)))
    assert checked.clean, render_check([checked])
    if client == "qemu-smp-bios-qmp-smp4":  # a round of GETs per query
        assert _register_reads(load_trace(str(out))) == [qmp_loop.ROUNDS] * 4
    replay = _kvmtest("replay", str(out), timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr
