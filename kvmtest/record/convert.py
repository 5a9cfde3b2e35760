"""From a Recording (the VMM's KVM ioctls, decoded) to a trace in the project's format.

Host-side actions become steps, reads become `observe` steps with the values the VMM saw as
their `expect`, KVM_RUN becomes `guest_ran`; every step carries `at:` and `tid:`. The trace's
`pinned_profiles` is empty: the pins are what one kernel showed one VMM, judged by
`kvmtest check`, not hand-written expectations for `kvmtest run`.

Every step that is one ioctl carries what it returned as `result`, also a GET that failed (an
`observe` that pins nothing); `kvmtest check` compares it with the model.

What is not carried over (docs/traces.md, "Recordings"): MSRs other than IA32_APIC_BASE,
registers other than rip/rflags/rdx, LAPIC registers other than id/ldr/dfr/spiv, the vCPU
events other than the SIPI vector and the SMM fields, and every ioctl that is none of these.
"""

from __future__ import annotations

import os
import re

from kvmtest import ops as f

from .ioctls import (
    KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    KVM_VCPUEVENT_VALID_SMM,
    MSR_APIC_BASE,
    READS,
    STEP_IOCTLS,
)
from .tracer import Recording


def chosen_vm(rec: Recording) -> int | None:
    """The VM with vCPUs and the most recorded steps (a VMM may probe with throwaway VMs)."""
    counts: dict = {}
    for event in rec.events:
        if event.name in STEP_IOCTLS and event.vm is not None:
            counts[event.vm] = counts.get(event.vm, 0) + 1
    candidates = [vm for vm in counts if rec.vcpus.get(vm)]
    return max(candidates, key=lambda vm: (counts[vm], -vm)) if candidates else None


def trace_name(argv) -> str:
    base = os.path.basename(argv[0]) if argv else "vmm"
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "vmm"
    return f"recording-{name}"


def to_trace(rec: Recording, name: str | None = None) -> f.Trace:
    vm = chosen_vm(rec)
    if vm is None:
        raise ValueError("the VMM created no VM with vCPUs: nothing to write")
    steps = []
    apic_base: dict = {}  # vcpu -> IA32_APIC_BASE as last seen or set in the recording
    for event in rec.events:
        if event.vm != vm or event.name not in STEP_IOCTLS:
            continue
        if event.result < 0 and event.name in READS:
            steps += _failed_read(event)
            continue
        steps += _steps(event, apic_base)
    if not steps:
        raise ValueError("the VMM made no KVM ioctl that a trace step stands for")
    command = " ".join(rec.argv)
    others = sorted(v for v in rec.vcpus if v != vm)
    description = (
        f"Recorded by kvmtest record{' --all-ioctls' if rec.all_ioctls else ''} from: "
        f"{command}. {rec.stops} ptrace stops for KVM ioctls in {rec.duration:.2f} s; the "
        f"VMM exited with status {rec.exit_status}."
    )
    if rec.inference:
        description += f" guest_ran inferred from {rec.inference}."
    if others:
        description += f" Other VMs it created ({len(others)}) are not in this trace."
    return f.Trace(
        name=name or trace_name(rec.argv),
        setup=f.Setup(
            vcpus=rec.vcpus[vm],
            apic="xapic",
            irqchip="split" if vm in rec.split_irqchip else "kernel",
            guest="none",
            sync_apic_map=False,  # the VMM's own KVM_SET_LAPIC calls are in the trace
        ),
        steps=tuple(steps),
        description=description,
        tags=("recording",),
        pinned_profiles=(),
    )


def _failed_read(event) -> list:
    """A GET that failed: an observe that pins nothing, with its -errno as `result`."""
    if event.vcpu is None:
        return []
    if event.name == "KVM_GET_MSRS":  # only if it was to read IA32_APIC_BASE
        entries = event.arg.entries if event.arg is not None else ()
        if not any(e.index == MSR_APIC_BASE for e in entries):
            return []
    notes = {"at": round(event.at, 6), "tid": event.tid, "result": event.result}
    return [f.Observe((event.vcpu,), (READS[event.name],), None, {}, **notes)]


def _steps(event, apic_base: dict) -> list:
    v, name = event.vcpu, event.name
    bare = {"at": round(event.at, 6), "tid": event.tid}  # a step the ioctl implies
    notes = {**bare, "result": event.result}  # the step that is the ioctl: its return value
    arg, out = event.arg, event.out
    if name == "KVM_RUN":
        return [f.GuestRan(v, **bare)]
    if name == "KVM_SIGNAL_MSI":
        if arg is None:
            return []
        return [f.Msi(arg.address_lo, arg.address_hi, arg.data, **notes)]
    if name in ("KVM_SMI", "KVM_NMI"):
        return [(f.Smi if name == "KVM_SMI" else f.Nmi)(v, **notes)]
    if v is None:
        return []
    if name == "KVM_SET_MP_STATE" and arg is not None:
        return [f.SetMpState(v, arg.mp_state, **notes)]
    if name == "KVM_GET_MP_STATE" and out is not None:
        return [_observe(v, "mp_state", {"mp_state": out.mp_state}, notes)]
    if name == "KVM_SET_REGS" and arg is not None:
        return [f.SetRegs(v, tuple((r, arg[r]) for r in f.REGISTER_FIELDS), **notes)]
    if name == "KVM_GET_REGS" and out is not None:
        return [_observe(v, "regs", {r: out[r] for r in f.REGISTER_FIELDS}, notes)]
    if name in ("KVM_SET_SREGS", "KVM_SET_SREGS2") and arg is not None:
        out_steps = []
        if apic_base.get(v) != arg.apic_base:  # SET_SREGS also sets IA32_APIC_BASE
            out_steps.append(f.SetMsrs(v, (("apic_base", arg.apic_base),), **bare))
            apic_base[v] = arg.apic_base
        values = tuple((n, value) for n, value in sregs_fields(arg).items())
        return out_steps + [f.SetSregs(v, values, **notes)]
    if name in ("KVM_GET_SREGS", "KVM_GET_SREGS2") and out is not None:
        apic_base[v] = out.apic_base
        return [_observe(v, "sregs", sregs_fields(out), notes)]
    if name == "KVM_SET_VCPU_EVENTS" and arg is not None:
        kwargs = {}
        if arg.flags & KVM_VCPUEVENT_VALID_SIPI_VECTOR:
            kwargs["sipi_vector"] = arg.sipi_vector & 0xFF
        if arg.flags & KVM_VCPUEVENT_VALID_SMM:
            kwargs["latched_init"] = arg.smi.latched_init
            kwargs["smm"] = arg.smi.smm
        if not kwargs:
            return []  # nothing of what the model knows: NMI, exception, interrupt state
        return [f.SetVcpuEvents(v, **kwargs, **notes)]
    if name == "KVM_GET_VCPU_EVENTS" and out is not None:
        values = {"events.sipi_vector": out.sipi_vector}
        if out.flags & KVM_VCPUEVENT_VALID_SMM:
            values["events.latched_init"] = out.smi.latched_init
            values["events.smm"] = out.smi.smm
        return [_observe(v, "events", values, notes)]
    if name == "KVM_SET_LAPIC" and arg is not None:
        regs = _lapic(arg.regs)
        return [f.SetLapic(v, tuple((r, regs[r]) for r in f.LAPIC_REGISTERS), **notes)]
    if name == "KVM_GET_LAPIC" and out is not None:
        regs = _lapic(out.regs)
        return [_observe(v, "lapic", {f"lapic.{r}": regs[r] for r in f.LAPIC_REGISTERS}, notes)]
    if name == "KVM_SET_MSRS" and arg is not None and event.result >= 0:
        # KVM sets the entries in order and stops at the first it refuses: its index is the
        # result. IA32_APIC_BASE before it: taken (1); at it: refused (0); after it: not tried.
        entries = enumerate(arg.entries[: event.result + 1])
        tried = [(i, e) for i, e in entries if e.index == MSR_APIC_BASE]
        if not tried:
            return []
        at, entry = tried[-1]
        taken = at < event.result
        if taken:
            apic_base[v] = entry.data
        return [f.SetMsrs(v, (("apic_base", entry.data),), **{**notes, "result": int(taken)})]
    if name == "KVM_GET_MSRS" and out is not None:
        read = [e for e in out.entries[: max(event.result, 0)] if e.index == MSR_APIC_BASE]
        if not read:
            return []
        apic_base[v] = read[-1].data
        return [_observe(v, "msrs", {"msr.apic_base": read[-1].data}, notes)]
    return []


def sregs_fields(sregs) -> dict:
    """A decoded kvm_sregs(2) by the field names of a `sregs` read."""
    out = {}
    for seg in f.SEGMENTS:
        for name in f.SEGMENT_FIELDS:
            out[f"{seg}.{name}"] = sregs[seg][name]
    for table in f.TABLES:
        out[f"{table}.base"] = sregs[table].base
        out[f"{table}.limit"] = sregs[table].limit
    out["cr0"] = sregs.cr0
    return out


def _lapic(page: bytes) -> dict:
    from kvmtest.kvm.layouts import lapic_registers

    return lapic_registers(page)


def _observe(vcpu: int, read: str, values: dict, notes: dict) -> f.Observe:
    return f.Observe((vcpu,), (read,), None, {vcpu: values}, **notes)
