"""The exhaustive scheduler: every interleaving of a trace's concurrent block on the simulated
system, with the reachable outcomes and the properties they keep or break.

Theory of operation. The steps before the block run on the sequential scheduler (as in
replay). The block's branches become the programs of their threads (``System.load_branch``);
the system's ``enabled()`` moves (programs, KVM's reactions, the stepper's reports) are the
edges of a search over ``System.key()``, which visits each distinct state once; that merging
is sound because the future depends only on that state. Paths are counted over the resulting
graph, so "interleavings" is the number of distinct schedules, not of states. Each end state
runs the steps after the block on the sequential scheduler, which gives its outcome.

Property "init-never-lost": an AP that some branch sends INIT and then SIPI must land on a SIPI
landing page in every schedule. Under linux-3.9 the search finds the schedule of
docs/semantics.md section e by itself; under linux-3.10 and later there is none.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import reference
from kvmtest import ops as f
from kvmtest.ops import BLOCK_OPS
from reference import GUEST

from .schedule import Sequential
from .system import Move, System, program


class ExploreError(Exception):
    """The trace cannot be explored (no concurrent block, an unsupported step, a model error)."""


@dataclass(frozen=True)
class Outcome:
    """An end state as the trace can see it: the guests' wake-up reports and what the steps
    after the block observed. GUEST values (unknown to the model) match anything."""

    reports: frozenset  # (vcpu, "sipi 0x20" | "hlt" | "reset" | "woke" | GUEST)
    observed: tuple  # (vcpu, field, value), sorted
    stuck: tuple = ()  # threads that never finished their program (for the label only)

    def label(self) -> str:
        parts = [
            f"vcpu{v} reported {'what its guest code says' if how is GUEST else how}"
            for v, how in sorted(self.reports, key=lambda r: (r[0], str(r[1])))
        ]
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
        """Does a real run (its reports, and {(vcpu, field): value}) show this outcome? A GUEST
        report (guest code the model cannot follow, e.g. past an NMI at the reset vector) lets
        that vCPU report anything besides the reports the model does know."""
        wild = {v for v, how in self.reports if how is GUEST}
        known = {r for r in self.reports if r[1] is not GUEST}
        if not known <= reports or {r for r in reports - known if r[0] not in wild}:
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
    shortest: dict = field(default_factory=dict)  # label -> [Move], one shortest schedule each
    elapsed: float = 0.0
    properties: tuple = ()


def programs(block: f.Concurrently, setup: f.Setup) -> list[tuple[str, list[Move]]]:
    """Each branch as a list of atomic moves (System.load_branch builds the same)."""
    out = []
    for branch in block.branches:
        moves: list[Move] = []
        for step in branch.steps:
            check_block_op(step)
            moves += program(step, branch.thread, setup, len(moves))
        out.append((branch.thread, moves))
    return out


def check_block_op(step) -> None:
    kind = step.command if step.kind == "guest" else step.kind
    if kind not in BLOCK_OPS:
        raise ExploreError(
            f"{step.kind} steps inside a concurrent block are not explored "
            f"(supported: {', '.join(BLOCK_OPS)})"
        )


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
                mode, dest = (step.data >> 8) & 7, (step.address_lo >> 12) & 0xFF
                to = {dest}
            else:
                continue
            if dest in (0xFF, 0xFFFFFFFF) and (isinstance(step, f.Msi) or shorthand == 0):
                to = set(range(nr_vcpus))  # the broadcast (seed 8: an IndexError before)
            if mode == 5:
                got_init |= to
            elif mode == 6:
                targets |= got_init & to
    return {t for t in targets if 0 < t < nr_vcpus}  # APIC IDs nobody has are no AP


class Explorer:
    def __init__(
        self, trace: f.Trace, profile, flavour: str = "pvm", smm: bool = True, cpuid_1_eax=None
    ):
        self.trace = trace
        self.profile = profile
        self.flavour = flavour
        self.smm = smm
        self.cpuid_1_eax = cpuid_1_eax
        blocks = [i for i, s in enumerate(trace.steps) if isinstance(s, f.Concurrently)]
        if not blocks:
            raise ExploreError(f"{trace.path}: no concurrently block to explore")
        if len(blocks) > 1:
            raise ExploreError(f"{trace.path}: only one concurrently block per trace is explored")
        self.block_index = blocks[0]
        self.block = trace.steps[self.block_index]

    def _prefix(self) -> System:
        system = System(self.trace.setup, self.profile, self.flavour, self.cpuid_1_eax, self.smm)
        replay = Sequential(system)
        for step in self.trace.steps[: self.block_index]:
            replay.perform(step)
        return system

    def _outcome(self, system: System) -> Outcome:
        """Run the trace's remaining steps on this end state and record what they observe."""
        replay = Sequential(system.clone())
        observed = []
        reports = set(system.landed)
        for step in self.trace.steps[self.block_index + 1 :]:
            for (vcpu, name), value in replay.perform(step).items():
                if name == "report":
                    reports.add((vcpu, value))
                elif name != "thread" and step.kind == "observe":
                    observed.append((vcpu, name, value))
        return Outcome(frozenset(reports), tuple(sorted(observed, key=_obs_order)), system.stuck())

    def run(self, prefix: System | None = None) -> Exploration:
        """Explore the block, from `prefix` (the system at the block, left unchanged) or from
        the trace's steps before it."""
        start = time.perf_counter()
        root = (prefix or self._prefix()).clone()
        root.landed = frozenset()
        root.reports.clear()
        for branch in self.block.branches:
            for step in branch.steps:
                check_block_op(step)
            root.load_branch(branch.thread, branch.steps)
        nr = len(root.machine.vcpus)
        must_land = init_then_sipi_targets(self.block, self.trace.setup, nr)
        label = getattr(self.profile, "label", self.profile)
        result = Exploration(self.trace.name, label, properties=("init-never-lost",))
        # Breadth first: the first violating end state found has a shortest schedule. A state
        # is hashed once, into `index`; everything else refers to it by its number (hashing a
        # state's nested tuple again per lookup was most of the cost of a large block).
        index = {root.key(): 0}
        nodes = [root]
        parent: list = [None]
        edges: dict = collections.defaultdict(list)
        terminal: dict = {}
        queue = collections.deque([0])
        while queue:
            key = queue.popleft()
            node = nodes[key]
            moves = node.enabled()
            if not moves:
                terminal[key] = self._outcome(node)
                continue
            for move in moves:
                child = node.clone()
                try:
                    child.apply(move)
                except reference.ModelError as exc:
                    raise ExploreError(f"model: {exc} (after {move.label})") from None
                child_key = index.setdefault(child.key(), len(nodes))
                edges[key].append(child_key)
                if child_key == len(nodes):
                    nodes.append(child)
                    parent.append((key, move if move.label else _report_label(child, move)))
                    queue.append(child_key)
        result.states = len(nodes)
        counts = _path_counts(0, edges, terminal)
        result.interleavings = None if counts is None else sum(counts.values())
        violating = None
        nearest: dict = {}  # label -> (depth, end state)
        for key, outcome in terminal.items():
            landed = {v for v, how in nodes[key].landed if str(how).startswith("sipi")}
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
            depth = _depth(parent, key)
            if label not in nearest or depth < nearest[label][0]:
                nearest[label] = (depth, key)
        result.shortest = {label: _schedule(parent, key) for label, (_, key) in nearest.items()}
        if violating is not None:
            result.shortest_violation = _schedule(parent, violating)
        result.elapsed = time.perf_counter() - start
        return result


def _report_label(child: System, move: Move) -> Move:
    """A stepper report move, labelled with what the guest reported (known once applied)."""
    vcpu = move.args[0]
    how = next((what for v, what in reversed(child.reports) if v == vcpu), "?")
    return move._replace(label=f"vcpu{vcpu} guest runs ({how}) and reports, leaves KVM_RUN")


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
