"""The model side of a replay: every trace step applied to reference.Machine.

It mirrors what the real harness does, operation by operation, including what the stepper guest
does by itself: a vCPU that the model says is running guest code runs up to its next report (a
landing-page report after a SIPI, a reset report after an INIT restart, the HLT report after a
wake-up) and leaves KVM_RUN there. Those predicted reports are what kvm_side must then receive.
"""

import reference
from kvmtest import ops as f
from reference import GUEST, Machine, RunResult

# Guest commands and the report the stepper sends when it finishes one normally.
COMMAND_REPORTS = {"start": "ready", "x2apic": "x2apic", "spin": "spin", "report": "cs_ip"}


def restart_report(machine, vcpu: int) -> str | None:
    """What the stepper reports when the vCPU runs next, if an INIT or SIPI moved it since the
    guest last ran: "sipi 0x10" (a landing page) or "reset" (the reset ROM); else None.
    Registers the model knows mean exactly that, because guest_runs makes them all GUEST."""
    regs = machine.vcpus[vcpu].regs
    if regs["rip"] is GUEST:
        return None
    cs = regs["cs"]
    if regs["rip"] == 0:
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


class ModelSide:
    name = "reference"

    def __init__(self, trace: f.Trace, profile: str, flavour: str, cpuid_1_eax, smm: bool):
        setup = trace.setup
        self.setup = setup
        self.machine = Machine(
            nr_vcpus=setup.vcpus,
            profile=profile,
            flavour=flavour,
            irqchip=setup.irqchip,
            cpuid_1_eax=cpuid_1_eax,
            smm=smm,
        )
        self.inside = set()  # vCPUs whose thread is inside KVM_RUN (a command in progress)
        self.command = {}  # vCPU -> the stepper command in progress
        if setup.apic == "x2apic" and setup.guest == "none":
            for vcpu in range(setup.vcpus):
                self.machine.enable_x2apic(vcpu)  # the host sets APIC_BASE.EXTD
        if setup.sync_apic_map:
            for vcpu in range(setup.vcpus):
                self.machine.set_lapic(vcpu)
        if setup.guest != "none":
            self._loader_registers()

    def _loader_registers(self) -> None:
        """Mirror GuestVm's KVM_SET_SREGS/SET_REGS on the BSP: real mode at 0:ENTRY_BSP, FS
        based at the xAPIC page (kvmtest/guest/loader.py)."""
        from kvmtest import guest

        m = self.machine
        sregs = m.vcpus[0].regs
        segments = {
            name: sregs[name]._replace(selector=0, base=0, limit=0xFFFF)
            for name in ("cs", "ds", "es", "ss", "gs", "fs")
        }
        segments["fs"] = segments["fs"]._replace(base=guest.XAPIC_BASE)
        m.set_sregs(0, **segments)
        m.set_regs(0, rip=guest.ENTRY_BSP, rflags=0x2)

    # --- host ioctls ---------------------------------------------------------------------------

    def msi(self, step: f.Msi) -> dict:
        return {
            (None, "result"): self.machine.signal_msi(step.address_lo, step.address_hi, step.data)
        }

    def observe(self, vcpu: int, read: tuple) -> dict:
        m = self.machine
        resume = self._pause(vcpu)
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
        if resume:
            self._resume(vcpu)
        return out

    def get_mp_state(self, vcpu: int) -> dict:
        resume = self._pause(vcpu)
        value = int(self.machine.get_mp_state(vcpu))
        if resume:
            self._resume(vcpu)
        return {(vcpu, "mp_state"): value}

    def set_mp_state(self, vcpu: int, state: int) -> dict:
        return {(vcpu, "result"): self._paused(vcpu, self.machine.set_mp_state, state)}

    def set_vcpu_events(self, step: f.SetVcpuEvents) -> dict:
        flags, kwargs = 0, {}
        if step.sipi_vector is not None:
            flags |= reference.profiles.VALID_SIPI_VECTOR
            kwargs["sipi_vector"] = step.sipi_vector
        if step.latched_init is not None or step.smm is not None:
            flags |= reference.profiles.VALID_SMM
            events = self._paused(step.vcpu, self.machine.get_vcpu_events)
            kwargs["smm"] = events["smi"]["smm"] if step.smm is None else step.smm
            kwargs["smi_pending"] = events["smi"]["pending"]
            latched = events["smi"]["latched_init"]
            kwargs["latched_init"] = latched if step.latched_init is None else step.latched_init
        result = self._paused(step.vcpu, self.machine.set_vcpu_events, flags=flags, **kwargs)
        return {(step.vcpu, "result"): result}

    def set_lapic(self, vcpu: int) -> dict:
        return {(vcpu, "result"): self._paused(vcpu, self.machine.set_lapic)}

    def smi(self, vcpu: int) -> dict:
        return {(vcpu, "result"): self._paused(vcpu, self.machine.smi)}

    def nmi(self, vcpu: int) -> dict:
        return {(vcpu, "result"): self._paused(vcpu, self.machine.nmi)}

    # --- guest commands ------------------------------------------------------------------------

    def guest(self, step) -> dict:
        """A stepper command: the vCPU's thread enters KVM_RUN and the guest acts."""
        m, vcpu = self.machine, step.vcpu
        if vcpu in self.inside:
            raise reference.ModelError(f"vCPU {vcpu} is still busy with {self.command[vcpu]}")
        kind = "icr" if isinstance(step, f.Icr) else step.command
        self.command[vcpu] = kind
        self.inside.add(vcpu)
        result = m.enter_run(vcpu)
        if result is not RunResult.RUNS:
            return {}  # blocked (an AP not yet started) or refused: reports come later
        if self._reset_or_landing(vcpu):
            return {}  # the INIT/SIPI pending at entry wins over the command
        m.guest_runs(vcpu)
        if kind == "icr":
            count = m.icr_write(vcpu, step.value, self.setup.apic == "x2apic")
            # A WRMSR that faults (#GP, reserved ICR bits, rule 40) lands in the stepper's
            # exception handler, which reports the vector and goes back to its loop.
            self._report(vcpu, "exception 0xd" if count == "#GP" else "icr")
            return {}
        if kind == "x2apic":
            m.enable_x2apic(vcpu)
        if kind == "hlt":
            m.guest_hlt(vcpu)
            if m.run_status(vcpu) is RunResult.RUNS:  # HLT with events pending: no sleep
                self._report(vcpu, "hlt")
            return {}
        if kind == "start" and vcpu == 0 and self.setup.apic == "x2apic":
            m.enable_x2apic(0)  # GuestVm.start() switches the BSP to x2APIC
        self._report(vcpu, COMMAND_REPORTS.get(kind, kind))
        return {}

    def _report(self, vcpu: int, what: str) -> None:
        """The guest reported by port I/O: its thread is out of KVM_RUN, the command done."""
        self.machine.kick_out(vcpu)
        self.inside.discard(vcpu)
        self.command.pop(vcpu, None)
        self.reports[vcpu] = what

    def _reset_or_landing(self, vcpu: int) -> bool:
        """If the vCPU now runs from the reset vector or a SIPI landing page, the guest reports
        that; returns True then. Registers the model knows mean a reset or SIPI since the guest
        last ran (guest_runs turns everything into GUEST)."""
        what = restart_report(self.machine, vcpu)
        if what is None:
            return False
        self.machine.guest_runs(vcpu)
        self._report(vcpu, what)
        return True

    def smp_boot(self, step: f.SmpBoot) -> dict:
        """What guests/src/smp.s does, with every AP reacting as soon as it can: the BSP sends
        INIT-SIPI-SIPI per APIC ID (or INIT and SIPI to all-but-self); each AP lands, counts
        itself online and parks in HLT. The end state does not depend on the timing."""
        m, x2apic = self.machine, self.setup.apic == "x2apic"
        aps = range(1, len(m.vcpus))
        for ap in aps:
            m.enter_run(ap)
            self.inside.add(ap)
            self.command[ap] = "smp"
        m.enter_run(0)
        m.guest_runs(0)
        if x2apic:
            m.enable_x2apic(0)
        self.online = 0

        def send(low: int, dest: int) -> None:
            m.icr_write(0, (dest << 32 if x2apic else dest << 56) | low, x2apic)
            self._smp_settle()

        if step.broadcast:
            send(0x000C4500, 0)
            send(0x000C4600 | step.vector, 0)
        else:
            for ap in aps:
                send(0x00004500, ap)
                send(0x00004600 | step.vector, ap)
                send(0x00004600 | step.vector, ap)
        for vcpu in [0, *aps]:  # smp_boot() stops every thread after the BSP's report
            m.kick_out(vcpu)
            self.inside.discard(vcpu)
        return {(None, "smp.online"): self.online, (None, "smp.expected"): len(aps)}

    def _smp_settle(self) -> None:
        m = self.machine
        for _ in range(16 * len(m.vcpus)):
            m.settle()
            moved = False
            for ap in sorted(self.inside):
                status = m.run_status(ap)
                if status in (RunResult.EAGAIN, RunResult.EINTR):
                    m.enter_run(ap)
                    moved = True
                elif status is RunResult.RUNS:
                    if m.vcpus[ap].regs["rip"] == 0:
                        self.online += 1  # landed: lock incw SMP_ONLINE
                    m.guest_runs(ap)
                    m.guest_hlt(ap)  # PARK
                    moved = True
            if not moved:
                return
        raise reference.ModelError("smp boot: the APs do not settle")

    # --- the threads inside KVM_RUN ------------------------------------------------------------

    def begin_step(self) -> None:
        self.reports = {}

    def settle(self) -> dict:
        """Let every thread inside KVM_RUN react; return the reports the step caused."""
        m = self.machine
        for _ in range(4 * len(m.vcpus) + 4):
            m.settle()
            changed = False
            for vcpu in sorted(self.inside):
                status = m.run_status(vcpu)
                if status is RunResult.EAGAIN or status is RunResult.EINTR:
                    m.enter_run(vcpu)  # the stepper re-enters KVM_RUN at once
                    changed = True
                elif status is RunResult.RUNS:
                    if not self._reset_or_landing(vcpu):
                        m.guest_runs(vcpu)  # woken from HLT: the instruction after it
                        self._report(vcpu, "hlt" if self.command.get(vcpu) == "hlt" else "woke")
                    changed = True
            if not changed:
                break
        out = {(vcpu, "report"): what for vcpu, what in self.reports.items()}
        for vcpu in self.inside:
            if m.run_status(vcpu) is RunResult.BLOCKED:
                out[(vcpu, "thread")] = "blocked"  # asleep inside KVM_RUN (HLT, U, IR)
        return out

    def _pause(self, vcpu: int) -> bool:
        """Kick a vCPU out of KVM_RUN for a vCPU ioctl (host findings 2); True if it was in."""
        if vcpu not in self.inside:
            return False
        self.machine.kick_out(vcpu)
        return True

    def _resume(self, vcpu: int) -> None:
        self.machine.enter_run(vcpu)

    def _paused(self, vcpu: int, function, *args, **kwargs):
        resume = self._pause(vcpu)
        try:
            return function(vcpu, *args, **kwargs)
        finally:
            if resume:
                self._resume(vcpu)

    def close(self) -> None:
        pass
