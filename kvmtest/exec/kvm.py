"""The real side of a replay: every operation performed on a fresh VM in /dev/kvm.

``perform(op)`` does what the operation says (one table maps each kind to its method) and
``settle()`` waits until the VM is quiet by what it observes: every vCPU thread that is busy
with a guest command either reported (its worker is idle again) or sleeps inside KVM_RUN, and
stays so for a quiet period, or the bound runs out. Nothing here knows what the model
predicted, so an unexpected report or an extra wake-up shows up as a difference either way.
"""

import contextlib
import queue
import random
import threading
import time

from kvmtest import guest as g
from kvmtest import ops as f
from kvmtest.guest.protocol import COMMAND_ACKS
from kvmtest.kvm import KvmError, layouts, lib
from kvmtest.ops import BLOCK_OPS

from .workers import VcpuWorker, guest_exit_interval_ns

MSR_APIC_BASE = 0x1B
APIC_BASE_X2APIC = 1 << 10
APIC_BASE_ENABLE = 1 << 11

REPORT_TIMEOUT = 2.0  # seconds a guest command may take to report or sleep (slow guest code)
# ... of time this process ran: a gap of more than STALL_GAP between two looks is a stall (the
# host stole the machine's CPUs) and does not count, up to STALL_FACTOR times the bound (_Bound).
STALL_GAP = 0.05
STALL_FACTOR = 15
QUIET = 0.002  # seconds every busy vCPU thread must stay asleep, with no report, to be settled
POLL = 0.0002  # seconds between looks at the threads while settling
STEPPER_COMMANDS = {
    "hlt": g.CMD_HLT,
    "x2apic": g.CMD_X2APIC,
    "spin": g.CMD_SPIN,
    "report": g.CMD_CS_IP,
}


def _busy_wait(seconds: float) -> None:
    """Sub-millisecond delays: sleep() is too coarse to shift a race by microseconds."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


_SEGMENT_KEYS = tuple(
    (name, tuple((field, f"{name}.{field}") for field in f.SEGMENT_FIELDS)) for name in f.SEGMENTS
)
_TABLE_KEYS = tuple((name, f"{name}.base", f"{name}.limit") for name in f.TABLES)


def flatten_kvm_sregs(sregs) -> dict:
    """struct kvm_sregs as the flat {"cs.base": ...} fields that observe compares."""
    out = {}
    for name, fields in _SEGMENT_KEYS:
        seg = getattr(sregs, name)
        for field, key in fields:
            out[key] = getattr(seg, field)
    for name, base, limit in _TABLE_KEYS:
        table = getattr(sregs, name)
        out[base], out[limit] = table.base, table.limit
    out["cr0"] = sregs.cr0
    return out


def _raw(ioctl, *args) -> int:
    """An ioctl's result as the kernel returns it: 0, or -errno."""
    try:
        ioctl(*args)
    except KvmError as exc:
        return -exc.errno
    return 0


def describe_report(report) -> str:
    """A guest report in the model side's vocabulary."""
    if isinstance(report, BaseException):
        return f"error: {report}"
    if report is None:
        return "none"
    if report.kind == "sipi":
        return f"sipi {report.vector:#x}"
    if report.kind == "exception":
        return f"exception {report.vector:#x}"
    return report.kind


class KvmSide:
    name = "kvm"

    def __init__(self, kvm, trace: f.Trace, cpuid, cancel=None):
        setup = trace.setup
        self.cancel = cancel  # a threading.Event: the runner gave up, stop waiting
        self.setup = setup
        self.workers: dict[int, VcpuWorker] = {}
        self._x2apic_after_start = False  # GuestVm.start() semantics, see _after_ready
        self._pending_ack: dict[int, str] = {}  # vCPU -> a harness command's report to absorb
        self.guest_vm = None
        self.kvm, self.cpuid = kvm, cpuid
        self.saved = None  # the last snapshot: per vCPU, what the GET ioctls returned
        if setup.guest == "none":
            self.vm = kvm.create_vm()
            try:
                self._build_plain(kvm, setup, cpuid)
            except BaseException:
                self.vm.close()
                raise
        else:
            # Measured once per process, here rather than inside the first settle(), whose
            # bound it would eat on a slow host (a nested kernel under TCG).
            guest_exit_interval_ns()
            image = "stepper" if setup.guest == "stepper" else "smp"
            self.guest_vm = g.GuestVm(
                kvm, setup.vcpus, image, x2apic=setup.apic == "x2apic", irqchip=setup.irqchip
            )
            self.vm = self.guest_vm.vm
            self.vcpus = self.guest_vm.vcpus

    def _build_plain(self, kvm, setup: f.Setup, cpuid) -> None:
        if setup.irqchip == "kernel":
            self.vm.create_irqchip()
        else:
            self.vm.enable_split_irqchip()
        self.memory = self.vm.set_user_memory_region(0, 0, 1 << 20)
        self.vcpus = [self.vm.create_vcpu(i) for i in range(setup.vcpus)]
        for vcpu in self.vcpus:
            vcpu.set_cpuid2(cpuid)  # as a VMM does; also decides RDX after INIT (c.1)
        if setup.apic == "x2apic":
            for vcpu in self.vcpus:
                base = vcpu.get_msrs([MSR_APIC_BASE])[MSR_APIC_BASE]
                vcpu.set_msrs({MSR_APIC_BASE: base | APIC_BASE_X2APIC | APIC_BASE_ENABLE})
        if setup.sync_apic_map:
            # The newest vCPU is missing from KVM's APIC map until a KVM_SET_LAPIC (rules 33-34,
            # docs/host-findings.md#finding-3); a VMM syncs every vCPU after creating them all.
            for vcpu in self.vcpus:
                vcpu.set_lapic(vcpu.get_lapic())

    # --- operations ----------------------------------------------------------------------------

    def perform(self, op) -> dict:
        """Perform one operation; return what it showed, {(vcpu, field): value}. A spinning
        vCPU thread is judged on what it does after the operation, which may have ended the
        spin (a SIPI): the window of VcpuWorker.spinning starts again."""
        try:
            return _PERFORM[op.kind](self, op)
        finally:
            for worker in self.workers.values():
                worker.forget_spin()

    def msi(self, step: f.Msi) -> dict:
        return {
            (None, "result"): self.vm.signal_msi_raw(step.address_lo, step.address_hi, step.data)
        }

    def observe(self, vcpu_index: int, read: tuple) -> dict:
        vcpu = self.vcpus[vcpu_index]
        with self._paused(vcpu_index):
            out = {}
            for what in read:
                if what == "mp_state":
                    out["mp_state"] = vcpu.get_mp_state()
                elif what == "regs":
                    regs = vcpu.get_regs()
                    out.update(rip=regs.rip, rflags=regs.rflags, rdx=regs.rdx)
                elif what == "sregs":
                    out.update(flatten_kvm_sregs(vcpu.get_sregs()))
                elif what == "events":
                    events = vcpu.get_vcpu_events()
                    out["events.sipi_vector"] = events.sipi_vector
                    out["events.latched_init"] = events.smi.latched_init
                    out["events.smm"] = events.smi.smm
                elif what == "lapic":
                    registers = layouts.lapic_registers(vcpu.get_lapic())
                    for name in f.LAPIC_REGISTERS:
                        out[f"lapic.{name}"] = registers[name]
                elif what == "msrs":
                    out["msr.apic_base"] = self._apic_base(vcpu)
        return out

    def observe_op(self, op: f.Observe) -> dict:
        out = {}
        fields = op.fields
        for vcpu in op.vcpus:
            for name, value in self.observe(vcpu, op.read).items():
                if fields is None or name in fields:  # Observe.keeps, inlined: 60 fields a read
                    out[(vcpu, name)] = value
        return out

    def get_mp_state(self, op: f.GetMpState) -> dict:
        with self._paused(op.vcpu):
            return {(op.vcpu, "mp_state"): self.vcpus[op.vcpu].get_mp_state()}

    def set_mp_state(self, op: f.SetMpState) -> dict:
        with self._paused(op.vcpu):
            return {(op.vcpu, "result"): self.vcpus[op.vcpu].set_mp_state_raw(op.state)}

    def set_vcpu_events(self, step: f.SetVcpuEvents) -> dict:
        vcpu = self.vcpus[step.vcpu]
        with self._paused(step.vcpu):
            events = vcpu.get_vcpu_events()
            events.flags = 0
            if step.sipi_vector is not None:
                events.flags |= lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR
                events.sipi_vector = step.sipi_vector
            if step.latched_init is not None or step.smm is not None:
                events.flags |= lib.KVM_VCPUEVENT_VALID_SMM
                if step.latched_init is not None:
                    events.smi.latched_init = step.latched_init
                if step.smm is not None:
                    events.smi.smm = step.smm
            return {(step.vcpu, "result"): vcpu.set_vcpu_events_raw(events)}

    def guest_ran(self, op: f.GuestRan) -> dict:
        """A recorded KVM_RUN, replayed without the recorded guest: its processing point."""
        with self._paused(op.vcpu):
            self.vcpus[op.vcpu].get_mp_state()
        return {}

    def set_lapic(self, op: f.SetLapic) -> dict:
        """KVM_GET_LAPIC, the named registers replaced in the page (construct layout),
        KVM_SET_LAPIC; with none named, the vCPU's own state goes back unchanged."""
        vcpu = self.vcpus[op.vcpu]
        with self._paused(op.vcpu):
            page = layouts.with_lapic_registers(vcpu.get_lapic(), **dict(op.registers))
            return {(op.vcpu, "result"): _raw(vcpu.set_lapic, page)}

    def set_regs(self, op: f.SetRegs) -> dict:
        vcpu = self.vcpus[op.vcpu]
        with self._paused(op.vcpu):
            regs = vcpu.get_regs()
            for name, value in op.values:
                setattr(regs, name, value)
            return {(op.vcpu, "result"): _raw(vcpu.set_regs, regs)}

    def set_sregs(self, op: f.SetSregs) -> dict:
        vcpu = self.vcpus[op.vcpu]
        with self._paused(op.vcpu):
            sregs = vcpu.get_sregs()
            for name, value in op.values:
                table, _, field = name.rpartition(".")
                setattr(getattr(sregs, table) if table else sregs, field, value)
            return {(op.vcpu, "result"): _raw(vcpu.set_sregs, sregs)}

    def set_msrs(self, op: f.SetMsrs) -> dict:
        """KVM_SET_MSRS: the result is how many MSRs KVM took."""
        vcpu = self.vcpus[op.vcpu]
        with self._paused(op.vcpu):
            taken = 0
            for name, value in op.values:
                if _raw(vcpu.set_msrs, {f.MSRS[name]: value}) == 0:
                    taken += 1
                else:
                    break  # KVM stops at the first MSR it refuses
            return {(op.vcpu, "result"): taken}

    # --- save and restore (guest-less VMs: no vCPU thread to stop) ---------------------------

    def snapshot(self, op: f.Snapshot) -> dict:
        """The GETs of f.SNAPSHOT_READS on every vCPU, in that order, as a VMM saves."""
        saved, out = [], {}
        for index, vcpu in enumerate(self.vcpus):
            state = {
                "mp_state": vcpu.get_mp_state(),
                "regs": vcpu.get_regs(),
                "sregs": vcpu.get_sregs(),
                "events": vcpu.get_vcpu_events(),
                "lapic": vcpu.get_lapic(),
                "msrs": self._apic_base(vcpu),
            }
            saved.append(state)
            out[(index, "snapshot.mp_state")] = state["mp_state"]
        self.saved = saved
        return out

    def restore(self, op: f.Restore) -> dict:
        """Close the VM, build a fresh one as the setup says, SET the snapshot vCPU by vCPU."""
        self.vm.close()
        self.vm = self.kvm.create_vm()
        self._build_plain(self.kvm, self.setup, self.cpuid)
        out = {}
        for index, (vcpu, state) in enumerate(zip(self.vcpus, self.saved, strict=True)):
            for what in op.order:
                out[(index, f"restore.{what}")] = self._restore_one(vcpu, index, what, state, op)
        return out

    def _restore_one(self, vcpu, index: int, what: str, state: dict, op) -> int:
        if what == "mp_state":
            return vcpu.set_mp_state_raw(op.state_for(index, state["mp_state"]))
        if what == "regs":
            return _raw(vcpu.set_regs, state["regs"])
        if what == "sregs":
            return _raw(vcpu.set_sregs, state["sregs"])
        if what == "events":
            events = state["events"]
            events.flags |= lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR  # as QEMU sets them
            return vcpu.set_vcpu_events_raw(events)
        if what == "lapic":
            return _raw(vcpu.set_lapic, state["lapic"])
        return 1 if _raw(vcpu.set_msrs, {MSR_APIC_BASE: state["msrs"]}) == 0 else 0

    @staticmethod
    def _apic_base(vcpu) -> int:
        return vcpu.get_msrs([MSR_APIC_BASE])[MSR_APIC_BASE]

    def smi(self, op: f.Smi) -> dict:
        with self._paused(op.vcpu):
            return {(op.vcpu, "result"): self.vcpus[op.vcpu].smi_raw()}

    def nmi(self, op: f.Nmi) -> dict:
        with self._paused(op.vcpu):
            return {(op.vcpu, "result"): self.vcpus[op.vcpu].nmi_raw()}

    # --- guest commands ------------------------------------------------------------------------

    def worker(self, vcpu: int) -> VcpuWorker:
        if vcpu not in self.workers:
            self.workers[vcpu] = VcpuWorker(self.guest_vm.stepper(vcpu))
        return self.workers[vcpu]

    def guest(self, step) -> dict:
        """A stepper command (an ICR write is one too): post it and let the worker run it."""
        worker = self.worker(step.vcpu)
        if step.kind == "icr":
            worker.submit(g.CMD_ICR, step.value & 0xFFFFFFFF, step.value >> 32)
        elif step.command == "start":
            worker.submit(None)  # to the ready report (the BSP's x2APIC switch: _after_ready)
            self._x2apic_after_start = step.vcpu == 0 and self.setup.apic == "x2apic"
        else:
            worker.submit(STEPPER_COMMANDS[step.command], step.argument)
        return {}

    # --- concurrent blocks ---------------------------------------------------------------------

    def run_block(self, block: f.Concurrently, rng: random.Random, jitter: float) -> frozenset:
        """Run each branch on its own thread at once, each step after a random delay of up to
        `jitter` seconds; return the wake-up reports (vcpu, how) the guests sent meanwhile."""
        reports: set = set()
        errors: list = []
        lock = threading.Lock()
        delays = [[rng.uniform(0, jitter) for _ in b.steps] for b in block.branches]

        branches = _Branches(len(block.branches))

        def branch(index: int, steps) -> None:
            try:
                for delay, step in zip(delays[index], steps, strict=True):
                    _busy_wait(delay)
                    got = self._block_step(step, branches)
                    if got is not None:
                        with lock:
                            reports.add(got)
            except Exception as exc:  # handed to the engine
                errors.append(exc)
            finally:
                branches.finished()

        threads = [
            threading.Thread(target=branch, args=(i, b.steps), daemon=True)
            for i, b in enumerate(block.branches)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(REPORT_TIMEOUT * (len(block.branches) + 2))
        if errors:
            raise errors[0]
        for vcpu, worker in self.workers.items():
            if worker.busy:
                worker.wait_asleep(0.05)  # parked in HLT or waiting for a SIPI, or still running
            while True:
                try:
                    report = worker.reports.get_nowait()
                except queue.Empty:
                    break
                how = describe_report(report)
                if how not in COMMAND_ACKS:
                    reports.add((vcpu, how))
        return frozenset(reports)

    def _block_step(self, step, branches: "_Branches"):
        """One step of a branch; a guest command waits for its report (bounded)."""
        kind = step.command if step.kind == "guest" else step.kind
        if kind not in BLOCK_OPS:
            raise NotImplementedError(f"{step.kind} steps inside a concurrent block")
        self.perform(step)
        if step.kind in ("icr", "guest"):
            report = self._block_report(step.vcpu, branches)
            if report is None:
                return None  # still halted (a lost wake-up): the outcome will show it
            how = describe_report(report)
            return None if how in COMMAND_ACKS else (step.vcpu, how)
        return None

    def _block_report(self, vcpu: int, branches: "_Branches"):
        """The vCPU's next report, or None when none can come: the bound ran out, or no branch
        can act any more (each finished or waits for a report too) and every busy vCPU thread
        sleeps or spins in KVM_RUN, quiet for QUIET, so that nothing is left to wake one."""
        worker = self.workers[vcpu]
        bound = _Bound(REPORT_TIMEOUT)
        quiet = _Quiet(QUIET)
        with branches.waiting():
            while True:
                try:
                    return worker.reports.get(timeout=POLL)
                except queue.Empty:
                    pass
                now = time.monotonic()
                if bound.over(now):
                    return None
                if branches.none_active():
                    busy, asleep, spinning = self._thread_states()
                    if quiet.held(busy == asleep | spinning, now):
                        return None
                else:
                    quiet.held(False, now)

    def smp_boot(self, step: f.SmpBoot) -> dict:
        result = self.guest_vm.smp_boot(broadcast=step.broadcast, vector=step.vector)
        return {(None, "smp.online"): result.online, (None, "smp.expected"): result.expected}

    def settle(self, timeout: float = REPORT_TIMEOUT, quiet: float = QUIET) -> dict:
        """Wait until every busy vCPU thread has reported or sleeps inside KVM_RUN, and all stay
        so for `quiet` seconds (or `timeout` runs out); return the reports, keyed
        (vcpu, "report"), and (vcpu, "thread"): "blocked" or "running" for the busy ones."""
        out: dict = {}
        if not any(worker.busy for worker in self.workers.values()):
            # No vCPU thread is inside KVM_RUN, so nothing can report or wake: a worker puts
            # its report before it turns idle, so this drain sees every report there is.
            self._drain_reports(out)
            if not any(worker.busy for worker in self.workers.values()):
                return out
        bound = _Bound(timeout)
        still = _Quiet(quiet)
        while True:
            got = self._drain_reports(out)
            busy, asleep, spinning = self._thread_states()
            now = time.monotonic()
            if still.held(not got and asleep | spinning == busy, now):
                break
            if bound.over(now):
                break
            if self.cancel is not None and self.cancel.is_set():
                break
            time.sleep(POLL)
        self._drain_reports(out)
        for vcpu in sorted(busy):
            out[(vcpu, "thread")] = "blocked" if vcpu in asleep else "running"
        return out

    def _thread_states(self) -> tuple[set, set, set]:
        """(busy, asleep, spinning): the vCPUs busy with a command, those of them whose thread
        sleeps in KVM_RUN, and the others whose thread spins there without entering the guest
        (VcpuWorker.spinning). Neither of the last two can report by itself."""
        busy = {vcpu for vcpu, worker in self.workers.items() if worker.busy}
        asleep = {vcpu for vcpu in busy if self.workers[vcpu].asleep()}
        spinning = {vcpu for vcpu in busy - asleep if self.workers[vcpu].spinning()}
        return busy, asleep, spinning

    def thread_positions(self, observed: dict) -> dict:
        """Where each vCPU thread was when the step settled, from what settle() saw."""
        out = {}
        for vcpu in self.workers:
            state = observed.get((vcpu, "thread"))
            if state == "blocked":
                out[vcpu] = "blocked in KVM_RUN"
            elif state == "running":
                out[vcpu] = "running (did not settle)"
            elif (vcpu, "report") in observed:
                out[vcpu] = "reported: outside KVM_RUN"
            else:
                out[vcpu] = "outside KVM_RUN"
        return out

    def _drain_reports(self, out: dict) -> bool:
        """Move every report that arrived into `out` (the last per vCPU); True if any did."""
        got = False
        for vcpu, worker in self.workers.items():
            while True:
                try:
                    report = worker.reports.get_nowait()
                except queue.Empty:
                    break
                got = True
                what = describe_report(report)
                if self._pending_ack.get(vcpu) is not None:
                    expected = self._pending_ack.pop(vcpu)
                    if what != expected:
                        out[(vcpu, "report")] = f"{expected} switch failed: {what}"
                    continue
                out[(vcpu, "report")] = what
                if what == "ready":
                    self._after_ready(vcpu)
        return got

    def _after_ready(self, vcpu: int) -> None:
        """GuestVm.start() semantics: the BSP switches to x2APIC right after its ready report;
        that command's own report is the harness's business, not the trace's."""
        if vcpu == 0 and self._x2apic_after_start:
            self._x2apic_after_start = False
            self._pending_ack[0] = "x2apic"
            self.workers[0].submit(g.CMD_X2APIC)

    def _paused(self, vcpu: int):
        return _Paused(self.workers.get(vcpu))

    def close(self) -> None:
        try:
            for worker in self.workers.values():
                worker.stop()
        finally:
            if self.guest_vm is not None:
                self.guest_vm.close()
            else:
                self.vm.close()


class _Bound:
    """How long a step waits for reports: `seconds` of the time this process was running, not
    of the wall clock. This development host is itself a VM, and its host sometimes stops it
    for seconds: every thread stops at once, and a wall-clock bound then ran out before a
    report the guest was about to send (seed 24: divergences in bursts of a few traces, every
    one passing on re-run). A gap between two looks longer than STALL_GAP (the waiting loop
    looks every POLL) is taken as such a stall and not counted; the wall clock still ends the
    wait after STALL_FACTOR times `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last = self.start = time.monotonic()
        self.counted = 0.0

    def over(self, now: float) -> bool:
        gap, self.last = now - self.last, now
        self.counted += gap if gap <= STALL_GAP else 0.0
        return self.counted > self.seconds or now - self.start > self.seconds * STALL_FACTOR


class _Quiet:
    """Whether a condition has held, look after look, for `period` seconds."""

    def __init__(self, period: float):
        self.period = period
        self.since = None

    def held(self, now_true: bool, now: float) -> bool:
        if not now_true:
            self.since = None
        elif self.since is None:
            self.since = now
        else:
            return now - self.since >= self.period
        return False


class _Branches:
    """How many branches of a concurrent block can still act: neither finished nor waiting
    for a report. When none can, a report that has not come will not come by itself."""

    def __init__(self, count: int):
        self._active = count
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def waiting(self):
        with self._lock:
            self._active -= 1
        try:
            yield
        finally:
            with self._lock:
                self._active += 1

    def finished(self) -> None:
        with self._lock:
            self._active -= 1

    def none_active(self) -> bool:
        with self._lock:
            return self._active == 0


class _Paused:
    """Context manager: the vCPU's thread is outside KVM_RUN inside the block."""

    def __init__(self, worker):
        self.worker = worker

    def __enter__(self):
        if self.worker is not None:
            self.worker.pause()

    def __exit__(self, *exc):
        if self.worker is not None:
            self.worker.resume()


# Operations by kind: the kvm side's one dispatch table (kvmtest.sim.system.HOST_OPS is the
# model's); every kind of kvmtest.ops has an entry in both.
_PERFORM = {
    "msi": KvmSide.msi,
    "observe": KvmSide.observe_op,
    "get_mp_state": KvmSide.get_mp_state,
    "set_mp_state": KvmSide.set_mp_state,
    "set_vcpu_events": KvmSide.set_vcpu_events,
    "set_lapic": KvmSide.set_lapic,
    "set_regs": KvmSide.set_regs,
    "set_sregs": KvmSide.set_sregs,
    "set_msrs": KvmSide.set_msrs,
    "smi": KvmSide.smi,
    "nmi": KvmSide.nmi,
    "icr": KvmSide.guest,
    "guest": KvmSide.guest,
    "smp_boot": KvmSide.smp_boot,
    "guest_ran": KvmSide.guest_ran,
    "snapshot": KvmSide.snapshot,
    "restore": KvmSide.restore,
}
