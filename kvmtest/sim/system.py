"""The simulated system: the reference model, the stepper guest, and where every thread is.

Theory of operation
===================

What real KVM runs is a VM (``reference.Machine`` models it), guest code on each vCPU (the
stepper image, ``guests/src/stepper.s``) and one userspace thread per vCPU plus the host's
thread. ``System`` models all three, so that every scheduler sees the same machine:
``schedule.Sequential`` (trace replay: one deterministic order) and ``explore.Explorer`` (every
order of a concurrent block) differ only in which enabled move they take next.

*Programs.* Each operation (``kvmtest.ops``) becomes a short program of atomic **moves** for the
thread that performs it (``program``): a stepper command is "enter KVM_RUN, the guest runs,
the guest acts, the guest reports"; a guest HLT is two moves (the VM exit, then
``kvm_emulate_halt``), because the pre-3.10 race of docs/semantics.md section e lives between
them; a host ioctl is one move. Threads run their programs in order.

*Reactions.* Besides the programs, threads react by themselves: KVM inside a thread
(``kvm:vcpuN``) wakes from ``kvm_vcpu_block`` or processes a request before it enters the guest
(``Machine.pending_steps``); userspace re-enters KVM_RUN after -EINTR/-EAGAIN; the stepper
guest reports when it runs from a SIPI landing page, the reset vector or past its HLT
(``report``). A report that answers a command ends that command's program.

*Enabled moves.* ``enabled()`` lists every move that can happen now; ``apply(move)`` performs
one and returns what it showed ({(vcpu, field): value}). A guest instruction needs its vCPU in
guest mode on its own code path (registers the model knows mean the guest was moved to a reset
vector or a landing page and runs that instead); no guest code starts while a request is
pending (KVM handles it before entering the guest). A vCPU ioctl from the host kicks the vCPU's
thread out of KVM_RUN, performs the ioctl and lets the thread re-enter, as the harness does.

``clone()`` and ``key()`` (hashable) let an explorer merge equal states: the future depends
only on the machine, the program counters, who waits for a report and the wake-up reports so
far.
"""

from __future__ import annotations

from typing import NamedTuple

import reference
from kvmtest import ops as f
from kvmtest.guest import layout
from kvmtest.guest.protocol import COMMAND_ACKS, COMMAND_REPORTS
from reference import GUEST, Machine, Phase, RunResult

DELIVERY_NAMES = {v: k.upper() for k, v in f.DELIVERY_MODES.items()}


class VcpuView(NamedTuple):
    """One vCPU as the model sees it at a point of a trace (what `kvmtest show` prints)."""

    vcpu: int
    mp_state: object  # MpState, or a bare int the kernel stores as is
    thread: str  # "guest code", "blocked in KVM_RUN", "outside KVM_RUN"
    pending: str  # "INIT", "SIPI", "INIT+SIPI" or ""
    sipi_vector: int
    cs_selector: object  # int, or GUEST when the guest ran code since the last reset
    rip: object
    command: str  # the stepper command in progress, or ""


THREAD_WORDS = {
    Phase.OUT: "outside KVM_RUN",
    Phase.GUEST: "guest code",
    Phase.BLOCKED: "blocked in KVM_RUN",
    Phase.U_BLOCK: "blocked in KVM_RUN",
    Phase.HALT_EXIT: "in KVM (HLT exit)",
}


class Move(NamedTuple):
    """One atomic move. ``thread``: "host", "vcpuN" (its program, or the stepper reacting) or
    "kvm:vcpuN" (KVM inside that thread). ``end``: the program counter after the command this
    move belongs to; ``command``: that command's name."""

    thread: str
    op: str
    args: tuple
    label: str
    end: int = 0
    command: str = ""


def restart_report(machine, vcpu: int) -> str | None:
    """What the stepper reports when the vCPU runs next, if an INIT or SIPI moved it since the
    guest last ran: "sipi 0x10" (a landing page) or "reset" (the reset ROM); GUEST where the
    model cannot tell where it lands; else None.
    Registers the model knows mean exactly that, because guest_runs makes them all GUEST."""
    regs = machine.vcpus[vcpu].regs
    if regs["rip"] is GUEST:
        return None
    cs = regs["cs"]
    if regs["rip"] == 0:
        if cs is not GUEST and not isinstance(cs.selector, int):
            return GUEST  # the host set RIP alone (KVM_SET_REGS): CS is the guest's, who knows
        vector = machine.vcpus[vcpu].sipi_vector if cs is GUEST else cs.selector >> 8
        return f"sipi {vector:#x}"
    if cs is not GUEST and cs.selector == 0xF000 and regs["rip"] == 0xFFF0:
        return "reset"
    return None


def flatten_sregs(sregs: dict) -> dict:
    """{'cs': {'base': ..}} -> {'cs.base': ..}; cr0 as is."""
    out = {}
    for name in f.SEGMENTS:
        for field, value in sregs[name].items():
            if field in f.SEGMENT_FIELDS:
                out[f"{name}.{field}"] = value
    for name in f.TABLES:
        for field in ("base", "limit"):
            out[f"{name}.{field}"] = sregs[name][field]
    out["cr0"] = sregs["cr0"]
    return out


def icr_label(value: int, x2apic: bool) -> str:
    """'INIT -> APIC 1', 'SIPI 0x20 -> all-but-self': an ICR or MSI data word for people."""
    mode = DELIVERY_NAMES.get((value >> 8) & 7, "?")
    vector = f" {value & 0xFF:#x}" if mode == "SIPI" else ""
    shorthand = (value >> 18) & 3
    dest = (value >> 32) if x2apic else (value >> 56)
    target = ("", "self", "all", "all-but-self")[shorthand] or f"APIC {dest}"
    return f"{mode}{vector} -> {target}"


# ----------------------------------------------------------------------------------------------
# Operations as programs


def program(op, thread: str, setup: f.Setup, start: int = 0) -> list[Move]:
    """The atomic moves of one operation, performed by `thread`; program counters from
    `start` (so that ``end`` points past this operation in the thread's whole program)."""
    x2apic = setup.apic == "x2apic"
    t = thread
    if op.kind == "icr":
        v = op.vcpu
        moves = _command(t, v, "", "icr")
        moves.append(
            Move(
                t,
                "icr_write",
                (v, op.value),
                f"vcpu{v} guest writes ICR: " + icr_label(op.value, x2apic),
                command="icr",
            )
        )
        moves.append(_report_move(t, v, "icr"))
    elif op.kind == "guest" and op.command == "hlt":
        v = op.vcpu
        moves = _command(t, v, "", "hlt") + [
            Move(t, "hlt_exit", (v,), f"vcpu{v} guest HLT: VM exit, handle_halt", command="hlt"),
            Move(
                t, "emulate_halt", (v,), f"vcpu{v} kvm_emulate_halt writes mp_state", command="hlt"
            ),
            Move(
                t, "wait_report", (v,), f"vcpu{v} stepper waits for its HLT report", command="hlt"
            ),
        ]
    elif op.kind == "guest" and op.command in ("spin", "report", "x2apic"):
        v, command = op.vcpu, op.command
        moves = _command(t, v, f" ({command})", command)
        if command == "x2apic":
            moves.append(
                Move(
                    t, "enable_x2apic", (v,), f"vcpu{v} guest sets APIC_BASE.EXTD", command=command
                )
            )
        moves.append(_report_move(t, v, command))
    elif op.kind == "guest" and op.command == "start":
        v = op.vcpu
        moves = [
            Move(
                t, "start_run", (v,), f"vcpu{v} enters KVM_RUN for the first time", command="start"
            ),
            Move(
                t,
                "wait_report",
                (v,),
                f"vcpu{v} stepper waits for its first report",
                command="start",
            ),
        ]
    else:
        moves = [Move(t, "host", (op,), _host_label(op, t))]
    end = start + len(moves)
    return [m._replace(end=end) for m in moves]


def _command(thread: str, vcpu: int, what: str, command: str) -> list[Move]:
    """How every stepper command starts: the thread enters KVM_RUN, the guest runs."""
    return [
        Move(
            thread,
            "run_entry",
            (vcpu,),
            f"vcpu{vcpu} enters KVM_RUN for its next command",
            command=command,
        ),
        Move(thread, "guest_runs", (vcpu,), f"vcpu{vcpu} guest runs{what}", command=command),
    ]


def _report_move(thread: str, vcpu: int, command: str) -> Move:
    return Move(
        thread,
        "kick_out",
        (vcpu,),
        f"vcpu{vcpu} guest reports (port I/O), leaves KVM_RUN",
        command=command,
    )


def _host_label(op, thread: str) -> str:
    who = "host" if thread == "host" else thread
    if op.kind == "msi":
        what = icr_label(op.data, False).split(" -> ")[0]
        return f"{who} KVM_SIGNAL_MSI {what} -> APIC {(op.address_lo >> 12) & 0xFF}"
    if op.kind == "set_mp_state":
        name = f.MP_STATE_NAMES.get(op.state, op.state)
        return f"{who} KVM_SET_MP_STATE vcpu{op.vcpu} {name}"
    if op.kind == "get_mp_state":
        return f"{who} KVM_GET_MP_STATE vcpu{op.vcpu}"
    return f"{who} {op.kind}"


# ----------------------------------------------------------------------------------------------
# The system


class System:
    """The reference machine, the stepper guest on every vCPU, and each thread's program."""

    def __init__(self, setup: f.Setup, profile, flavour: str, cpuid_1_eax, smm: bool):
        self.setup = setup
        self._vm_facts = (profile, flavour, cpuid_1_eax, smm)
        self.machine = self._fresh_machine()
        self.programs: dict[str, tuple] = {}  # thread -> its moves, in order
        self.pcs: dict[str, int] = {}  # thread -> index of its next move
        self.waiting: frozenset = frozenset()  # vCPUs that report once they run again
        self.landed: frozenset = frozenset()  # (vcpu, how): wake-up reports so far
        # (vcpu, how): a landing (a SIPI page, the reset ROM) the stepper has started to run
        # and will report at its end, although the model no longer knows its registers: it ran
        # part of it, or it took an NMI before its first instruction (the stepper's NMI handler
        # returns at once, guests/src/ivt.inc).
        self.landing: frozenset = frozenset()
        # vCPUs whose stepper strayed (it took an NMI at the reset vector, whose CS base the
        # handler's IRET cannot restore, and hit the tripwire at 0xffff0): it reported the
        # exception and parks in HLT with IF=0 once it runs again, until an INIT or SIPI moves
        # it (guests/src/stepper.s, exception_handler). Its commands never run.
        self.parked: frozenset = frozenset()
        self.reports: list = []  # (vcpu, what) in order, acknowledgements included
        self.saved: list | None = None  # the last snapshot: per vCPU, what the GETs returned
        if setup.guest != "none":
            self._loader_registers()

    def _fresh_machine(self) -> Machine:
        """A new VM as the setup builds it (guest-less part: x2APIC, the APIC map sync)."""
        setup = self.setup
        profile, flavour, cpuid_1_eax, smm = self._vm_facts
        machine = Machine(
            nr_vcpus=setup.vcpus,
            profile=profile,
            flavour=flavour,
            irqchip=setup.irqchip,
            cpuid_1_eax=cpuid_1_eax,
            smm=smm,
        )
        if setup.apic == "x2apic" and setup.guest == "none":
            for vcpu in range(setup.vcpus):
                machine.enable_x2apic(vcpu)  # the host sets APIC_BASE.EXTD
        if setup.sync_apic_map:
            for vcpu in range(setup.vcpus):
                machine.set_lapic(vcpu)
        return machine

    def _loader_registers(self) -> None:
        """Mirror GuestVm's KVM_SET_SREGS/SET_REGS on the BSP: real mode at 0:ENTRY_BSP, FS
        based at the xAPIC page (kvmtest/guest/loader.py)."""
        m = self.machine
        sregs = m.vcpus[0].regs
        segments = {
            name: sregs[name]._replace(selector=0, base=0, limit=0xFFFF)
            for name in ("cs", "ds", "es", "ss", "gs", "fs")
        }
        segments["fs"] = segments["fs"]._replace(base=layout.XAPIC_BASE)
        m.set_sregs(0, **segments)
        m.set_regs(0, rip=layout.ENTRY_BSP, rflags=0x2)

    # ------------------------------------------------------------------ state

    def clone(self) -> System:
        s = System.__new__(System)
        s.__dict__.update(self.__dict__)
        s.machine = self.machine.clone()
        s.programs = dict(self.programs)
        s.pcs = dict(self.pcs)
        s.reports = list(self.reports)
        return s

    def key(self) -> tuple:
        return (
            self.machine.key(),
            tuple(self.pcs.items()),
            self.waiting,
            self.landed,
            self.landing,
            self.parked,
        )

    def load(self, op, thread: str | None = None) -> None:
        """Append `op` to the program of the thread that performs it (default: ``op.thread``).
        A vCPU thread runs one stepper command at a time, as the real stepper does."""
        thread = thread or op.thread
        moves = self.programs.get(thread, ())
        pc = self.pcs.get(thread, 0)
        if pc < len(moves) and thread != "host" and moves[pc].command:
            raise reference.ModelError(f"{thread} is still busy with {moves[pc].command}")
        self.programs[thread] = moves + tuple(program(op, thread, self.setup, len(moves)))
        self.pcs.setdefault(thread, 0)

    def load_branch(self, thread: str, ops) -> None:
        """A concurrent block's branch: all of its operations become the thread's program at
        once (they run one after another, each waiting for its report)."""
        moves = self.programs.pop(thread, ())  # re-inserted: threads list in branch order
        for op in ops:
            moves += tuple(program(op, thread, self.setup, len(moves)))
        self.programs[thread] = moves
        self.pcs.setdefault(thread, 0)

    def busy(self) -> set[int]:
        """vCPUs whose thread is inside a stepper command (entered KVM_RUN for it, not yet
        reported) or waits for its report."""
        return set(self.waiting) | self._mid_command()

    def _mid_command(self) -> set[int]:
        out = set()
        for thread, moves in self.programs.items():
            pc = self.pcs[thread]
            if thread != "host" and pc < len(moves) and moves[pc].command:
                if moves[pc].op not in ("run_entry", "start_run"):
                    out.add(moves[pc].args[0])
        return out

    def view(self) -> tuple[VcpuView, ...]:
        """Every vCPU as the model sees it now."""
        out = []
        for v in self.machine.vcpus:
            thread = f"vcpu{v.index}"
            moves, pc = self.programs.get(thread, ()), self.pcs.get(thread, 0)
            command = moves[pc].command if pc < len(moves) else ""
            pending = "+".join(
                n for n, on in (("INIT", v.pending_init), ("SIPI", v.pending_sipi)) if on
            )
            cs = v.regs["cs"]
            out.append(
                VcpuView(
                    v.index,
                    _mp_state(v.mp_state),
                    THREAD_WORDS[v.phase],
                    pending,
                    v.sipi_vector,
                    cs if cs is GUEST else cs.selector,
                    v.regs["rip"],
                    command,
                )
            )
        return tuple(out)

    def finished(self) -> bool:
        return all(self.pcs[t] >= len(p) for t, p in self.programs.items())

    def stuck(self) -> tuple[str, ...]:
        """Threads that did not finish their program, with the move they wait at."""
        return tuple(
            f"{thread} stuck before: {moves[self.pcs[thread]].label}"
            for thread, moves in self.programs.items()
            if self.pcs[thread] < len(moves)
        )

    # ------------------------------------------------------------------ what can happen now

    def enabled(self) -> list[Move]:
        """Every move that can happen now: programs first (in thread order), then reactions."""
        m = self.machine
        moves = []
        for thread, program_ in self.programs.items():
            pc = self.pcs[thread]
            if pc < len(program_):
                move = program_[pc]
                if move.op == "wait_report":
                    if move.args[0] not in self.waiting:
                        moves.append(move)
                elif self._program_move_enabled(move):
                    moves.append(move)
        reactions = m.pending_steps()
        # KVM processes a pending request (KVM_REQ_EVENT) before it enters the guest, so no guest
        # code starts to run while one is pending; code already running may still act (the kick
        # that forces the VM exit is asynchronous).
        entering = {vcpu for vcpu, name in reactions if name == "guest_event"}
        moves = [mv for mv in moves if not (mv.op == "guest_runs" and mv.args[0] in entering)]
        for vcpu, name in reactions:
            moves.append(Move(f"kvm:vcpu{vcpu}", name, (vcpu,), _reaction_label(vcpu, name)))
        for vcpu in sorted(self.parked - entering):
            v = m.vcpus[vcpu]
            if v.phase == Phase.GUEST and v.mp_state == 0 and v.regs["rip"] is GUEST:
                moves.append(Move(f"vcpu{vcpu}", "park", (vcpu,), f"vcpu{vcpu} parked: HLT, IF=0"))
        mid_command = self._mid_command()
        for vcpu in sorted(mid_command - self.waiting - entering):
            landed = m.vcpus[vcpu].regs["rip"] is not GUEST or self._landing_of(vcpu) is not None
            if m.run_status(vcpu) is RunResult.RUNS and landed:
                moves.append(Move(f"vcpu{vcpu}", "report", (vcpu,), ""))
        for vcpu in sorted((self.waiting | mid_command) - entering):
            status = m.run_status(vcpu)
            if status in (RunResult.EAGAIN, RunResult.EINTR):
                moves.append(
                    Move(
                        f"vcpu{vcpu}",
                        "reenter",
                        (vcpu,),
                        f"vcpu{vcpu} KVM_RUN returned {status}; userspace re-enters",
                    )
                )
            elif status is RunResult.RUNS and vcpu in self.waiting:
                moves.append(Move(f"vcpu{vcpu}", "report", (vcpu,), ""))
        return moves

    def _program_move_enabled(self, move: Move) -> bool:
        vcpus = self.machine.vcpus
        op = move.op
        if op == "host":
            return True
        v = move.args[0]
        phase = vcpus[v].phase
        if op in ("run_entry", "start_run"):
            return phase == Phase.OUT
        if op == "emulate_halt":
            return phase == Phase.HALT_EXIT
        # Guest instructions. After an INIT reset or a SIPI the guest runs the reset ROM or a
        # landing page, not the rest of its command: that is a report, not these moves.
        if self._landing_of(v) is not None or v in self.parked:
            return False  # it runs its landing (past an NMI) or parks, not its command
        return phase == Phase.GUEST and vcpus[v].mp_state == 0 and vcpus[v].regs["rip"] is GUEST

    # ------------------------------------------------------------------ performing a move

    def apply(self, move: Move) -> dict:
        """Perform one enabled move; return what it showed, {(vcpu, field): value}."""
        m = self.machine
        op, args = move.op, move.args
        if move.thread.startswith("kvm:"):
            vcpu = args[0]
            landing = restart_report(m, vcpu)
            nmi = m.vcpus[vcpu].nmi_pending
            m.step(vcpu, op)
            if m.vcpus[vcpu].nmi_pending < nmi and landing not in (None, GUEST):
                if restart_report(m, vcpu) is None:  # the NMI was taken at the landing
                    # A landing page's CS base is selector * 16, which the handler's IRET
                    # reloads as it was; the reset vector's 0xffff0000 is not: after the IRET
                    # the vCPU runs at 0xffff0 instead, which nobody can predict (seed 8).
                    how = landing if landing.startswith("sipi") else GUEST
                    if landing == "reset":
                        how = "stray"  # the tripwire at 0xffff0 (seed 9, trace 827)
                    self._keep_landing(vcpu, how)
            return {}
        if op == "park":
            m.guest_hlt(args[0])
            return {}
        if op == "reenter":
            # The entry alone: what KVM then does in the thread are moves of their own, so an
            # NMI taken at a landing is seen here (seed 24, trace 27168: re-entry after a
            # SET_MP_STATE took the NMI at the reset vector unseen, and the stray went unknown).
            m.apply(reference.Step("run_entry", args))
            return {}
        if op == "report":
            vcpu = args[0]
            how = restart_report(m, vcpu)
            if how is not None:
                # The landing page or reset ROM runs first and reports at its end: a kick in
                # between (a host ioctl, then SET_MP_STATE, say) can stop it before the report
                # (seed 21, trace 49077). The landing is kept to report.
                m.guest_runs(vcpu)
                self.parked -= {vcpu}  # an INIT or SIPI moved it: the stepper runs again
                self._keep_landing(vcpu, how)
                return {}
            self._stepper_reports(vcpu)
            return {}
        self.pcs[move.thread] += 1
        if op == "host":
            return self._host(args[0])
        if op == "start_run":
            m.apply(reference.Step("run_entry", args))
            self.waiting |= {args[0]}  # the stepper reports once the vCPU runs
        elif op == "kick_out":
            self._command_report(args[0], move.command)
        elif op == "icr_write":
            # The stepper writes the ICR in the APIC mode it is in now (MMIO in xAPIC mode, even
            # in an x2APIC trace: an AP the trace never switched, or one an INIT reset).
            count = m.icr_write(args[0], args[1], m.vcpus[args[0]].x2apic_mode)
            if count == "#GP":
                # A WRMSR that faults (#GP, reserved ICR bits, rule 40) lands in the stepper's
                # exception handler, which reports the vector and goes back to its loop.
                self.pcs[move.thread] = move.end
                self._report(args[0], "exception 0xd")
        elif op == "emulate_halt":
            m.apply(reference.Step(op, args))
            self.waiting |= {args[0]}  # the stepper reports once the vCPU runs again
        elif op != "wait_report":
            m.apply(reference.Step(op, args))
        return {}

    def _forget_landing(self, vcpu: int) -> None:
        self.landing = frozenset(x for x in self.landing if x[0] != vcpu)

    def _keep_landing(self, vcpu: int, how: str) -> None:
        self._forget_landing(vcpu)
        self.landing |= {(vcpu, how)}

    def _landing_of(self, vcpu: int):
        """The landing `vcpu` has started to run and will report ("sipi 0x10", "reset",
        "stray" past an NMI at the reset vector, GUEST: one nobody can follow), or None."""
        return next((how for v, how in self.landing if v == vcpu), None)

    def _command_report(self, vcpu: int, command: str) -> None:
        if command == "start" and vcpu == 0 and self.setup.apic == "x2apic":
            self.machine.enable_x2apic(0)  # GuestVm.start() switches the BSP to x2APIC
        self._report(vcpu, COMMAND_REPORTS.get(command, command))

    def _stepper_reports(self, vcpu: int) -> None:
        """The guest runs again on its own (a landing page, the reset ROM, past its HLT, its
        first instructions) and reports; that report answers the command in progress."""
        m = self.machine
        thread = f"vcpu{vcpu}"
        program_, pc = self.programs.get(thread, ()), self.pcs.get(thread, 0)
        command = program_[pc].command if pc < len(program_) else ""
        how = self._landing_of(vcpu)  # registers the model knows were a landing (apply)
        if how == "stray":
            how = GUEST  # the exception report (vector 3 at 0xffff0); then it parks
            self.parked |= {vcpu}
        self._forget_landing(vcpu)
        if how is None:
            how = {"hlt": "hlt", "start": "ready"}.get(command, "woke")
        m.guest_runs(vcpu)
        if how == "ready":
            self._command_report(vcpu, "start")
        else:
            self._report(vcpu, how)
            if how not in COMMAND_ACKS:  # GUEST too: a report nobody can predict
                self.landed |= {(vcpu, how)}
        if pc < len(program_) and program_[pc].op not in ("run_entry", "start_run"):
            self.pcs[thread] = program_[pc].end  # that report answers the command

    def _report(self, vcpu: int, what: str) -> None:
        """The guest reported by port I/O: its thread is out of KVM_RUN."""
        self.machine.kick_out(vcpu)
        self.waiting -= {vcpu}
        self.reports.append((vcpu, what))

    # ------------------------------------------------------------------ host operations

    def _host(self, op) -> dict:
        return HOST_OPS[op.kind](self, op)

    def _paused(self, vcpu: int, function, *args, **kwargs):
        """A vCPU ioctl: kick the thread out of KVM_RUN if it is in (host-findings.md#finding-2)
        and perform. The thread re-enters by itself, later: its ``reenter`` move (KVM_RUN gave
        -EINTR). Not at once: the harness's worker may not be back in KVM_RUN before the host's
        next ioctl on it, which then finds it still out (seed 21, trace 38106:
        a SIPI sent while the thread was out stayed pending into the next SET_MP_STATE)."""
        m = self.machine
        if m.vcpus[vcpu].phase != Phase.OUT:
            m.kick_out(vcpu)
        return function(vcpu, *args, **kwargs)

    def _msi(self, op) -> dict:
        return {(None, "result"): self.machine.signal_msi(op.address_lo, op.address_hi, op.data)}

    def _observe(self, op) -> dict:
        out = {}
        for vcpu in op.vcpus:
            for name, value in self._paused(vcpu, self._read, op.read).items():
                if op.keeps(name):
                    out[(vcpu, name)] = value
        return out

    def _read(self, vcpu: int, read: tuple) -> dict:
        m = self.machine
        out = {}
        for what in read:
            if what == "mp_state":
                out["mp_state"] = int(m.get_mp_state(vcpu))
            elif what == "regs":
                out.update(m.get_regs(vcpu))
            elif what == "sregs":
                out.update(flatten_sregs(m.get_sregs(vcpu)))
            elif what == "events":
                events = m.get_vcpu_events(vcpu)
                out["events.sipi_vector"] = events["sipi_vector"]
                out["events.latched_init"] = events["smi"]["latched_init"]
                out["events.smm"] = events["smi"]["smm"]
            elif what == "lapic":
                for name, value in m.get_lapic(vcpu).items():
                    out[f"lapic.{name}"] = value
            elif what == "msrs":
                out["msr.apic_base"] = m.get_apic_base(vcpu)
        return out

    def _set_regs(self, op) -> dict:
        return {
            (op.vcpu, "result"): self._paused(op.vcpu, self.machine.set_regs, **dict(op.values))
        }

    def _set_sregs(self, op) -> dict:
        """KVM_GET_SREGS, the named fields replaced, KVM_SET_SREGS (apic_base as read)."""
        m = self.machine

        def get_modify_set(vcpu: int) -> int:
            regs, changes = m.vcpus[vcpu].regs, {}
            for name, value in op.values:
                if name == "cr0":
                    changes["cr0"] = value
                    continue
                table, field = name.split(".")
                changes[table] = changes.get(table, regs[table])._replace(**{field: value})
            return m.set_sregs(vcpu, **changes)

        return {(op.vcpu, "result"): self._paused(op.vcpu, get_modify_set)}

    def _set_lapic(self, op) -> dict:
        values = dict(op.registers)
        if "id" in values:  # the raw register: the ID in bits 31:24 but for x2APIC's 32-bit IDs
            raw = values.pop("id")
            v = self.machine.vcpus[op.vcpu]
            values["apic_id"] = raw if v.x2apic_mode and self.machine.x2apic_format else raw >> 24
        return {(op.vcpu, "result"): self._paused(op.vcpu, self.machine.set_lapic, **values)}

    def _set_msrs(self, op) -> dict:
        """KVM_SET_MSRS returns how many MSRs it took: 1, or 0 when KVM refuses the value."""
        ((name, value),) = op.values  # one MSR: IA32_APIC_BASE
        refused = self._paused(op.vcpu, self.machine.set_apic_base, value)
        return {(op.vcpu, "result"): 0 if refused else 1}

    def _snapshot(self, op) -> dict:
        """A VMM's save: the GETs of f.SNAPSHOT_READS on every vCPU, in that order."""
        m, saved, out = self.machine, [], {}
        for vcpu in range(len(m.vcpus)):
            state = {
                "mp_state": int(m.get_mp_state(vcpu)),
                "regs": m.get_regs(vcpu),
                "sregs": m.get_sregs(vcpu),
                "events": m.get_vcpu_events(vcpu),
                "lapic": m.get_lapic(vcpu),
                "msrs": m.get_apic_base(vcpu),
            }
            saved.append(state)
            out[(vcpu, "snapshot.mp_state")] = state["mp_state"]
        self.saved = saved
        return out

    def _restore(self, op) -> dict:
        """A fresh VM, then per vCPU the SETs of ``op.order`` with what the snapshot holds."""
        self.machine = m = self._fresh_machine()
        out = {}
        for vcpu, state in enumerate(self.saved):
            for what in op.order:
                out[(vcpu, f"restore.{what}")] = self._restore_one(m, vcpu, what, state, op)
        return out

    def _restore_one(self, m: Machine, vcpu: int, what: str, state: dict, op) -> int:
        if what == "mp_state":
            return m.set_mp_state(vcpu, op.state_for(vcpu, state["mp_state"]))
        if what == "regs":
            return m.set_regs(vcpu, **state["regs"])
        if what == "sregs":
            sregs = dict(state["sregs"])
            return m.set_sregs(vcpu, **sregs)
        if what == "events":
            events = state["events"]
            smi = events["smi"]
            return m.set_vcpu_events(
                vcpu,
                flags=events["flags"] | reference.profiles.VALID_SIPI_VECTOR,  # as QEMU sets them
                sipi_vector=events["sipi_vector"],
                smm=smi["smm"],
                smi_pending=smi["pending"],
                latched_init=smi["latched_init"],
                nmi_pending=events["nmi_pending"],
            )
        if what == "lapic":
            values = dict(state["lapic"])
            raw = values.pop("id")
            x2apic = m.vcpus[vcpu].x2apic_mode and m.x2apic_format
            return m.set_lapic(vcpu, apic_id=raw if x2apic else raw >> 24, **values)
        if m.set_apic_base(vcpu, state["msrs"]):
            return 0  # KVM_SET_MSRS: how many MSRs it took
        return 1

    def _get_mp_state(self, op) -> dict:
        return {(op.vcpu, "mp_state"): int(self._paused(op.vcpu, self.machine.get_mp_state))}

    def _set_mp_state(self, op) -> dict:
        return {(op.vcpu, "result"): self._paused(op.vcpu, self.machine.set_mp_state, op.state)}

    def _set_vcpu_events(self, op) -> dict:
        m = self.machine
        flags, kwargs = 0, {}
        if op.sipi_vector is not None:
            flags |= reference.profiles.VALID_SIPI_VECTOR
            kwargs["sipi_vector"] = op.sipi_vector
        if op.latched_init is not None or op.smm is not None:
            flags |= reference.profiles.VALID_SMM
            events = self._paused(op.vcpu, m.get_vcpu_events)
            kwargs["smm"] = events["smi"]["smm"] if op.smm is None else op.smm
            kwargs["smi_pending"] = events["smi"]["pending"]
            latched = events["smi"]["latched_init"]
            kwargs["latched_init"] = latched if op.latched_init is None else op.latched_init
        result = self._paused(op.vcpu, m.set_vcpu_events, flags=flags, **kwargs)
        return {(op.vcpu, "result"): result}

    def _guest_ran(self, op) -> dict:
        """A recorded KVM_RUN: the thread enters (KVM processes what is pending; from U it
        returns -EAGAIN and the VMM calls again), runs guest code if the vCPU is runnable
        (registers GUEST), and is out again before the next step."""
        m, v = self.machine, op.vcpu

        def ran(vcpu: int) -> None:
            for _ in range(3):
                status = m.enter_run(vcpu)
                if status is RunResult.RUNS:
                    m.guest_runs(vcpu)
                if status in (RunResult.RUNS, RunResult.BLOCKED):
                    m.kick_out(vcpu)
                if m.vcpus[vcpu].last_exit is not RunResult.EAGAIN:
                    return

        self._paused(v, ran)
        return {}

    def _smp_boot(self, op) -> dict:
        """What guests/src/smp.s does, with every AP reacting as soon as it can: the BSP sends
        INIT-SIPI-SIPI per APIC ID (or INIT and SIPI to all-but-self); each AP lands, counts
        itself online and parks in HLT. The end state does not depend on the timing."""
        m, x2apic = self.machine, self.setup.apic == "x2apic"
        aps = range(1, len(m.vcpus))
        for ap in aps:
            m.enter_run(ap)
        m.enter_run(0)
        m.guest_runs(0)
        if x2apic:
            m.enable_x2apic(0)
        online = 0

        def send(low: int, dest: int) -> None:
            nonlocal online
            m.icr_write(0, (dest << 32 if x2apic else dest << 56) | low, x2apic)
            online += self._smp_settle(aps)

        if op.broadcast:
            send(0x000C4500, 0)
            send(0x000C4600 | op.vector, 0)
        else:
            for ap in aps:
                send(0x00004500, ap)
                send(0x00004600 | op.vector, ap)
                send(0x00004600 | op.vector, ap)
        for vcpu in [0, *aps]:  # smp_boot() stops every thread after the BSP's report
            m.kick_out(vcpu)
        return {(None, "smp.online"): online, (None, "smp.expected"): len(aps)}

    def _smp_settle(self, aps) -> int:
        """Let every AP react to the last IPI; returns how many came online meanwhile."""
        m, online = self.machine, 0
        for _ in range(16 * len(m.vcpus)):
            m.settle()
            moved = False
            for ap in aps:
                status = m.run_status(ap)
                if status in (RunResult.EAGAIN, RunResult.EINTR):
                    m.enter_run(ap)
                    moved = True
                elif status is RunResult.RUNS:
                    if m.vcpus[ap].regs["rip"] == 0:
                        online += 1  # landed: lock incw SMP_ONLINE
                    m.guest_runs(ap)
                    m.guest_hlt(ap)  # PARK
                    moved = True
            if not moved:
                return online
        raise reference.ModelError("smp boot: the APs do not settle")


def _vcpu_ioctl(name: str):
    """A host operation that is one vCPU ioctl whose return value is all it shows."""

    def perform(system: System, op) -> dict:
        return {(op.vcpu, "result"): system._paused(op.vcpu, getattr(system.machine, name))}

    return perform


# Host operations by kind: what the host's thread does for each (the one dispatch table).
HOST_OPS = {
    "msi": System._msi,
    "observe": System._observe,
    "get_mp_state": System._get_mp_state,
    "set_mp_state": System._set_mp_state,
    "set_vcpu_events": System._set_vcpu_events,
    "set_lapic": System._set_lapic,
    "set_regs": System._set_regs,
    "set_sregs": System._set_sregs,
    "set_msrs": System._set_msrs,
    "smi": _vcpu_ioctl("smi"),
    "nmi": _vcpu_ioctl("nmi"),
    "smp_boot": System._smp_boot,
    "guest_ran": System._guest_ran,
    "snapshot": System._snapshot,
    "restore": System._restore,
}


def _mp_state(value):
    try:
        return reference.MpState(value)
    except ValueError:
        return value


def _reaction_label(vcpu: int, name: str) -> str:
    return {
        "guest_event": f"vcpu{vcpu} (in KVM) processes KVM_REQ_EVENT before entering the guest",
        "wake": f"vcpu{vcpu} (in KVM) wakes from kvm_vcpu_block",
        "wake_uninit": f"vcpu{vcpu} (in KVM) wakes in the UNINITIALIZED branch",
        "exit_event": f"vcpu{vcpu} exits early (a host interrupt); KVM processes the event "
        "that waited for its next exit (a self-sent INIT, SIPI or NMI, a second NMI)",
    }.get(name, f"vcpu{vcpu} (in KVM) {name}")
