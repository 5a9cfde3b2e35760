"""Running a VMM under ptrace and writing down its KVM ioctls.

The child is forked, asks to be traced (PTRACE_TRACEME), stops itself, installs the seccomp
filter of bpf.py and execs the VMM. Before it goes on, the recorder sets the ptrace options:
TRACESECCOMP (the filter's TRACE becomes a PTRACE_EVENT_SECCOMP stop at syscall entry),
TRACECLONE/FORK/VFORK/EXEC (every thread and child is followed), TRACESYSGOOD (syscall-exit
stops are told apart from SIGTRAP) and EXITKILL (the VMM dies if the recorder does).

At a seccomp stop the recorder reads the registers (fd, request, argument pointer) and, for an
_IOW ioctl, the struct it points to (/proc/TID/mem); it then lets the call run to its
syscall-exit stop, where it reads the result and, for an _IOR ioctl, the struct the kernel
filled. KVM_RUN is let through without a stop unless `all_ioctls`.

Where guest code ran: with `all_ioctls` every KVM_RUN entry marks its vCPU. Without it the
recorder reads, and never writes, the VMM's memory (RunWatch): at each recorded ioctl of a VM
it marks the vCPUs whose kvm_run page shows a new exit since the last look; a vCPU is also
marked when its thread is seen kicked out of KVM_RUN at a signal-delivery stop (orig_rax is
the ioctl, rsi KVM_RUN). A marked vCPU becomes one `guest_ran` step before the next recorded
step. A KVM_RUN that only returned -EAGAIN, or ended with the same exit as the one before,
is seen only with `all_ioctls` (or by the signal).

Decoding waits until the VMM has exited: at a stop the recorder copies the argument's bytes
(the size is in the request number), and construct parses them afterwards, so the VMM starts
before construct is imported.

python-ptrace's own process objects wait per pid with a growing sleep and without __WALL, which
made a two-vCPU guest 100 times slower; the recorder uses its ptrace() bindings and runs one
waitpid(-1, __WALL) loop of its own.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from ptrace.binding import func as pt

from . import bpf
from .ioctls import BY_NAME, IOCTLS, KVM_RUN, STEP_IOCTLS, argument_size, decode, name_of

PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_SECCOMP = 7
WALL = 0x40000000
NR_IOCTL = 16
OPTIONS = (
    pt.PTRACE_O_TRACESYSGOOD
    | pt.PTRACE_O_TRACECLONE
    | pt.PTRACE_O_TRACEFORK
    | pt.PTRACE_O_TRACEVFORK
    | pt.PTRACE_O_TRACEEXEC
    | PTRACE_O_TRACESECCOMP
    | PTRACE_O_EXITKILL
)


class RecordError(RuntimeError):
    """The VMM could not be started or traced."""


@dataclass
class Event:
    """One KVM ioctl as the VMM made it, or a `guest_ran` mark (name "KVM_RUN")."""

    at: float  # seconds since the VMM started
    tid: int
    name: str
    vm: int | None  # index of the VM (order of KVM_CREATE_VM), None: not a VM's fd
    vcpu: int | None  # index of the vCPU in its VM (order of KVM_CREATE_VCPU)
    arg: object = None  # the decoded struct the VMM passed (_IOW), or the plain argument
    out: object = None  # the decoded struct the kernel filled (_IOR)
    result: int = 0  # the syscall's return value (-errno on failure)


@dataclass
class Recording:
    argv: list
    events: list = field(default_factory=list)
    exit_status: int | None = None  # the VMM's exit code, or -signal
    stops: int = 0  # ptrace stops taken for KVM ioctls
    counts: dict = field(default_factory=dict)  # ioctl name -> how many stopped at
    vcpus: dict = field(default_factory=dict)  # vm -> number of vCPUs
    split_irqchip: set = field(default_factory=set)  # VMs with KVM_CAP_SPLIT_IRQCHIP
    all_ioctls: bool = False
    duration: float = 0.0
    inference: str = ""  # how guest_ran was inferred without all_ioctls (tracer.py)


class _Pending:
    __slots__ = ("at", "fd", "request", "pointer", "arg")

    def __init__(self, at, fd, request, pointer, arg):
        self.at, self.fd, self.request, self.pointer, self.arg = at, fd, request, pointer, arg


# kvm_run from exit_reason (offset 8) to the end of the exit union (offset 32 + 256): what KVM
# writes on every return from KVM_RUN to userspace.
RUN_EXIT_AREA = (8, 32 + 256 - 8)


class RunWatch:
    """Which vCPUs went through KVM_RUN since the last look, by reading only: each vCPU's
    kvm_run page (read through /proc/TGID/mem) holds the exit reason and the exit union KVM
    wrote when KVM_RUN last returned; if they differ from what the last look saw, KVM_RUN
    returned in between. Two identical exits in a row look like one (--all-ioctls is exact).

    Exact counters were looked for and are not to be had from outside the VMM: KVM refuses a
    vCPU ioctl such as KVM_GET_STATS_FD from another process (EIO, even on a pidfd_getfd copy
    of the fd), and debugfs holds the `exits` statistic per VM, not per vCPU. Nor is writing
    a marker safe (the recorder once wrote KVM_EXIT_UNKNOWN, 0, over exit_reason after each
    look): QEMU reads exit_reason right after KVM_RUN returns 0, so a vCPU that exits between
    the recorder's read and its write has QEMU see KVM_EXIT_UNKNOWN: it prints "KVM: unknown
    exit, hardware reason 0" and stops the VM (accel/kvm/kvm-all.c, kvm_cpu_exec)."""

    def __init__(self):
        self.pages: dict = {}  # key -> (tgid, address of kvm_run)
        self.wanted: dict = {}  # key -> (tgid, vCPU id), until its kvm_run is found
        self.last: dict = {}  # key -> the exit area at the last look

    def add(self, key, tgid: int, vcpu_id: int) -> None:
        """A new vCPU; the VMM maps its kvm_run after creating it: found at the first look."""
        self.wanted[key] = (tgid, vcpu_id)
        self.last[key] = bytes(RUN_EXIT_AREA[1])  # KVM zeroes the page

    def moved(self, key, read) -> bool:
        """Did KVM_RUN return since the last look? `read(tgid, address, size)` reads the
        VMM's memory."""
        if key in self.wanted:
            address = _run_page(*self.wanted[key])
            if address is None:
                return False
            self.pages[key] = (self.wanted.pop(key)[0], address)
        if key not in self.pages:
            return False
        tgid, address = self.pages[key]
        now = read(tgid, address + RUN_EXIT_AREA[0], RUN_EXIT_AREA[1])
        moved, self.last[key] = now != self.last[key], now
        return moved


def _run_page(tgid: int, vcpu_id: int):
    """Where the VMM mapped the vCPU's kvm_run (its mapping of the vCPU fd)."""
    try:
        with open(f"/proc/{tgid}/maps", "rb") as file:
            for line in file:
                if line.rstrip().endswith(b"anon_inode:kvm-vcpu:%d" % vcpu_id):
                    return int(line.split(b"-", 1)[0], 16)
    except OSError:
        pass
    return None


class Recorder:
    def __init__(self, argv: list, all_ioctls: bool = False):
        if not argv:
            raise RecordError("no command to record")
        self.argv = list(argv)
        self.all_ioctls = all_ioctls
        self.rec = Recording(self.argv, all_ioctls=all_ioctls)
        self.t0 = 0.0
        self.fds: dict = {}  # (tgid, fd) -> ("vm", vm) | ("vcpu", vm, vcpu)
        self.tgids: dict = {}  # tid -> tgid
        self.mem: dict = {}  # tid -> fd of /proc/TID/mem
        self.pending: dict = {}  # tid -> _Pending (between syscall entry and exit)
        self.vcpu_threads: dict = {}  # tid -> (vm, vcpu)
        self.ran: dict = {}  # (vm, vcpu) -> tid, marked since the last recorded step
        self.runs = RunWatch()
        self.nr_vms = 0

    # ------------------------------------------------------------------ the loop

    def run(self, meanwhile=None) -> Recording:
        """Record the VMM; `meanwhile()` is called in the recorder once the VMM is forked."""
        prog = bpf.program(self.all_ioctls)
        pid = os.fork()
        if pid == 0:  # the child: be traced, stop, filter, exec
            try:
                pt.ptrace_traceme()
                os.kill(os.getpid(), signal.SIGSTOP)
                bpf.install(prog)
                os.execvp(self.argv[0], self.argv)
            except BaseException as exc:  # noqa: BLE001 - anything: report and leave
                os.write(2, f"kvmtest record: cannot run {self.argv[0]}: {exc}\n".encode())
            os._exit(127)
        if meanwhile is not None:
            meanwhile()
        try:
            self._loop(pid)
        finally:
            for fd in self.mem.values():
                os.close(fd)
            self.mem.clear()
        self.rec.duration = time.monotonic() - self.t0
        for (vm, vcpu), tid in self.ran.items():  # runs after the last recorded step
            self.rec.events.append(Event(self.rec.duration, tid, "KVM_RUN", vm, vcpu))
        self.ran.clear()
        if not self.all_ioctls:
            found = len(self.runs.pages)
            self.rec.inference = (
                f"kvm_run pages read ({found} of {sum(self.rec.vcpus.values())} vCPUs) and "
                "signal-delivery stops"
            )
        _decode(self.rec.events)
        return self.rec

    def _loop(self, pid: int) -> None:
        _, status = os.waitpid(pid, WALL)
        if not os.WIFSTOPPED(status):
            raise RecordError(f"{self.argv[0]}: the child did not stop for the tracer")
        pt.ptrace_setoptions(pid, OPTIONS)
        self.t0 = time.monotonic()
        seen = {pid}  # tids whose first stop (SIGSTOP of a new thread) has arrived
        live = {pid}
        pt.ptrace_cont(pid, 0)
        while live:
            try:
                tid, status = os.waitpid(-1, WALL)
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                live.discard(tid)
                self._forget(tid)
                if tid == pid:
                    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
                    self.rec.exit_status = code if code is not None else -os.WTERMSIG(status)
                continue
            if not os.WIFSTOPPED(status):
                continue
            sig, event = os.WSTOPSIG(status), status >> 16
            try:
                if event == PTRACE_EVENT_SECCOMP:
                    self._entry(tid)
                elif event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, 3):
                    live.add(pt.ptrace_geteventmsg(tid))
                    pt.ptrace_cont(tid, 0)
                elif event:
                    if event == pt.PTRACE_EVENT_EXEC:
                        self._forget(tid)
                    pt.ptrace_cont(tid, 0)
                elif sig == signal.SIGTRAP | 0x80:
                    self._exit(tid)
                elif tid not in seen:
                    seen.add(tid)
                    live.add(tid)
                    pt.ptrace_cont(tid, 0 if sig == signal.SIGSTOP else sig)
                else:
                    if tid in self.vcpu_threads:
                        self._signalled(tid)
                    pt.ptrace_cont(tid, sig)
            except pt.PtraceError as exc:
                if exc.errno != 3:  # ESRCH: the thread died meanwhile (SIGKILL, exit_group)
                    raise

    # ------------------------------------------------------------------ stops

    def _entry(self, tid: int) -> None:
        self.rec.stops += 1
        regs = pt.ptrace_getregs(tid)
        fd, request, pointer = regs.rdi & 0xFFFFFFFF, regs.rsi & 0xFFFFFFFF, regs.rdx
        if request == KVM_RUN:  # only with all_ioctls
            self.rec.counts["KVM_RUN"] = self.rec.counts.get("KVM_RUN", 0) + 1
            where = self.fds.get((self._tgid(tid), fd))
            if where is not None and where[0] == "vcpu":
                self._mark((where[1], where[2]), tid)
                self.vcpu_threads[tid] = (where[1], where[2])
            pt.ptrace_cont(tid, 0)
            return
        info = IOCTLS.get(request)
        arg = pointer
        if info is not None and info.writes:
            arg = self._read_struct(tid, info, pointer)
        self.pending[tid] = _Pending(time.monotonic() - self.t0, fd, request, pointer, arg)
        pt.ptrace_syscall(tid, 0)

    def _exit(self, tid: int) -> None:
        self.rec.stops += 1
        call = self.pending.pop(tid, None)
        if call is None:  # a syscall-exit stop we did not ask for
            pt.ptrace_cont(tid, 0)
            return
        regs = pt.ptrace_getregs(tid)
        result = regs.rax - (1 << 64) if regs.rax >= 1 << 63 else regs.rax
        info = IOCTLS.get(call.request)
        out = None
        if info is not None and info.reads and result >= 0:
            out = self._read_struct(tid, info, call.pointer)
        pt.ptrace_cont(tid, 0)
        self._record(tid, call, info, out, result)

    def _signalled(self, tid: int) -> None:
        """A signal-delivery stop of a vCPU thread: was it just kicked out of KVM_RUN?"""
        regs = pt.ptrace_getregs(tid)
        if regs.orig_rax == NR_IOCTL and regs.rsi & 0xFFFFFFFF == KVM_RUN:
            self._mark(self.vcpu_threads[tid], tid)

    # ------------------------------------------------------------------ what a call means

    def _record(self, tid: int, call: _Pending, info, out, result: int) -> None:
        rec = self.rec
        name = name_of(call.request)
        rec.counts[name] = rec.counts.get(name, 0) + 1
        tgid = self._tgid(tid)
        where = self.fds.get((tgid, call.fd))
        vm = vcpu = None
        if where is not None:
            vm = where[1]
            vcpu = where[2] if where[0] == "vcpu" else None
        if name == "KVM_CREATE_VM" and result >= 0:
            vm = self.nr_vms
            self.nr_vms += 1
            self.fds[(tgid, result)] = ("vm", vm)
            rec.vcpus[vm] = 0
        elif name == "KVM_CREATE_VCPU" and result >= 0 and vm is not None:
            vcpu = rec.vcpus[vm]
            rec.vcpus[vm] += 1
            self.fds[(tgid, result)] = ("vcpu", vm, vcpu)
            self.vcpu_threads[tid] = (vm, vcpu)
            if not self.all_ioctls:
                self.runs.add((vm, vcpu), tgid, call.pointer)  # the argument is the vCPU id
        elif name == "KVM_ENABLE_CAP" and vm is not None and result == 0:
            if isinstance(call.arg, bytes) and call.arg[:4] == (121).to_bytes(4, "little"):
                rec.split_irqchip.add(vm)
        if vm is None or name not in STEP_IOCTLS:
            return
        if vcpu is not None:
            self.vcpu_threads.setdefault(tid, (vm, vcpu))
        self._check_runs(vm)
        for (ran_vm, ran_vcpu), ran_tid in self.ran.items():
            rec.events.append(Event(call.at, ran_tid, "KVM_RUN", ran_vm, ran_vcpu))
        self.ran.clear()
        arg = call.arg if info is not None and info.writes else None
        rec.events.append(Event(call.at, tid, name, vm, vcpu, arg, out, result))

    def _mark(self, key, tid: int) -> None:
        if key not in self.ran:
            self.ran[key] = tid

    def _check_runs(self, vm: int) -> None:
        """Which vCPUs of `vm` went through KVM_RUN since the last look (RunWatch)."""
        for vcpu in range(self.rec.vcpus.get(vm, 0)):
            try:
                if self.runs.moved((vm, vcpu), self._read):
                    self._mark((vm, vcpu), self._vcpu_tid((vm, vcpu)))
            except OSError:
                continue

    def _vcpu_tid(self, key) -> int:
        return next((t for t, k in self.vcpu_threads.items() if k == key), 0)

    # ------------------------------------------------------------------ helpers

    def _read_struct(self, tid: int, info, pointer: int):
        """The argument's bytes (decoded after the VMM exits), None if unreadable."""
        try:
            head = self._read(tid, pointer, 8) if info.layout == "kvm_msrs" else None
            return self._read(tid, pointer, argument_size(info, head))
        except OSError:
            return None

    def _read(self, tid: int, address: int, size: int) -> bytes:
        fd = self.mem.get(tid)
        if fd is None:
            fd = self.mem[tid] = os.open(f"/proc/{tid}/mem", os.O_RDONLY)  # never written
        data = os.pread(fd, size, address)
        if len(data) != size:
            raise OSError(f"short read of {size} bytes at {address:#x}")
        return data

    def _tgid(self, tid: int) -> int:
        tgid = self.tgids.get(tid)
        if tgid is None:
            try:
                with open(f"/proc/{tid}/status") as file:
                    for line in file:
                        if line.startswith("Tgid:"):
                            tgid = int(line.split()[1])
                            break
            except OSError:
                pass
            tgid = self.tgids[tid] = tgid or tid
        return tgid

    def _forget(self, tid: int) -> None:
        fd = self.mem.pop(tid, None)
        if fd is not None:
            os.close(fd)
        self.tgids.pop(tid, None)
        self.vcpu_threads.pop(tid, None)
        self.pending.pop(tid, None)


def _decode(events) -> None:
    """The bytes copied at the stops, parsed (construct is imported here, after the run)."""
    for event in events:
        info = BY_NAME.get(event.name)
        if info is None or info.layout is None and info.name != "KVM_ENABLE_CAP":
            continue
        for attr in ("arg", "out"):
            data = getattr(event, attr)
            if isinstance(data, bytes):
                try:
                    setattr(event, attr, decode(info, data))
                except ValueError:
                    setattr(event, attr, None)


def record(argv: list, all_ioctls: bool = False, meanwhile=None) -> Recording:
    return Recorder(argv, all_ioctls).run(meanwhile)
