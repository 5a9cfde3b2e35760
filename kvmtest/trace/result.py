"""What a trace run produces: the data every reporter (text, KTAP, JSON, JUnit) renders."""

import errno
from dataclasses import dataclass, field
from enum import Enum

from kvmtest import rules
from kvmtest.ops import MP_STATE_NAMES


class Status(str, Enum):
    """KCIDB-like outcome of one trace: a mismatch is FAIL, a harness crash is ERROR."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"


@dataclass(frozen=True)
class Mismatch:
    """One field where KVM and the model disagree."""

    step: int  # index of the step in the trace (0-based)
    location: str  # "file:line" of the step
    vcpu: int | None  # None for VM-wide results (an MSI's delivery count)
    field: str  # "mp_state", "cs.base", "rip", "result", ...
    expected: object  # the model's value, or the set of allowed values for a concurrent block
    observed: object  # what KVM showed

    def describe(self) -> str:
        where = f"vcpu {self.vcpu} " if self.vcpu is not None else ""
        expected, observed = (side.split()[0] for side in self.sides)
        return (
            f"{self.location}: step {self.step + 1}: {where}{self.field}: "
            f"{expected} {self.show(self.expected)}, {observed} {self.show(self.observed)}"
        )

    PIN_SUFFIX = " (model vs pin)"

    @property
    def sides(self) -> tuple[str, str]:
        """What `expected` and `observed` are: the model against KVM, or, for a pin the trace
        wrote (observe.expect, outcomes:), the trace's pin against the model's prediction."""
        if self.field.endswith(self.PIN_SUFFIX):
            return "pinned (trace)", "predicted (model)"
        return "expected (model)", "observed (KVM)"

    def show(self, value) -> str:
        """A value as a kernel developer reads it: mp_state by name, errno by name, hex."""
        if self.field.startswith("mp_state") and isinstance(value, int):
            return f"{MP_STATE_NAMES.get(value, 'unknown')} ({value})"
        if self.field.endswith("result") and isinstance(value, int) and value < 0:
            return f"-{errno.errorcode.get(-value, str(-value))}"
        return _show(value)


def _show(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return hex(value) if value > 9 or value < -9 else str(value)
    if isinstance(value, (set, frozenset)):
        return "one of {" + ", ".join(sorted(_show(v) for v in value)) + "}"
    return str(value)


@dataclass(frozen=True)
class StepRecord:
    """One step of a run as both sides saw it, for `kvmtest show` and `run -v`: the model's view
    of every vCPU after the step (kvmtest.sim.system.VcpuView), its prediction and, on KVM,
    the observation (None in reference mode) and where each vCPU thread was."""

    index: int
    location: str
    step: str  # the operation as YAML (kvmtest.trace.dump.step_mapping)
    thread: str  # who performed it
    model: tuple  # VcpuView per vCPU
    predicted: dict  # (vcpu, field) -> value
    observed: dict | None  # (vcpu, field) -> value; None without KVM
    threads: dict | None = None  # vcpu -> "reported", "blocked in KVM_RUN", "running", "idle"
    signal: object = None  # kvmtest.sim.signals.Signal the step sends (ICR, MSI), or None


@dataclass
class TraceResult:
    name: str
    path: str
    status: Status
    profile: str
    backend: str
    rules: tuple = ()
    tags: tuple = ()
    mismatches: list = field(default_factory=list)
    message: str = ""  # skip reason or error text
    elapsed: float = 0.0  # seconds
    repeat: int = 0  # which repetition (0-based) under --repeat
    outcomes: dict = field(default_factory=dict)  # concurrent blocks: outcome label -> count
    allowed: dict = field(default_factory=dict)  # concurrent blocks: label -> allowed?
    compared: int = 0  # (vcpu, field) comparisons of prediction and observation
    not_compared: int = 0  # predictions the model does not know (GUEST: the guest ran code)
    unspecified: int = 0  # predictions an architectural profile leaves open (UNSPECIFIED)
    pins_checked: int = 0  # pinned values (observe.expect, block properties) checked
    timeline: list = field(default_factory=list)  # StepRecord per step, when asked for
    line: int = 0  # line of the trace's first key in its file (0: unknown)
    timed_out: bool = False  # ERROR because the trace outlived --timeout

    @classmethod
    def of(cls, trace, profile: str, backend: str, repeat: int = 0, **fields) -> "TraceResult":
        """A result for `trace` (status PASS unless given), with its name, rules and tags."""
        fields.setdefault("status", Status.PASS)
        return cls(
            name=trace.name,
            path=trace.path,
            profile=profile,
            backend=backend,
            rules=trace.rules,
            tags=trace.tags,
            repeat=repeat,
            line=getattr(trace, "line", 0) or 0,
            **fields,
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "status": self.status.value,
            "profile": self.profile,
            "backend": self.backend,
            "rules": list(self.rules),
            "tags": list(self.tags),
            "elapsed": round(self.elapsed, 6),
            "repeat": self.repeat,
            "message": self.message,
            "compared": self.compared,
            "not_compared_guest": self.not_compared,
            "not_compared_unspecified": self.unspecified,
            "pins_checked": self.pins_checked,
            "mismatches": [
                {
                    "step": m.step + 1,
                    "location": m.location,
                    "vcpu": m.vcpu,
                    "field": m.field,
                    "expected": _jsonable(m.expected),
                    "observed": _jsonable(m.observed),
                    "rules": [
                        {"rule": r, "anchor": rules.link(r)}
                        for r in rules.rules_for(m.field, self.rules)
                    ],
                }
                for m in self.mismatches
            ],
        }


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, str, bool, float)) or value is None else str(value)


@dataclass
class RunSummary:
    results: list
    host: dict
    profile: str
    backend: str
    elapsed: float
    bad_input: bool = False  # a trace file could not be loaded: exit 2, as for bad usage
    interrupted: str = ""  # "interrupted by SIGINT after 12 of 77 traces"; "" when it ran out
    interrupt_signal: int = 0  # that signal's number: the exit code is 128 + it
    # What the run judged, in words ("this kernel's KVM against the model, profile P"), and
    # what it did not; empty when the caller did not say (reporters then leave the lines out).
    judged: str = ""
    not_judged: str = ""
    started: str = ""  # ISO 8601 UTC time stamps of the run
    finished: str = ""
    seed: int | None = None  # --seed (None: fresh delays every run)
    jitter: float | None = None  # --jitter in seconds
    bases: tuple = ()  # directories trace paths are shown relative to (first match wins)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def exit_code(self) -> int:
        """kselftest codes: 0 all passed, 1 any failure or error, 4 everything skipped; 2 when
        an input file was malformed or unreadable; 128 + N after signal N stopped the run."""
        if self.interrupt_signal:
            return 128 + self.interrupt_signal
        if self.bad_input:
            return 2
        if any(r.status in (Status.FAIL, Status.ERROR) for r in self.results):
            return 1
        if self.results and all(r.status is Status.SKIP for r in self.results):
            return 4
        return 0
