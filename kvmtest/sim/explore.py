"""`kvmtest explore`: every interleaving of a trace's concurrent block, over the model's atomic
steps, with the reachable outcomes and the properties they keep or break.

Theory of operation. The steps before the block run sequentially on the model (as in replay).
The block's branches become *programs*: lists of atomic model steps per thread (a guest HLT is
two steps, the VM exit and kvm_emulate_halt; an ICR write is one). Besides the programs, the
vCPU threads inside KVM_RUN react by themselves: the model's `pending_steps()` (wake-ups, event
processing), userspace re-entering KVM_RUN after -EINTR/-EAGAIN, and the stepper guest reporting
once it runs again (from a SIPI landing page, the reset vector, or after its HLT). A search over
(model state, program counters, waiting vCPUs, landings) visits each distinct state once; that
merging is sound because the future depends only on that state. Paths are counted over the
resulting graph, so "interleavings" is the number of distinct schedules, not of states.

Property "init-never-lost": an AP that some branch sends INIT and then SIPI must land on a SIPI
landing page in every schedule. Under linux-3.9 the search finds the schedule of section (e)
of the semantics notes by itself; under linux-3.10 and later there is none.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import reference
from kvmtest import ops as f
from kvmtest.sim.system import ModelSide, restart_report
from kvmtest.trace import engine
from reference import GUEST, RunResult

DELIVERY_NAMES = {v: k.upper() for k, v in f.DELIVERY_MODES.items()}


class ExploreError(Exception):
    """The trace cannot be explored (no concurrent block, an unsupported step, a model error)."""


@dataclass(frozen=True)
class Move:
    thread: str  # "vcpu0", "host", or "kvm:vcpu1" for what a thread does inside KVM
    op: str
    args: tuple
    label: str
    end: int = 0  # program counter after the guest command this move belongs to


@dataclass
class Node:
    machine: object
    pcs: tuple  # program counter per branch
    waiting: frozenset  # vCPUs inside KVM_RUN that will report once they run again
    landed: frozenset  # (vcpu, how) the guest reported after a wake-up: "sipi 0x10", "reset"

    def key(self):
        return (self.machine.key(), self.pcs, self.waiting, self.landed)


@dataclass(frozen=True)
class Outcome:
    """An end state as the trace can see it: the guests' wake-up reports and what the steps
    after the block observed. GUEST values (unknown to the model) match anything."""

    reports: frozenset  # (vcpu, "sipi 0x20" | "hlt" | "reset" | "woke")
    observed: tuple  # (vcpu, field, value), sorted
    stuck: tuple = ()  # threads that never finished their program (for the label only)

    def label(self) -> str:
        parts = [f"vcpu{v} reported {how}" for v, how in sorted(self.reports)]
        parts += list(self.stuck)
        for vcpu, name, value in self.observed:
            if value is GUEST:
                continue
            if name == "mp_state":
                value = f.MP_STATE_NAMES.get(value, value)
            elif isinstance(value, int):
                value = hex(value)
            parts.append(f"vcpu{vcpu} {name}={value}")
        return "; ".join(parts) or "nothing observed"

    def matches(self, reports: frozenset, observed: dict) -> bool:
        """Does a real run (its reports, and {(vcpu, field): value}) show this outcome?"""
        if reports != self.reports:
            return False
        return all(
            value is GUEST or observed.get((vcpu, name)) == value
            for vcpu, name, value in self.observed
        )


def _obs_order(item):
    vcpu, name, _ = item
    return (-1 if vcpu is None else vcpu, name)


@dataclass
class Exploration:
    trace: str
    profile: str
    states: int = 0
    interleavings: int | None = 0  # None when the graph has a cycle
    outcomes: dict = field(default_factory=dict)  # label -> schedules reaching it
    violations: dict = field(default_factory=dict)  # label -> [property names]
    shortest_violation: list = field(default_factory=list)  # [Move]
    allowed: dict = field(default_factory=dict)  # label -> Outcome
    elapsed: float = 0.0
    properties: tuple = ()


def _icr_label(value: int, x2apic: bool) -> str:
    mode = DELIVERY_NAMES.get((value >> 8) & 7, "?")
    vector = f" {value & 0xFF:#x}" if mode == "SIPI" else ""
    shorthand = (value >> 18) & 3
    dest = (value >> 32) if x2apic else (value >> 56)
    target = ("", "self", "all", "all-but-self")[shorthand] or f"APIC {dest}"
    return f"{mode}{vector} -> {target}"


def programs(block: f.Concurrently, setup: f.Setup) -> list[tuple[str, list[Move]]]:
    """Each branch as a list of atomic moves."""
    x2apic = setup.apic == "x2apic"
    out = []
    for branch in block.branches:
        moves: list[Move] = []
        for step in branch.steps:
            t = branch.thread
            start = len(moves)
            if isinstance(step, f.Icr):
                v, what = step.vcpu, _icr_label(step.value, x2apic)
                moves += _command(t, v, "")
                moves.append(
                    Move(
                        t, "icr_write", (v, step.value, x2apic), f"vcpu{v} guest writes ICR: {what}"
                    )
                )
                moves.append(_report_move(t, v))
            elif isinstance(step, f.GuestCommand) and step.command == "hlt":
                v = step.vcpu
                moves += _command(t, v, "")
                moves += [
                    Move(t, "hlt_exit", (v,), f"vcpu{v} guest HLT: VM exit, handle_halt"),
                    Move(t, "emulate_halt", (v,), f"vcpu{v} kvm_emulate_halt writes mp_state"),
                    Move(t, "wait_report", (v,), f"vcpu{v} stepper waits for its HLT report"),
                ]
            elif isinstance(step, f.GuestCommand) and step.command in ("spin", "report", "x2apic"):
                v = step.vcpu
                moves += _command(t, v, f" ({step.command})")
                moves.append(_report_move(t, v))
            elif isinstance(step, f.GuestCommand) and step.command == "start":
                v = step.vcpu
                moves += [
                    Move(t, "start_run", (v,), f"vcpu{v} enters KVM_RUN for the first time"),
                    Move(t, "wait_report", (v,), f"vcpu{v} stepper waits for its first report"),
                ]
            elif isinstance(step, f.Msi):
                what = _icr_label(step.data, False).split(" -> ")[0]
                dest = (step.address_lo >> 12) & 0xFF
                moves.append(
                    Move(
                        t,
                        "signal_msi",
                        (step.address_lo, step.address_hi, step.data),
                        f"host KVM_SIGNAL_MSI {what} -> APIC {dest}",
                    )
                )
            elif isinstance(step, f.SetMpState):
                name = f.MP_STATE_NAMES.get(step.state, step.state)
                moves.append(
                    Move(
                        t,
                        "set_mp_state",
                        (step.vcpu, step.state),
                        f"host KVM_SET_MP_STATE vcpu{step.vcpu} {name}",
                    )
                )
            elif isinstance(step, f.GetMpState):
                moves.append(
                    Move(t, "get_mp_state", (step.vcpu,), f"host KVM_GET_MP_STATE vcpu{step.vcpu}")
                )
            else:
                raise ExploreError(
                    f"{step.kind} steps inside a concurrent block are not explored "
                    "(supported: icr, hlt, spin, report, x2apic, start, msi, set_mp_state, "
                    "get_mp_state)"
                )
            moves[start:] = [
                Move(m.thread, m.op, m.args, m.label, len(moves)) for m in moves[start:]
            ]
        out.append((branch.thread, moves))
    return out


def init_then_sipi_targets(block: f.Concurrently, setup: f.Setup, nr_vcpus: int) -> set:
    """APs that some branch sends INIT and later SIPI (physical destination or all-but-self)."""
    x2apic = setup.apic == "x2apic"
    targets = set()
    for branch in block.branches:
        got_init: set = set()
        for step in branch.steps:
            if isinstance(step, f.Icr):
                mode, shorthand = (step.value >> 8) & 7, (step.value >> 18) & 3
                dest = (step.value >> 32) if x2apic else (step.value >> 56)
                sender = step.vcpu
                to = {dest} if shorthand == 0 else set(range(nr_vcpus)) - {sender}
            elif isinstance(step, f.Msi):
                mode, to = (step.data >> 8) & 7, {(step.address_lo >> 12) & 0xFF}
            else:
                continue
            if mode == 5:
                got_init |= to
            elif mode == 6:
                targets |= got_init & to
    return {t for t in targets if t != 0}


def _command(thread: str, vcpu: int, what: str) -> list[Move]:
    """How every stepper command starts: the thread enters KVM_RUN, the guest runs."""
    return [
        Move(thread, "run_entry", (vcpu,), f"vcpu{vcpu} enters KVM_RUN for its next command"),
        Move(thread, "guest_runs", (vcpu,), f"vcpu{vcpu} guest runs{what}"),
    ]


def _report_move(thread: str, vcpu: int) -> Move:
    return Move(thread, "kick_out", (vcpu,), f"vcpu{vcpu} guest reports (port I/O), leaves KVM_RUN")


class Explorer:
    def __init__(self, trace: f.Trace, profile: str, flavour: str = "pvm"):
        self.trace = trace
        self.profile = profile
        self.flavour = flavour
        blocks = [i for i, s in enumerate(trace.steps) if isinstance(s, f.Concurrently)]
        if not blocks:
            raise ExploreError(f"{trace.path}: no concurrently block to explore")
        if len(blocks) > 1:
            raise ExploreError(f"{trace.path}: only one concurrently block per trace is explored")
        self.block_index = blocks[0]
        self.block = trace.steps[self.block_index]

    def _prefix(self) -> ModelSide:
        side = ModelSide(self.trace, self.profile, self.flavour, None, True)
        for step in self.trace.steps[: self.block_index]:
            side.begin_step()
            engine._outputs(side, step)
            side.settle()
        return side

    def _moves(self, node: Node, programs) -> list[Move]:
        m = node.machine
        moves = []
        for i, (_thread, program) in enumerate(programs):
            if node.pcs[i] < len(program):
                move = program[node.pcs[i]]
                if move.op == "wait_report":
                    if move.args[0] not in node.waiting:
                        moves.append(move)
                elif self._enabled(m, move):
                    moves.append(move)
        reactions = m.pending_steps()
        # KVM processes a pending request (KVM_REQ_EVENT) before it enters the guest, so no guest
        # code starts to run while one is pending; code already running may still act (the kick
        # that forces the VM exit is asynchronous).
        entering = {vcpu for vcpu, name in reactions if name == "guest_event"}
        moves = [mv for mv in moves if not (mv.op == "guest_runs" and mv.args[0] in entering)]
        for vcpu, name in reactions:
            moves.append(Move(f"kvm:vcpu{vcpu}", name, (vcpu,), _reaction_label(vcpu, name, m)))
        # A vCPU thread is inside a guest command once its run_entry is done.
        mid_command = {
            program[node.pcs[i]].args[0]
            for i, (thread, program) in enumerate(programs)
            if thread != "host"
            and node.pcs[i] < len(program)
            and program[node.pcs[i]].op not in ("run_entry", "start_run")
        }
        for vcpu in sorted(mid_command - node.waiting - entering):
            if m.run_status(vcpu) is RunResult.RUNS and m.vcpus[vcpu].regs["rip"] is not GUEST:
                moves.append(Move(f"vcpu{vcpu}", "report", (vcpu,), ""))
        for vcpu in sorted((node.waiting | mid_command) - entering):
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
            elif status is RunResult.RUNS and vcpu in node.waiting:
                moves.append(Move(f"vcpu{vcpu}", "report", (vcpu,), ""))
        return moves

    @staticmethod
    def _enabled(m, move: Move) -> bool:
        vcpus = m.vcpus
        v = move.args[0] if move.op not in ("signal_msi",) else None
        phase = vcpus[v].phase if v is not None else None
        if move.op in ("run_entry", "start_run"):
            return phase == reference.Phase.OUT
        on_own_path = vcpus[v].regs["rip"] is GUEST if v is not None else True
        if move.op == "guest_runs":
            return phase == reference.Phase.GUEST and vcpus[v].mp_state == 0 and on_own_path
        if move.op in ("icr_write", "hlt_exit", "kick_out"):
            # After an INIT reset or a SIPI the guest runs the reset ROM or a landing page,
            # not the rest of its command: that is a report (see _moves), not these moves.
            return phase == reference.Phase.GUEST and vcpus[v].mp_state == 0 and on_own_path
        if move.op == "emulate_halt":
            return phase == reference.Phase.HALT_EXIT
        if move.op in ("set_mp_state", "get_mp_state"):
            return phase == reference.Phase.OUT  # the ioctl waits for KVM_RUN to return
        return True

    def _apply(self, node: Node, move: Move, programs) -> tuple[Node, Move]:
        m = node.machine.clone()
        pcs, waiting, landed = list(node.pcs), set(node.waiting), set(node.landed)
        label = move.label
        if move.thread.startswith("kvm:"):
            m.step(move.args[0], move.op)
        elif move.op == "reenter":
            m.enter_run(move.args[0])
        elif move.op == "report":
            vcpu = move.args[0]
            how = _how_it_runs(m, vcpu)
            m.guest_runs(vcpu)
            m.kick_out(vcpu)
            waiting.discard(vcpu)
            landed.add((vcpu, how))
            label = f"vcpu{vcpu} guest runs ({how}) and reports, leaves KVM_RUN"
            for i, (thread, program) in enumerate(programs):
                if thread == f"vcpu{vcpu}" and 0 < pcs[i] < len(program):
                    pcs[i] = program[pcs[i]].end  # that report answers the command
        else:
            i = next(i for i, (t, _) in enumerate(programs) if t == move.thread)
            pcs[i] += 1
            if move.op == "start_run":
                m.apply(reference.Step("run_entry", move.args))
                waiting.add(move.args[0])  # the stepper reports once the vCPU runs
            elif move.op != "wait_report":
                m.apply(reference.Step(move.op, move.args))
            if move.op == "emulate_halt":
                vcpu = move.args[0]
                waiting.add(vcpu)  # the stepper reports once the vCPU runs again
        return Node(m, tuple(pcs), frozenset(waiting), frozenset(landed)), Move(
            move.thread, move.op, move.args, label
        )

    def _outcome(self, node: Node, programs) -> Outcome:
        """Run the trace's remaining steps on this end state and record what they observe."""
        side = ModelSide.__new__(ModelSide)
        side.setup = self.trace.setup
        side.machine = node.machine.clone()
        side.inside = set(node.waiting)
        side.command = {v: "hlt" for v in node.waiting}
        stuck = tuple(
            f"{thread} stuck before: {program[node.pcs[i]].label}"
            for i, (thread, program) in enumerate(programs)
            if node.pcs[i] < len(program)
        )
        observed = []
        reports = set(node.landed)
        for step in self.trace.steps[self.block_index + 1 :]:
            side.begin_step()
            out = engine._outputs(side, step)
            for (vcpu, name), value in side.settle().items():
                if name == "report":
                    reports.add((vcpu, value))
            if isinstance(step, f.Observe):
                observed += [(vcpu, name, value) for (vcpu, name), value in out.items()]
        return Outcome(frozenset(reports), tuple(sorted(observed, key=_obs_order)), stuck)

    def run(self, prefix: ModelSide | None = None) -> Exploration:
        """Explore the block, from `prefix` (the model side at the block) or from the trace's
        steps before it."""
        start = time.perf_counter()
        prefix = prefix or self._prefix()
        programs_ = programs(self.block, self.trace.setup)
        nr = len(prefix.machine.vcpus)
        must_land = init_then_sipi_targets(self.block, self.trace.setup, nr)
        root = Node(
            prefix.machine, tuple(0 for _ in programs_), frozenset(prefix.inside), frozenset()
        )
        result = Exploration(self.trace.name, self.profile, properties=("init-never-lost",))
        # Breadth first: the first violating end state found has a shortest schedule.
        nodes = {root.key(): root}
        parent: dict = {root.key(): None}
        edges: dict = collections.defaultdict(list)
        terminal: dict = {}
        queue = collections.deque([root.key()])
        while queue:
            key = queue.popleft()
            node = nodes[key]
            moves = self._moves(node, programs_)
            if not moves:
                terminal[key] = self._outcome(node, programs_)
                continue
            for move in moves:
                try:
                    child, shown = self._apply(node, move, programs_)
                except reference.ModelError as exc:
                    raise ExploreError(f"model: {exc} (after {move.label})") from None
                child_key = child.key()
                edges[key].append(child_key)
                if child_key not in nodes:
                    nodes[child_key] = child
                    parent[child_key] = (key, shown)
                    queue.append(child_key)
        result.states = len(nodes)
        counts = _path_counts(root.key(), edges, terminal)
        result.interleavings = None if counts is None else sum(counts.values())
        violating = None
        for key, outcome in terminal.items():
            landed = {v for v, how in nodes[key].landed if how.startswith("sipi")}
            landed |= {v for v in must_land - landed if _at_sipi_vector(nodes[key].machine, v)}
            broken = ["init-never-lost"] if must_land - landed else []
            label = outcome.label()
            result.allowed[label] = outcome
            if broken:
                result.violations[label] = broken
                if violating is None or _depth(parent, key) < _depth(parent, violating):
                    violating = key
            n = counts.get(key, 0) if counts is not None else 1
            result.outcomes[label] = result.outcomes.get(label, 0) + n
        if violating is not None:
            result.shortest_violation = _schedule(parent, violating)
        result.elapsed = time.perf_counter() - start
        return result


def _how_it_runs(m, vcpu: int) -> str:
    if m.vcpus[vcpu].regs["rip"] is GUEST:
        return "hlt"  # the stepper's report after a wake-up from its HLT
    return restart_report(m, vcpu) or "woke"


def _at_sipi_vector(machine, vcpu: int) -> bool:
    """An AP that never ran again after the SIPI still counts as brought up if its state is the
    SIPI's: SIPI_RECEIVED (before 3.10), or RUNNABLE at RIP 0 once the events are processed."""
    m = machine.clone()
    v = m.vcpus[vcpu]
    if v.phase == reference.Phase.OUT:
        m.get_mp_state(vcpu)  # a processing point from 3.10 on; never changes the outcome class
    v = m.vcpus[vcpu]
    if int(v.mp_state) == 4:
        return True
    return int(v.mp_state) == 0 and v.regs["rip"] == 0


def _reaction_label(vcpu: int, name: str, m) -> str:
    return {
        "guest_event": f"vcpu{vcpu} (in KVM) processes KVM_REQ_EVENT before entering the guest",
        "wake": f"vcpu{vcpu} (in KVM) wakes from kvm_vcpu_block",
        "wake_uninit": f"vcpu{vcpu} (in KVM) wakes in the UNINITIALIZED branch",
    }.get(name, f"vcpu{vcpu} (in KVM) {name}")


def _depth(parent, key) -> int:
    depth = 0
    while parent[key] is not None:
        key = parent[key][0]
        depth += 1
    return depth


def _schedule(parent, key) -> list:
    moves = []
    while parent[key] is not None:
        key, move = parent[key]
        moves.append(move)
    return moves[::-1]


def _path_counts(root, edges, terminal):
    """Number of distinct schedules from root to each terminal state (None if cyclic)."""
    indegree = collections.Counter()
    for dsts in edges.values():
        for dst in dsts:
            indegree[dst] += 1
    ways = collections.Counter({root: 1})
    ready = collections.deque([root])
    seen = 0
    while ready:
        key = ready.popleft()
        seen += 1
        for dst in edges.get(key, ()):
            ways[dst] += ways[key]
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    reachable = {root} | {d for ds in edges.values() for d in ds}
    if seen < len(reachable):
        return None
    return {key: ways[key] for key in terminal}


def render(result: Exploration) -> str:
    """The explorer's report: outcomes with their schedule counts, then a violating schedule."""
    total = result.interleavings
    lines = [
        f"explored {result.trace} under {result.profile}: {result.states} states, "
        + (f"{total} interleavings" if total is not None else "interleavings uncounted (cycle)")
        + f", {result.elapsed * 1000:.1f} ms",
        "",
    ]
    width = max((len(f"{n}") for n in result.outcomes.values()), default=1)
    lines.append(f"{'schedules':>{max(width, 9)}}  outcome")
    for label, count in sorted(result.outcomes.items(), key=lambda kv: -kv[1]):
        broken = result.violations.get(label)
        mark = f"  VIOLATES {', '.join(broken)}" if broken else ""
        lines.append(f"{count:>{max(width, 9)}}  {label}{mark}")
    lines.append("")
    if result.shortest_violation:
        lines.append(f"shortest violating schedule ({len(result.shortest_violation)} steps):")
        for number, move in enumerate(result.shortest_violation, 1):
            lines.append(f"  {number:>2}. {move.label}")
    else:
        checked = total if total is not None else result.states
        lines.append(
            f"no violation of {', '.join(result.properties)} in {checked} "
            + ("interleavings" if total is not None else "states")
        )
    return "\n".join(lines)
