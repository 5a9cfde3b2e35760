"""The kvm side of a host-driven trace as one C call: the same ioctls, no Python between them.

A trace with ``setup.guest: none`` never runs a vCPU, so nothing the kernel returns changes
which ioctl comes next: the whole replay (build, steps, teardown) can be planned up front and
issued by kvmtest_ioctl_batch() (kvmtest/kvm/_build.py), which releases the GIL once per
trace instead of costing ~25 Python ioctl wrappers. What is issued, with which arguments, and
how the results are decoded is KvmSide's, restated here op by op: tests/exec/test_batch.py
replays every batchable corpus trace both ways on /dev/kvm and compares what each step showed.

The plan depends on the trace only, so it is made once per trace object and cached; each run
copies it into fresh op, fd and argument buffers (never shared between threads) and maps fresh
memory for the slot. A checked ioctl that fails stops the plan, as KvmError stops KvmSide:
the teardown still runs (vCPU fds, then the VM fd, then the memory, as KvmSide's ends) and
perform() raises the same KvmError at the same step. Steps whose SET needs Python after the
GET (snapshot, restore), and guest_ran, leave the trace to KvmSide.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict

from kvmtest import ops as f
from kvmtest.kvm import KvmError, layouts
from kvmtest.kvm._lib import ffi, lib

from .kvm import APIC_BASE_ENABLE, APIC_BASE_X2APIC, MSR_APIC_BASE

MEMORY_SIZE = 1 << 20  # KvmSide._build_plain's one slot
SUPPORTED = frozenset(
    {
        "msi",
        "observe",
        "get_mp_state",
        "set_mp_state",
        "nmi",
        "smi",
        "set_lapic",
        "set_regs",
        "set_sregs",
        "set_msrs",
        "set_vcpu_events",
    }
)
_BUILD, _TEARDOWN = -1, None  # the step an op belongs to, besides the trace's own indices
_CACHE_SIZE = 4096
_PLANS: OrderedDict = OrderedDict()  # id(trace) -> (trace, Plan or None)
_PLANS_LOCK = threading.Lock()


class _Unsupported(Exception):
    """The trace needs something the batch does not plan: KvmSide replays it."""


def _field(ctype: str, path: str) -> tuple[int, int]:
    """(offset, width) of a scalar field, "cs.selector" style, as cffi compiled the struct;
    unknown names raise, as KvmSide's setattr would."""
    offset, typ = 0, ffi.typeof(ctype)
    for name in path.split("."):
        fields = dict(typ.fields or ())
        if name not in fields:
            raise _Unsupported(f"no field {path} in {ctype}")
        offset += fields[name].offset
        typ = fields[name].type
    if typ.kind != "primitive":
        raise _Unsupported(f"{path} is not a scalar")
    return offset, ffi.sizeof(typ)


def _fits(value, width: int) -> bool:
    """What cffi accepts for an unsigned field of `width` bytes (KvmSide's setattr raises
    OverflowError otherwise: that trace errs on the Python path, so it goes there)."""
    return isinstance(value, int) and 0 <= value < 1 << (8 * width)


class Plan:
    """A trace's ops, argument buffer and decoders, made once, copied per run."""

    def __init__(self, trace: f.Trace):
        setup = trace.setup
        self.vcpus = setup.vcpus
        self.ops: list[dict] = []
        self.errors: list = []  # per op: (step index, KvmError args) when it can fail
        self.inits: list = []  # (ctype, offset, {field: value}) written into the template
        self.size = 0
        self.cpuid_ops: list[int] = []
        self.decoders: list = []  # per step: [(how, vcpu, offset or op index, extra)]
        self._build(setup)
        for index, step in enumerate(trace.steps):
            self.step = index
            self.decoders.append(getattr(self, "_" + step.kind)(step))
        self.step = _TEARDOWN
        self._teardown()
        self._freeze()

    # --- building the plan ---------------------------------------------------------------

    def _alloc(self, ctype: str, init: dict | None = None, size: int | None = None) -> int:
        offset = self.size
        self.size += -(-(size or ffi.sizeof(ctype)) // 16) * 16
        if init:
            self.inits.append((ctype, offset, init))
        return offset

    def _op(self, kind=lib.KVMTEST_OP_IOCTL, *, fd=0, store=-1, flags=0, **fields) -> int:
        self.ops.append(dict(kind=kind, fd=fd, store=store, flags=flags, **fields))
        self.errors.append(None)
        return len(self.ops) - 1

    def _ioctl(self, fd: int, name: str, buffer=None, integer=0, *, checked=True, expect=None):
        """One ioctl; `buffer` an offset into the run's buffer, else `integer` is the arg.
        Checked: a failure raises KvmError(name, errno) there, as _lib.ioctl does."""
        flags = lib.KVMTEST_CHECKED if checked else 0
        if expect is not None:
            flags |= lib.KVMTEST_EXPECT
        if buffer is not None:
            flags |= lib.KVMTEST_IN_BUFFER
        index = self._op(
            fd=fd,
            flags=flags,
            request=getattr(lib, name),
            arg=integer if buffer is None else buffer,
            expect=expect or 0,
        )
        if checked:
            self.errors[index] = (self.step, name)
        return index

    def _patch(self, offset: int, width: int, value: int, kind=lib.KVMTEST_OP_PUT) -> None:
        self._op(kind, width=width, arg=offset, value=value, flags=lib.KVMTEST_IN_BUFFER)

    def _msrs(self, value: int | None = None) -> tuple[int, int]:
        """A struct kvm_msrs of IA32_APIC_BASE alone; (buffer, offset of its data)."""
        size = ffi.sizeof("struct kvm_msrs") + ffi.sizeof("struct kvm_msr_entry")
        init = {"nmsrs": 1, "entries": [{"index": MSR_APIC_BASE, "data": value or 0}]}
        offset = self._alloc("struct kvm_msrs", init, size)
        return offset, offset + _MSR_DATA

    def _get_msrs(self, vcpu_fd: int) -> tuple[int, int]:
        """Vcpu.get_msrs([IA32_APIC_BASE]): KVM must read exactly that one MSR."""
        buffer, data = self._msrs()
        index = self._ioctl(vcpu_fd, "KVM_GET_MSRS", buffer, expect=1)
        self.errors[index] = (self.step, "KVM_GET_MSRS", f"MSR {MSR_APIC_BASE:#x} not readable")
        return buffer, data

    def _build(self, setup: f.Setup) -> None:
        """KvmSide.__init__ and _build_plain, ioctl for ioctl."""
        self.step = _BUILD
        self._ioctl(0, "KVM_CREATE_VM")
        self.ops[-1]["store"] = 1
        if setup.irqchip == "kernel":
            self._ioctl(1, "KVM_CREATE_IRQCHIP")
        else:
            cap = {"cap": lib.KVM_CAP_SPLIT_IRQCHIP, "args": [24]}
            self._ioctl(1, "KVM_ENABLE_CAP", self._alloc("struct kvm_enable_cap", cap))
        region = self._alloc("struct kvm_userspace_memory_region", {"memory_size": MEMORY_SIZE})
        self.region = region + ffi.offsetof("struct kvm_userspace_memory_region", "userspace_addr")
        index = self._op(
            lib.KVMTEST_OP_MMAP,
            arg=self.region,
            value=MEMORY_SIZE,
            flags=lib.KVMTEST_CHECKED | lib.KVMTEST_IN_BUFFER,
        )
        self.errors[index] = (self.step, None)  # mmap.mmap's OSError
        self._ioctl(1, "KVM_SET_USER_MEMORY_REGION", region)
        for i in range(setup.vcpus):
            self._ioctl(1, "KVM_CREATE_VCPU", integer=i)
            self.ops[-1]["store"] = 2 + i
        for i in range(setup.vcpus):
            self.cpuid_ops.append(self._ioctl(2 + i, "KVM_SET_CPUID2"))
        if setup.apic == "x2apic":
            for i in range(setup.vcpus):
                # The GET's buffer is the SET's, with the bits ORed into the base it read.
                buffer, data = self._get_msrs(2 + i)
                self._patch(data, 8, APIC_BASE_X2APIC | APIC_BASE_ENABLE, lib.KVMTEST_OP_OR)
                index = self._ioctl(2 + i, "KVM_SET_MSRS", buffer, expect=1)
                detail = f"MSR {MSR_APIC_BASE:#x} not writable"
                self.errors[index] = (self.step, "KVM_SET_MSRS", detail)
        if setup.sync_apic_map:
            for i in range(setup.vcpus):
                page = self._alloc("struct kvm_lapic_state")
                self._ioctl(2 + i, "KVM_GET_LAPIC", page)
                self._ioctl(2 + i, "KVM_SET_LAPIC", page)

    def _teardown(self) -> None:
        """KvmSide.close() and its end: the vCPU fds, then the VM fd, whatever exists; the
        memory is unmapped after them (Vm._release cannot: KvmSide.memory still views it, so
        the mapping goes when the KvmSide is freed, after the VM fd)."""
        always = lib.KVMTEST_ALWAYS
        for i in range(self.vcpus):
            self._op(lib.KVMTEST_OP_CLOSE, fd=2 + i, flags=always)
        self._op(lib.KVMTEST_OP_CLOSE, fd=1, flags=always)
        self._op(
            lib.KVMTEST_OP_MUNMAP,
            arg=self.region,
            value=MEMORY_SIZE,
            flags=always | lib.KVMTEST_IN_BUFFER,
        )

    def _vcpu(self, vcpu) -> int:
        if not isinstance(vcpu, int) or not 0 <= vcpu < self.vcpus:
            raise _Unsupported(f"no vCPU {vcpu!r}")  # KvmSide: an IndexError
        return 2 + vcpu

    # --- the steps: KvmSide's methods of the same names ----------------------------------

    def _msi(self, step: f.Msi) -> list:
        msi = {"address_lo": step.address_lo, "address_hi": step.address_hi, "data": step.data}
        for name in ("address_lo", "address_hi", "data"):
            if not _fits(msi[name], 4):
                raise _Unsupported(f"msi {name}")
        index = self._ioctl(1, "KVM_SIGNAL_MSI", self._alloc("struct kvm_msi", msi), checked=False)
        return [("result", None, index, None)]

    def _observe(self, step: f.Observe) -> list:
        out = []
        for vcpu in step.vcpus:
            fd = self._vcpu(vcpu)
            for what in step.read:
                if what == "msrs":
                    offset = self._get_msrs(fd)[0]
                else:
                    ctype, name = _READS[what]
                    offset = self._alloc(ctype)
                    self._ioctl(fd, name, offset)
                if what == "lapic":
                    out.append(("lapic", vcpu, offset, step.fields))
                else:
                    reader, names = _reader(what, step.fields)
                    out.append(("fields", vcpu, offset, (reader, tuple((vcpu, n) for n in names))))
        return out

    def _get_mp_state(self, step: f.GetMpState) -> list:
        offset = self._alloc("struct kvm_mp_state")
        self._ioctl(self._vcpu(step.vcpu), "KVM_GET_MP_STATE", offset)
        reader, names = _reader("mp_state", None)
        return [("fields", step.vcpu, offset, (reader, tuple((step.vcpu, n) for n in names)))]

    def _set_mp_state(self, step: f.SetMpState) -> list:
        if not _fits(step.state, 4):
            raise _Unsupported("mp_state")
        offset = self._alloc("struct kvm_mp_state", {"mp_state": step.state})
        index = self._ioctl(self._vcpu(step.vcpu), "KVM_SET_MP_STATE", offset, checked=False)
        return [("result", step.vcpu, index, None)]

    def _nmi(self, step: f.Nmi) -> list:
        index = self._ioctl(self._vcpu(step.vcpu), "KVM_NMI", checked=False)
        return [("result", step.vcpu, index, None)]

    def _smi(self, step: f.Smi) -> list:
        index = self._ioctl(self._vcpu(step.vcpu), "KVM_SMI", checked=False)
        return [("result", step.vcpu, index, None)]

    def _get_set(self, step, ctype: str, get: str, put: str, patches) -> list:
        """GET into a buffer, constants patched in, SET from it: result 0 or -errno (_raw)."""
        fd = self._vcpu(step.vcpu)
        offset = self._alloc(ctype)
        self._ioctl(fd, get, offset)
        for where, width, value in patches:
            self._patch(offset + where, width, value)
        index = self._ioctl(fd, put, offset, checked=False)
        return [("zero_or_errno", step.vcpu, index, None)]

    def _set_lapic(self, step: f.SetLapic) -> list:
        base = ffi.offsetof("struct kvm_lapic_state", "regs")
        patches = []
        for name, value in step.registers:
            if name not in layouts.LAPIC_REGISTERS or not isinstance(value, int):
                raise _Unsupported(f"lapic {name}")
            patches.append((base + layouts.LAPIC_REGISTERS[name], 4, value & 0xFFFFFFFF))
        return self._get_set(
            step, "struct kvm_lapic_state", "KVM_GET_LAPIC", "KVM_SET_LAPIC", patches
        )

    def _set_regs(self, step: f.SetRegs) -> list:
        patches = [(*_field("struct kvm_regs", name), value) for name, value in step.values]
        if not all(_fits(value, width) for _, width, value in patches):
            raise _Unsupported("a register value out of range")
        return self._get_set(step, "struct kvm_regs", "KVM_GET_REGS", "KVM_SET_REGS", patches)

    def _set_sregs(self, step: f.SetSregs) -> list:
        patches = [(*_field("struct kvm_sregs", name), value) for name, value in step.values]
        if not all(_fits(value, width) for _, width, value in patches):
            raise _Unsupported("an sregs value out of range")
        return self._get_set(step, "struct kvm_sregs", "KVM_GET_SREGS", "KVM_SET_SREGS", patches)

    def _set_vcpu_events(self, step: f.SetVcpuEvents) -> list:
        """flags = 0, then the VALID bits of what the step sets (KvmSide.set_vcpu_events)."""
        ctype = "struct kvm_vcpu_events"
        flags, patches = 0, []
        for name, path, valid in (
            ("sipi_vector", "sipi_vector", lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR),
            ("latched_init", "smi.latched_init", lib.KVM_VCPUEVENT_VALID_SMM),
            ("smm", "smi.smm", lib.KVM_VCPUEVENT_VALID_SMM),
        ):
            value = getattr(step, name)
            if value is not None:
                flags |= valid
                patches.append((*_field(ctype, path), value))
        if not all(_fits(value, width) for _, width, value in patches):
            raise _Unsupported("an events value out of range")
        patches.insert(0, (*_field(ctype, "flags"), flags))
        get, put = "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS"
        decoded = self._get_set(step, ctype, get, put, patches)
        return [("result", step.vcpu, decoded[0][2], None)]  # set_vcpu_events_raw: as is

    def _set_msrs(self, step: f.SetMsrs) -> list:
        """One KVM_SET_MSRS per MSR, stopping at the first refused: with one MSR to set (all
        MSRS offers), whether the next is issued never depends on a result."""
        if len(step.values) > 1:
            raise _Unsupported("set_msrs of several MSRs")
        if not step.values:
            return [("constant", step.vcpu, 0, None)]
        ((name, value),) = step.values
        if f.MSRS.get(name) != MSR_APIC_BASE or not _fits(value, 8):
            raise _Unsupported(f"set_msrs {name}")
        buffer, _ = self._msrs(value)
        index = self._ioctl(self._vcpu(step.vcpu), "KVM_SET_MSRS", buffer, checked=False)
        return [("msrs_taken", step.vcpu, index, None)]

    # --- per run -------------------------------------------------------------------------

    def _freeze(self) -> None:
        """The op array and the buffer's initial contents as bytes, copied into each run."""
        ops = ffi.new("struct kvmtest_op[]", len(self.ops))
        for op, fields in zip(ops, self.ops, strict=True):
            for name, value in fields.items():
                setattr(op, name, value)
        self.op_bytes = bytes(ffi.buffer(ops))
        self.n = len(self.ops)
        self.size = max(self.size, 16)
        buffer = ffi.new("char[]", self.size)
        for ctype, offset, init in self.inits:
            target = ffi.cast(ctype + " *", buffer + offset)
            for name, value in init.items():
                setattr(target, name, value)
        self.buffer_bytes = bytes(ffi.buffer(buffer))
        self.fd_bytes = bytes(ffi.buffer(ffi.new("int[]", [-1] * (2 + self.vcpus))))

    def error(self, ops, index: int) -> BaseException:
        """The exception KvmSide would raise for op `index` failing."""
        _, name, *detail = self.errors[index]
        ret = ops[index].result
        if name is None:
            return OSError(-ret, os.strerror(-ret))
        if ret < 0:
            return KvmError(name, -ret)
        return KvmError(name, 22, *detail)  # a count other than expected: Vcpu.get_msrs's


_MSR_DATA = ffi.sizeof("struct kvm_msrs") + ffi.offsetof("struct kvm_msr_entry", "data")
# What each read shows, KvmSide.observe's names -> (offset, width) in what the GET filled.
_FIELDS = {
    "mp_state": {"mp_state": _field("struct kvm_mp_state", "mp_state")},
    "regs": {name: _field("struct kvm_regs", name) for name in f.REGISTER_FIELDS},
    "sregs": {name: _field("struct kvm_sregs", name) for name in f.fields_of_read("sregs")},
    "events": {
        "events.sipi_vector": _field("struct kvm_vcpu_events", "sipi_vector"),
        "events.latched_init": _field("struct kvm_vcpu_events", "smi.latched_init"),
        "events.smm": _field("struct kvm_vcpu_events", "smi.smm"),
    },
    "msrs": {"msr.apic_base": (_MSR_DATA, 8)},
}
_READERS: dict = {}


def _reader(what: str, fields) -> tuple:
    """(struct.Struct, names): the kept fields of one read, unpacked in one call, in offset
    order (values as cffi reads the unsigned fields; flatten_kvm_sregs's, without ~100
    attribute reads)."""
    key = (what, None if fields is None else frozenset(fields))
    if key not in _READERS:
        kept = sorted(
            (offset, width, name)
            for name, (offset, width) in _FIELDS[what].items()
            if fields is None or name in fields
        )
        layout, at = "<", 0
        for offset, width, _ in kept:
            layout += "x" * (offset - at) + {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
            at = offset + width
        _READERS[key] = (struct.Struct(layout), tuple(name for _, _, name in kept))
    return _READERS[key]


_READS = {
    "mp_state": ("struct kvm_mp_state", "KVM_GET_MP_STATE"),
    "regs": ("struct kvm_regs", "KVM_GET_REGS"),
    "sregs": ("struct kvm_sregs", "KVM_GET_SREGS"),
    "events": ("struct kvm_vcpu_events", "KVM_GET_VCPU_EVENTS"),
    "lapic": ("struct kvm_lapic_state", "KVM_GET_LAPIC"),
}


def plan_of(trace: f.Trace) -> Plan | None:
    """The trace's plan, or None when the batch cannot replay it; cached per trace object
    (the entry keeps the trace alive, so its id is not reused)."""
    key = id(trace)
    with _PLANS_LOCK:
        entry = _PLANS.get(key)
    if entry is not None and entry[0] is trace:
        return entry[1]
    plan = None
    setup = trace.setup
    if setup.guest == "none" and all(step.kind in SUPPORTED for step in trace.steps):
        try:
            plan = Plan(trace)
        except Exception:  # _Unsupported, or a value KvmSide raises for: KvmSide replays it
            plan = None
    with _PLANS_LOCK:
        _PLANS[key] = (trace, plan)
        _PLANS.move_to_end(key)
        while len(_PLANS) > _CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


def batchable(trace: f.Trace) -> bool:
    """Whether BatchSide can replay `trace`: guest-less, no concurrent block, every step of a
    kind planned here with values KvmSide would accept."""
    return plan_of(trace) is not None


class BatchSide:
    """KvmSide's interface for a batchable trace. The constructor issues the whole trace
    (teardown included) in one C call; perform() decodes what that step's ioctls returned,
    or raises what KvmSide would have raised there."""

    name = "kvm"

    def __init__(self, kvm, trace: f.Trace, cpuid, cancel=None):
        plan = plan_of(trace)
        if plan is None:
            raise ValueError(f"{trace.name}: not batchable (use KvmSide)")
        self.plan, self.trace = plan, trace
        self.ops = ops = ffi.new("struct kvmtest_op[]", plan.n)
        ffi.memmove(ops, plan.op_bytes, len(plan.op_bytes))
        self.buffer = buffer = ffi.new("char[]", plan.buffer_bytes)
        self.view = ffi.buffer(buffer)
        fds = ffi.new("int[]", 2 + plan.vcpus)
        ffi.memmove(fds, plan.fd_bytes, len(plan.fd_bytes))
        fds[0] = kvm.fd
        address = int(ffi.cast("uintptr_t", cpuid.pointer))
        for index in plan.cpuid_ops:
            ops[index].arg = address
        failed = lib.kvmtest_ioctl_batch(ops, plan.n, fds, buffer)
        self.failed_step = self.error = None
        if failed < plan.n:
            self.failed_step = plan.errors[failed][0]
            self.error = plan.error(ops, failed)
            if self.failed_step == _BUILD:
                raise self.error
        self.next = 0

    def perform(self, step) -> dict:
        index = self.next
        if step is not self.trace.steps[index]:
            raise RuntimeError("BatchSide.perform: steps out of order")
        self.next = index + 1
        if index == self.failed_step:
            raise self.error
        out: dict = {}
        for how, vcpu, where, fields in self.plan.decoders[index]:
            _DECODE[how](self, out, vcpu, where, fields)
        return out

    def settle(self, *args, **kwargs) -> dict:
        return {}  # no vCPU thread: nothing reports (KvmSide.settle without workers)

    def thread_positions(self, observed: dict) -> dict:
        return {}

    def close(self) -> None:
        """Nothing left: the batch's last ops closed the VM."""

    # --- decoding: KvmSide's conversions of the same reads ------------------------------

    def _result(self, out, vcpu, index, _):
        out[(vcpu, "result")] = self.ops[index].result

    def _zero_or_errno(self, out, vcpu, index, _):
        ret = self.ops[index].result
        out[(vcpu, "result")] = ret if ret < 0 else 0

    def _msrs_taken(self, out, vcpu, index, _):
        out[(vcpu, "result")] = 1 if self.ops[index].result == 1 else 0

    def _constant(self, out, vcpu, value, _):
        out[(vcpu, "result")] = value

    def _fields(self, out, vcpu, offset, reader):
        unpack, keys = reader
        out.update(zip(keys, unpack.unpack_from(self.view, offset), strict=True))

    def _lapic(self, out, vcpu, offset, fields):
        """Vcpu.get_lapic()'s bytes, decoded by layouts.lapic_registers, as KvmSide does."""
        state = ffi.cast("struct kvm_lapic_state *", self.buffer + offset)
        registers = layouts.lapic_registers(bytes(ffi.buffer(state.regs)))
        for name in f.LAPIC_REGISTERS:
            if fields is None or f"lapic.{name}" in fields:
                out[(vcpu, f"lapic.{name}")] = registers[name]


_DECODE = {
    name: getattr(BatchSide, "_" + name)
    for name in (
        "result",
        "zero_or_errno",
        "msrs_taken",
        "constant",
        "fields",
        "lapic",
    )
}
