"""`kvmtest check`: is every observation of a recording one the model allows, and which of the
VMM's actions are hazards? No KVM needed.

The recording runs on the simulated system (kvmtest.sim) step by step. At each `observe` the
values the VMM saw (its `expect`) are compared with the model's prediction:

- a value the model does not know (GUEST: the vCPU ran guest code) is not compared;
- a value that differs, where guest code ran somewhere in the VM, may be the guest's doing: an
  INIT or SIPI its code sent (from any vCPU that ran guest code before, even if the VMM has
  since written its registers back: QEMU does after each register query), or a HLT. The
  checker looks for a short sequence of such guest actions (at most MAX_GUEST_ACTIONS) that
  leads the model to exactly what the VMM saw; if one exists the observation is explained,
  and the model continues from there;
- otherwise the observation is one the model does not allow after what the VMM did before it:
  a finding, with the step, the value seen and the values allowed.

Before each host-side action the checker asks whether it is a known VMM hazard (HAZARDS), with
the rule of docs/semantics.md that makes it one.

Return values (a step's `result`, what the recorded ioctl returned): where the model predicts
one (every host-side action it performs: 0 or -errno, KVM_SIGNAL_MSI's count, whether
KVM_SET_MSRS took IA32_APIC_BASE) the two must agree: `unexpected-result` otherwise. When KVM
refused what the model accepts, the model goes on as KVM did, without the action. A GET the
model has succeed on every created vCPU, so a failed one is `failed-read`.
"""

from __future__ import annotations

import errno
from collections import deque
from dataclasses import dataclass, field

import reference
from kvmtest import ops as f
from kvmtest.rules import link
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.system import System
from reference import GUEST, MpState

MAX_GUEST_ACTIONS = 4
RUN, UNINIT, INIT_RECEIVED, HALTED = (
    int(MpState.RUNNABLE),
    int(MpState.UNINITIALIZED),
    int(MpState.INIT_RECEIVED),
    int(MpState.HALTED),
)
SIPI_RECEIVED = f.MP_STATES["SIPI_RECEIVED"]

# name -> (title, rules)
HAZARDS = {
    "late-set-mp-state": (
        "KVM_SET_MP_STATE strands a vCPU that had left wait-for-SIPI",
        ("26", "12"),
    ),
    "set-mp-state-sipi-received": ("KVM_SET_MP_STATE(SIPI_RECEIVED)", ("25", "28")),
    "cancels-latched-init": (
        "KVM_SET_VCPU_EVENTS cancels a pending INIT (VALID_SMM, latched_init = 0)",
        ("31",),
    ),
    "set-sregs-unhalts-bsp": ("KVM_SET_SREGS makes a halted or waiting BSP runnable", ("42",)),
    "loses-pending-event": ("a host-side action drops a pending INIT or SIPI", ("27", "31")),
    "unexplained-observation": (
        "the VMM saw a value the model does not allow after what it did before",
        ("24",),
    ),
    "unexpected-result": (
        "an ioctl returned what the model does not give after what the VMM did before",
        (),  # the rule depends on the ioctl: RESULT_RULES
    ),
    "failed-read": ("a GET ioctl failed where the model has it succeed", ()),
}

# The ioctl a step stands for, and the rules behind its return value where one says it.
IOCTL_OF = {
    "set_mp_state": "KVM_SET_MP_STATE",
    "set_regs": "KVM_SET_REGS",
    "set_sregs": "KVM_SET_SREGS",
    "set_vcpu_events": "KVM_SET_VCPU_EVENTS",
    "set_lapic": "KVM_SET_LAPIC",
    "set_msrs": "KVM_SET_MSRS",
    "msi": "KVM_SIGNAL_MSI",
    "smi": "KVM_SMI",
    "nmi": "KVM_NMI",
}
RESULT_RULES = {"set_mp_state": ("28",), "msi": ("39",), "set_lapic": ("36",)}
READ_IOCTL = {
    "mp_state": "KVM_GET_MP_STATE",
    "regs": "KVM_GET_REGS",
    "sregs": "KVM_GET_SREGS",
    "events": "KVM_GET_VCPU_EVENTS",
    "lapic": "KVM_GET_LAPIC",
    "msrs": "KVM_GET_MSRS",
}


@dataclass
class Finding:
    name: str  # a key of HAZARDS
    step: int  # 0-based
    location: str
    vcpu: int | None
    message: str
    at: float | None = None
    tid: int | None = None
    field: str = ""  # unexplained-observation: the field; hazards: ""
    expected: object = None  # what the model allows
    observed: object = None  # what the VMM saw or did
    rule_list: tuple = ()  # the rules, where HAZARDS leaves them to the finding

    @property
    def title(self) -> str:
        return HAZARDS[self.name][0]

    @property
    def rules(self) -> tuple:
        return HAZARDS[self.name][1] or self.rule_list

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "step": self.step + 1,
            "location": self.location,
            "vcpu": self.vcpu,
            "at": self.at,
            "tid": self.tid,
            "field": self.field or None,
            "expected": _jsonable(self.expected),
            "observed": _jsonable(self.observed),
            "message": self.message,
            "rules": [{"rule": r, "anchor": link(r)} for r in self.rules],
        }


@dataclass
class CheckResult:
    trace: f.Trace
    profile: str
    findings: list = field(default_factory=list)
    observations: int = 0  # observe steps
    compared: int = 0  # values compared with the model
    not_compared: int = 0  # values the model does not know (GUEST)
    explained: list = field(default_factory=list)  # (step, location, vcpu, "INIT, SIPI, ran")

    @property
    def clean(self) -> bool:
        return not self.findings


def check_trace(trace: f.Trace, profile="mainline", flavour: str = "vmx", smm: bool = False):
    """Run a recording on the model; return its CheckResult."""
    profile_obj = reference.get_profile(profile)
    system = System(trace.setup, profile_obj, flavour, None, smm)
    result = CheckResult(trace, profile_obj.name)
    seq = Sequential(system)
    ran: set = set()  # vCPUs that ran guest code at some point: possible INIT/SIPI senders
    for index, step in enumerate(trace.steps):
        ran |= _guest_live(system.machine)
        if step.kind == "observe":
            if step.result is not None and step.result < 0:
                result.findings.append(_failed_read(result, index, step))
            system = _observe(result, seq, system, index, step, ran)
            seq = Sequential(system)
            continue
        if step.kind == "concurrently":
            raise ValueError("a recording has no concurrently block")
        before = system.clone()
        _hazards_before(result, system.machine, index, step)
        predicted = seq.perform(step)
        _hazards_after(result, before.machine, system.machine, index, step)
        if _result_differs(result, index, step, predicted) and step.result < 0:
            system = before  # KVM refused it: go on as KVM did, without the action
            seq = Sequential(system)
    return result


# ------------------------------------------------------------------ return values


def _result_differs(result: CheckResult, index: int, step, predicted: dict) -> bool:
    """Compare the recorded return value with the model's; a finding if they differ."""
    if step.result is None or step.kind not in IOCTL_OF:
        return False
    vcpu = getattr(step, "vcpu", None)
    want = predicted.get((vcpu, "result"))
    if want is None or want is GUEST:
        return False
    result.compared += 1
    if want == step.result:
        return False
    what = IOCTL_OF[step.kind]
    if step.kind == "set_mp_state":
        what += f"({f.MP_STATE_NAMES.get(step.state, step.state)})"
    elif step.kind == "set_msrs":
        what += f" of IA32_APIC_BASE = {step.values[0][1]:#x}"
    on = f" on vCPU {vcpu}" if vcpu is not None else ""
    message = (
        f"{what}{on} returned {_show_result(step.kind, step.result)}; after what the VMM did "
        f"before it the model has it return {_show_result(step.kind, want)}"
    )
    if step.result < 0:
        message += " (the check goes on as if it had not been made, as KVM did)"
    result.findings.append(
        Finding(
            "unexpected-result",
            index,
            result.trace.location(step),
            vcpu,
            message,
            step.at,
            step.tid,
            "result",
            want,
            step.result,
            RESULT_RULES.get(step.kind, ()),
        )
    )
    return True


def _failed_read(result: CheckResult, index: int, step) -> Finding:
    vcpu, read = step.vcpus[0], step.read[0]
    message = (
        f"{READ_IOCTL[read]} of vCPU {vcpu} failed with {_show_result('', step.result)}; the "
        "model has every read of a created vCPU succeed"
    )
    return Finding(
        "failed-read",
        index,
        result.trace.location(step),
        vcpu,
        message,
        step.at,
        step.tid,
        "result",
        0,
        step.result,
    )


def _show_result(kind: str, value: int) -> str:
    if value < 0:
        return f"-{errno.errorcode.get(-value, str(-value))} ({value})"
    if kind == "set_msrs":
        return f"{value} (IA32_APIC_BASE {'taken' if value else 'refused'})"
    if kind == "msi":
        return f"{value} (LAPICs that accepted it)"
    return str(value)


# ------------------------------------------------------------------ observations


def _observe(result: CheckResult, seq: Sequential, system: System, index: int, step, ran: set):
    result.observations += 1
    before = system.clone()
    predicted = seq.perform(step)
    wrong = {}
    live = _guest_live(before.machine)
    for vcpu, pins in step.expect.items():
        for name, seen in pins.items():
            want = predicted.get((vcpu, name))
            if want is GUEST:
                result.not_compared += 1
                continue
            if vcpu in live and name in GUEST_WRITABLE:
                result.not_compared += 1  # the guest may have written it: take what was seen
                _take(system, vcpu, name, seen)
                continue
            result.compared += 1
            if want != seen:
                wrong[(vcpu, name)] = (want, seen)
    if not wrong:
        return system
    vcpu = step.vcpus[0]
    found = _explain(before, step, vcpu, ran)
    if found is not None:
        explained_system, actions = found
        result.explained.append((index, result.trace.location(step), vcpu, ", ".join(actions)))
        return explained_system
    for (v, name), (want, seen) in sorted(wrong.items(), key=lambda kv: kv[0][1]):
        result.findings.append(_unexplained(result, system, index, step, v, name, want, seen, ran))
    _adopt(system, step)
    return system


# What a vCPU's own guest code writes (xAPIC MMIO, WRMSR): unknown once it ran, and taken
# from what the VMM saw.
GUEST_WRITABLE = {"lapic.ldr", "lapic.dfr", "lapic.spiv", "msr.apic_base"}


def _take(system: System, vcpu: int, name: str, value: int) -> None:
    m = system.machine
    try:
        if name == "msr.apic_base":
            m.set_apic_base(vcpu, value)
        else:
            m.set_lapic(vcpu, **{name.split(".")[1]: value})
    except reference.ModelError:
        pass


def _guest_live(machine) -> set:
    """vCPUs that ran guest code (the model no longer knows their registers)."""
    return {v.index for v in machine.vcpus if v.regs["rip"] is GUEST}


def _explain(before: System, step, target: int, ran: set = frozenset()):
    """A shortest sequence of guest actions after which the observation shows what the VMM
    saw, with the system after the observation; None if there is none. `ran`: vCPUs that ran
    guest code earlier (senders too)."""
    if not ran | _guest_live(before.machine):
        return None  # no guest code ran anywhere: nothing but the VMM acted
    queue = deque([(before, ())])
    seen = {before.key()}
    while queue:
        system, actions = queue.popleft()
        if actions:
            trial = system.clone()
            predicted = Sequential(trial).perform(step)
            if all(
                predicted.get((v, n)) is GUEST or predicted.get((v, n)) == value
                for v, pins in step.expect.items()
                for n, value in pins.items()
            ):
                return trial, list(actions)
        if len(actions) >= MAX_GUEST_ACTIONS:
            continue
        for label, apply in _guest_actions(system, target, ran):
            nxt = system.clone()
            try:
                if apply(nxt) is False:
                    continue
            except reference.ModelError:
                continue
            key = nxt.key()
            if key not in seen:
                seen.add(key)
                queue.append((nxt, actions + (label,)))
    return None


def _guest_actions(system: System, target: int, ran: set = frozenset()):
    m = system.machine
    senders = sorted((ran | _guest_live(m)) - {target})
    t = m.vcpus[target]
    dest = t.xapic_id << 56
    for s in senders[:1]:  # which running vCPU sent it does not change the target
        yield (
            f"INIT from vCPU {s}'s guest",
            lambda sy, s=s: sy.machine.icr_write(s, dest | 0x4500, False) or None,
        )
        yield (
            f"SIPI from vCPU {s}'s guest",
            lambda sy, s=s: sy.machine.icr_write(s, dest | 0x4600 | 0x10, False) or None,
        )

    def run(sy, halt: bool):
        mm = sy.machine
        for _ in range(3):  # from U: block, process, -EAGAIN, enter again (rule 29)
            status = mm.enter_run(target)
            if status is reference.RunResult.RUNS:
                break
            if status is reference.RunResult.BLOCKED:
                mm.kick_out(target)
                return False
        else:
            return False
        mm.guest_runs(target)
        if halt:
            mm.guest_hlt(target)
        mm.kick_out(target)
        return None

    def wake(sy):
        mm = sy.machine
        if mm.vcpus[target].mp_state != HALTED or target not in _guest_live(mm):
            return False
        mm.set_mp_state(target, RUN)  # an interrupt the model does not track ended the HLT
        return None

    yield (f"vCPU {target} ran guest code", lambda sy: run(sy, False))
    yield (f"vCPU {target}'s guest executed HLT", lambda sy: run(sy, True))
    yield (f"an interrupt woke vCPU {target} from HLT", wake)


def _adopt(system: System, step) -> None:
    """After an unexplained mp_state, go on from what the VMM saw (one finding, not a cascade)."""
    for vcpu, pins in step.expect.items():
        if "mp_state" in pins:
            try:
                system.machine.set_mp_state(vcpu, pins["mp_state"])
            except reference.ModelError:
                pass


def _unexplained(result, system, index, step, vcpu, name, want, seen, ran) -> Finding:
    read = step.read[0]
    ioctl = {
        "mp_state": "KVM_GET_MP_STATE",
        "regs": "KVM_GET_REGS",
        "sregs": "KVM_GET_SREGS",
        "events": "KVM_GET_VCPU_EVENTS",
        "lapic": "KVM_GET_LAPIC",
        "msrs": "KVM_GET_MSRS",
    }[read]
    live = ran | _guest_live(system.machine)
    why = (
        "no guest code ran in the VM before it, so nothing but the VMM's own steps can explain it"
        if not live
        else f"no INIT, SIPI or HLT of the guest (up to {MAX_GUEST_ACTIONS}) explains it either"
    )
    message = (
        f"{ioctl} of vCPU {vcpu} showed {name} = {_show(name, seen)}; after what the VMM did "
        f"before it the model allows only {_show(name, want)}: {why}"
    )
    return Finding(
        "unexplained-observation",
        index,
        result.trace.location(step),
        vcpu,
        message,
        step.at,
        step.tid,
        name,
        want,
        seen,
    )


# ------------------------------------------------------------------ hazards


def _hazards_before(result: CheckResult, m, index: int, step) -> None:
    kind = step.kind
    loc = result.trace.location(step)

    def add(name, vcpu, message, observed=None):
        result.findings.append(
            Finding(name, index, loc, vcpu, message, step.at, step.tid, observed=observed)
        )

    if kind == "set_mp_state":
        v = m.vcpus[step.vcpu]
        name = f.MP_STATE_NAMES.get(step.state, step.state)
        if step.state == SIPI_RECEIVED:
            add(
                "set-mp-state-sipi-received",
                step.vcpu,
                f"KVM_SET_MP_STATE(SIPI_RECEIVED) on vCPU {step.vcpu}: KVM stores "
                "INIT_RECEIVED and a pending SIPI that uses whatever sipi_vector holds (rule "
                "25), and from 6.17 KVM_RUN refuses a vCPU left in SIPI_RECEIVED (rule 28, "
                "d.3); set the vector with KVM_SET_VCPU_EVENTS first, or send a real SIPI",
                name,
            )
        elif step.state in (UNINIT, INIT_RECEIVED) and v.mp_state in (RUN, HALTED):
            if v.regs["rip"] is GUEST:
                add(
                    "late-set-mp-state",
                    step.vcpu,
                    f"KVM_SET_MP_STATE({name}) on vCPU {step.vcpu}, which had already left "
                    f"wait-for-SIPI and ran guest code (the model: "
                    f"{_state(v.mp_state)}, registers the guest's): KVM writes only the label "
                    "and never resets the registers (rule 26); the vCPU now waits for an INIT "
                    "and SIPI (rule 12) that its guest, which already brought it up, will not "
                    "send again",
                    name,
                )
    elif kind == "set_vcpu_events":
        v = m.vcpus[step.vcpu]
        if step.latched_init == 0 and v.pending_init:
            add(
                "cancels-latched-init",
                step.vcpu,
                f"KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM and smi.latched_init = 0 on "
                f"vCPU {step.vcpu} while an INIT is pending: the INIT is cancelled (rule 31); a "
                "VMM restoring events must write back the latched_init it read",
                "latched_init=0",
            )


def _hazards_after(result: CheckResult, before, after, index: int, step) -> None:
    loc = result.trace.location(step)
    vcpu = getattr(step, "vcpu", None)
    if step.kind == "set_sregs" and vcpu is not None:
        was, now = before.vcpus[vcpu].mp_state, after.vcpus[vcpu].mp_state
        if was != RUN and now == RUN:
            result.findings.append(
                Finding(
                    "set-sregs-unhalts-bsp",
                    index,
                    loc,
                    vcpu,
                    f"KVM_SET_SREGS on the BSP (vCPU {vcpu}) with the reset CS, RIP at the "
                    f"reset vector and CR0.PE = 0 made it RUNNABLE (it was {_state(was)}): "
                    "KVM unhalts a BSP at the reset vector (rule 42); a VMM that restores a "
                    "halted BSP there must write its mp_state after the sregs",
                    step.at,
                    step.tid,
                    observed=f"{_state(was)} -> RUNNABLE",
                )
            )
    if step.kind in ("set_vcpu_events", "guest_ran", "msi"):
        return  # their own effect on pending events is the point (or a hazard above)
    for v_before, v_after in zip(before.vcpus, after.vcpus, strict=True):
        lost = [
            what
            for what, a, b in (
                ("INIT", v_before.pending_init, v_after.pending_init),
                ("SIPI", v_before.pending_sipi, v_after.pending_sipi),
            )
            if a and not b
        ]
        processed = v_before.mp_state != v_after.mp_state or v_before.regs != v_after.regs
        if lost and not processed:
            result.findings.append(
                Finding(
                    "loses-pending-event",
                    index,
                    loc,
                    v_before.index,
                    f"{step.kind} dropped the pending {' and '.join(lost)} of vCPU "
                    f"{v_before.index} without processing it",
                    step.at,
                    step.tid,
                )
            )


def _state(value) -> str:
    return f.MP_STATE_NAMES.get(int(value), str(value))


def _show(name: str, value) -> str:
    if name == "mp_state" and isinstance(value, int):
        return f.MP_STATE_NAMES.get(value, str(value))
    if isinstance(value, int):
        return hex(value) if value > 9 else str(value)
    return str(value)


def _jsonable(value):
    return value if isinstance(value, (int, str, bool, float)) or value is None else str(value)
